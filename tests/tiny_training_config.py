"""LLaMA-Factory training configs at tiny, CPU scale, for the tests."""

from pathlib import Path
from typing import Any

from ue_dpo.model_families import TEMPLATE_BY_MODEL_TYPE

# the template of each tiny architecture: its model type's, but Pixtral-12B's, a `llava` model with a Pixtral tower
TEMPLATE_BY_ARCH = {**TEMPLATE_BY_MODEL_TYPE, "pixtral": "pixtral"}


def tiny_training_config(
    arch: str, model_dir: Path, dataset_dir: Path, output_dir: Path, **overrides: Any
) -> dict[str, Any]:
    """A `stage: ue_dpo` config for a tiny local model: a few CPU steps, LoRA, no reporting."""
    config = {
        "model_name_or_path": str(model_dir),
        "trust_remote_code": False,
        "stage": "ue_dpo",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",
        "lora_rank": 8,
        "dataset": "shapes_pref",
        "dataset_dir": str(dataset_dir),
        "template": TEMPLATE_BY_ARCH[arch],
        "cutoff_len": 256,
        "preprocessing_num_workers": 1,
        "dataloader_num_workers": 0,
        "overwrite_cache": True,
        "output_dir": str(output_dir),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "learning_rate": 5e-4,
        "max_steps": 2,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
        "bf16": False,
        "fp16": False,
        "use_cpu": True,
    }
    config.update(overrides)
    return config
