"""The `stage: ue_dpo` integration with LLaMA-Factory: arguments, dispatch, workflow, trainer."""
