"""lmms-eval integration: the `ue_dpo_hf` model for trained checkpoints, benchmark task adapters."""
