"""Parses training YAMLs with LLaMA-Factory's own argument parser (our integration applied) and writes what it
resolved as JSON: `python recipe_lint_worker.py OUT.json CONFIG.yaml...`, run from the folder the configs'
relative paths (deepspeed JSON, dataset_dir) are relative to.

It runs as a single-process torchrun would (the caller sets RANK, WORLD_SIZE, MASTER_ADDR, ...): LLaMA-Factory
accepts `deepspeed:` only in distributed mode, and transformers reads the DeepSpeed JSON while parsing. Parsing
touches no model or hub: `model_name_or_path` is only stored. The one change to the configs is `use_cpu: true`,
because transformers refuses `bf16: true` on a machine without a GPU.
"""

import json
import sys
from pathlib import Path

import yaml

import ue_dpo


def resolved(config_path: Path) -> dict:
    from llamafactory.data.parser import get_dataset_list
    from llamafactory.hparams import get_train_args

    config = yaml.safe_load(config_path.read_text())
    model_args, data_args, training_args, finetuning_args, _ = get_train_args({**config, "use_cpu": True})
    datasets = get_dataset_list(data_args.dataset, data_args.dataset_dir)
    return {
        "model_name_or_path": model_args.model_name_or_path,
        "template": data_args.template,
        "dataset": data_args.dataset,
        "dataset_dir": data_args.dataset_dir,
        "max_samples": data_args.max_samples,
        "datasets": [
            {
                "name": attr.dataset_name,
                "load_from": attr.load_from,
                "ranking": attr.ranking,
                "exists": Path(data_args.dataset_dir, attr.dataset_name).is_file(),
            }
            for attr in datasets
        ],
        "stage": finetuning_args.stage,
        "ue_dpo_stage": finetuning_args.ue_dpo_stage,
        "ue_weighting": finetuning_args.ue_weighting,
        "ddpo_gamma": finetuning_args.ddpo_gamma,
        "ue_alpha": finetuning_args.ue_alpha,
        "ue_tau": finetuning_args.ue_tau,
        "ue_noise_step": finetuning_args.ue_noise_step,
        "ue_noise_schedule": finetuning_args.ue_noise_schedule,
        "ue_noise_space": finetuning_args.ue_noise_space,
        "ue_branches": finetuning_args.ue_branches,
        "vdpo_gamma": finetuning_args.vdpo_gamma,
        "vdpo_guidance": finetuning_args.vdpo_guidance,
        "chip_alpha": finetuning_args.chip_alpha,
        "pref_beta": finetuning_args.pref_beta,
        "pref_loss": finetuning_args.pref_loss,
        "finetuning_type": finetuning_args.finetuning_type,
        "lora_rank": finetuning_args.lora_rank,
        "lora_target": finetuning_args.lora_target,
        "learning_rate": training_args.learning_rate,
        "lr_scheduler_type": str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)),
        "num_train_epochs": training_args.num_train_epochs,
        "bf16": training_args.bf16,
        "deepspeed": training_args.deepspeed,
        "zero_stage": (
            training_args.hf_deepspeed_config.config["zero_optimization"]["stage"] if training_args.deepspeed else None
        ),
        "output_dir": training_args.output_dir,
    }


def main(out_path: str, *config_paths: str) -> None:
    ue_dpo.apply_llamafactory_integration()
    results = {Path(path).name: resolved(Path(path)) for path in config_paths}
    Path(out_path).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
