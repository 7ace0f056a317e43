"""The paper's training recipes, `configs/train/<model>_<dataset>_<method>.yaml`, rendered from one table.

LLaMA-Factory YAML has no includes, so the files are flat and generated here: they agree in every key
but the method's (`stage`, `ue_*`, `ddpo_gamma`, `output_dir`). After changing the table, regenerate them from the
repository root with `python -m ue_dpo.recipes configs/train`.
"""

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ue_dpo.methods.chip import DEFAULT_CHIP_ALPHA
from ue_dpo.methods.ddpo import DEFAULT_DDPO_GAMMA
from ue_dpo.methods.vdpo import DEFAULT_VDPO_GAMMA

DATASET_DIR = "data"  # where `ue-dpo data rlhf_v|rlaif_v --out data` writes


@dataclass(frozen=True)
class ModelRecipe:
    title: str
    model_name_or_path: str
    template: str
    ue_alpha: float
    deepspeed: str
    note: tuple[str, ...] = ()  # comment lines on choices that are ours, not the paper's


@dataclass(frozen=True)
class DatasetRecipe:
    title: str
    keys: dict[str, Any]
    conversion: str  # the `ue-dpo data` command that writes the dataset
    note: tuple[str, ...] = ()  # comment lines on the choice of data


MODELS = {
    "llava15_7b": ModelRecipe("LLaVA-1.5-7B", "llava-hf/llava-1.5-7b-hf", "llava", 0.3, "configs/deepspeed/ds_z2.json"),
    "llava15_13b": ModelRecipe(
        "LLaVA-1.5-13B",
        "llava-hf/llava-1.5-13b-hf",
        "llava",
        0.25,
        "configs/deepspeed/ds_z3.json",
    ),
    "qwen25vl_3b": ModelRecipe(
        "Qwen2.5-VL-3B",
        "Qwen/Qwen2.5-VL-3B-Instruct",
        "qwen2_vl",
        0.15,
        "configs/deepspeed/ds_z2.json",
    ),
    "qwen3vl_8b": ModelRecipe(
        "Qwen3-VL-8B",
        "Qwen/Qwen3-VL-8B-Instruct",
        "qwen3_vl_nothink",  # LLaMA-Factory's template for the Instruct (non-thinking) Qwen3-VL models
        0.15,
        "configs/deepspeed/ds_z2.json",
        (
            "Qwen3-VL is not a backbone of the paper: this recipe and its alpha are our choice (alpha 0.15, the",
            "paper's value for its Qwen backbone, Qwen2.5-VL-3B).",
        ),
    ),
}

DATASETS = {
    "rlhf_v": DatasetRecipe("RLHF-V (5.7k pairs)", {"dataset": "rlhf_v"}, f"ue-dpo data rlhf_v --out {DATASET_DIR}"),
    "rlaif_v": DatasetRecipe(
        "RLAIF-V (16k pairs)",
        {"dataset": "rlaif_v"},
        f"ue-dpo data rlaif_v --out {DATASET_DIR} --first 16000",
        (
            'The paper trains on "RLAIF-V (16k)" without saying which 16k (the hub copy holds 83k pairs today).',
            "The first 16,000 rows are our choice, not the paper's; `--random 16000 --seed S` draws a seeded random "
            "one.",
        ),
    ),
}


def _ue_dpo_keys(model: ModelRecipe, branches: str | None = None) -> dict[str, Any]:
    keys = {"stage": "ue_dpo", "ue_alpha": model.ue_alpha, "ue_tau": 0.4, "ue_noise_step": 500}
    if branches is not None:
        keys["ue_branches"] = branches
    return keys


# TPO's own setting (alibaba/TPO): step 500 of the sigmoid schedule, added to the raw [0, 1] image
TPO_KEYS = {
    "stage": "ue_dpo",
    "ue_weighting": "tpo",
    "ue_noise_step": 500,
    "ue_noise_schedule": "sigmoid",
    "ue_noise_space": "image",
}
DDPO_KEYS = {"stage": "ue_dpo", "ue_weighting": "ddpo", "ddpo_gamma": DEFAULT_DDPO_GAMMA}

# method name -> (title, keys of that method for a model)
METHODS = {
    "ue_dpo": ("UE-DPO", _ue_dpo_keys),
    "dpo": ("DPO baseline", lambda model: {"stage": "dpo"}),
    "tpo": ("TPO peer (alibaba/TPO visual-anchored token weights)", lambda model: dict(TPO_KEYS)),
    "ddpo": ("DDPO peer (RLHF-V's dense DPO, γ on the differing tokens)", lambda model: dict(DDPO_KEYS)),
    "ue_dpo_chosen_only": (
        "UE-DPO ablation 'w/o dispref.' (λ on chosen only)",
        lambda model: _ue_dpo_keys(model, "chosen"),
    ),
    "ue_dpo_rejected_only": (
        "UE-DPO ablation 'w/o pref.' (λ on rejected only)",
        lambda model: _ue_dpo_keys(model, "rejected"),
    ),
}
# The peers that add terms on a second image (docs/peers.md), with their sources' own settings; the training
# settings are the recipes' shared ones, as the paper compares them "in the same setting" (the sources' own learning
# rates and epochs differ: that is our choice).
PEER_KEYS = {
    "mdpo": {"stage": "ue_dpo", "ue_weighting": "mdpo"},
    "mfpo": {"stage": "ue_dpo", "ue_weighting": "mfpo"},
    "vdpo": {"stage": "ue_dpo", "ue_weighting": "vdpo", "vdpo_gamma": DEFAULT_VDPO_GAMMA, "vdpo_guidance": "policy"},
    "chip": {"stage": "ue_dpo", "ue_weighting": "chip", "chip_alpha": DEFAULT_CHIP_ALPHA},
}
METHODS.update(
    {
        "mdpo": (
            "mDPO peer (luka-group/mDPO: DPO, a cropped-image term and an anchor)",
            lambda model: PEER_KEYS["mdpo"],
        ),
        "mfpo": ("MFPO peer (mDPO's terms on v', its paper's fallback image)", lambda model: PEER_KEYS["mfpo"]),
        "vdpo": (
            "V-DPO peer (guided score, γ 2: our choice, the released script's γ 0 has no gradient)",
            lambda model: PEER_KEYS["vdpo"],
        ),
        "chip": ("CHiP peer (paper's formula; α = tok_beta 0.1)", lambda model: PEER_KEYS["chip"]),
    }
)
MAIN_METHODS = ("ue_dpo", "dpo", "tpo", "ddpo")
ABLATION_METHODS = ("ue_dpo_chosen_only", "ue_dpo_rejected_only")
ABLATION_MODELS = ("llava15_7b",)
# the second-image peers on the paper's Table 1 setting: LLaVA-1.5-7B on RLHF-V's 5.7k pairs
PEER_MODELS, PEER_DATASETS = ("llava15_7b",), ("rlhf_v",)


def recipe_sections(model_name: str, dataset_name: str, method_name: str) -> list[tuple[str, dict[str, Any]]]:
    model, dataset = MODELS[model_name], DATASETS[dataset_name]
    return [
        ("model", {"model_name_or_path": model.model_name_or_path}),
        (
            "method",
            {
                **METHODS[method_name][1](model),
                "do_train": True,
                "finetuning_type": "lora",
                "lora_rank": 128,
                "lora_alpha": 256,  # LLaMA-Factory's default (2 x rank), written out: the paper gives only the rank
                "lora_target": "all",
                "freeze_vision_tower": True,
                "pref_beta": 0.1,
                "pref_loss": "sigmoid",
                "deepspeed": model.deepspeed,
            },
        ),
        (
            "dataset",
            {
                **dataset.keys,
                "dataset_dir": DATASET_DIR,
                "template": model.template,
                "cutoff_len": 2048,
                "preprocessing_num_workers": 16,
                "dataloader_num_workers": 4,
            },
        ),
        (
            "output",
            {
                "output_dir": f"saves/{model_name}/{dataset_name}/{method_name}",
                "logging_steps": 10,
                "save_steps": 500,
                "plot_loss": True,
                "report_to": "none",
            },
        ),
        (
            "train",
            {
                "per_device_train_batch_size": 2,
                "gradient_accumulation_steps": 4,
                "learning_rate": 1.0e-5,
                "num_train_epochs": 2.0,
                "lr_scheduler_type": "cosine",
                "warmup_ratio": 0.1,
                "bf16": True,
                "ddp_timeout": 180000000,
                "seed": 42,
            },
        ),
    ]


def recipe_names() -> list[tuple[str, str, str]]:
    names = [(model, dataset, method) for model in MODELS for dataset in DATASETS for method in MAIN_METHODS]
    names += [
        (model, dataset, method) for model in ABLATION_MODELS for dataset in DATASETS for method in ABLATION_METHODS
    ]
    names += [(model, dataset, method) for model in PEER_MODELS for dataset in PEER_DATASETS for method in PEER_KEYS]
    return names


def render_recipe(model_name: str, dataset_name: str, method_name: str) -> str:
    lines = [
        f"# {METHODS[method_name][0]}: {MODELS[model_name].title} on {DATASETS[dataset_name].title}.",
        *(f"# {line}" for line in MODELS[model_name].note),
        *(f"# {line}" for line in DATASETS[dataset_name].note),
        f"# Run from the repository root after `{DATASETS[dataset_name].conversion}`:",
        f"#   FORCE_TORCHRUN=1 llamafactory-cli train configs/train/{model_name}_{dataset_name}_{method_name}.yaml",
        "# Generated by `python -m ue_dpo.recipes configs/train`; edit ue_dpo/recipes.py, not this file.",
    ]
    for title, keys in recipe_sections(model_name, dataset_name, method_name):
        lines += ["", f"### {title}"]
        lines += [
            yaml.safe_dump({key: value}, allow_unicode=True, width=1000).rstrip("\n") for key, value in keys.items()
        ]
    return "\n".join(lines) + "\n"


def render_all() -> dict[str, str]:
    return {
        f"{model}_{dataset}_{method}.yaml": render_recipe(model, dataset, method)
        for model, dataset, method in recipe_names()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ue_dpo.recipes", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the recipes to (configs/train)")
    out_dir = parser.parse_args(argv).out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    for file_name, text in render_all().items():
        (out_dir / file_name).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
