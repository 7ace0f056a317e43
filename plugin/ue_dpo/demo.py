"""The embedded default: a tiny model and a synthetic shapes dataset, trained with `stage: ue_dpo`.

It runs through `llamafactory-cli train`, exactly as a user's YAML would, and then prints the
`ue/` statistics the trainer logged.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from ue_dpo.tiny_config import tiny_training_config

UE_COLUMNS = (
    "loss",
    "rewards/accuracies",
    "ue/selected_share_chosen",
    "ue/selected_share_rejected",
    "ue/lambda_chosen_mean",
    "ue/lambda_rejected_mean",
    "ue/u_mean",
    "ue/delta_mean",
)


def llamafactory_cli() -> str:
    beside_python = Path(sys.executable).with_name("llamafactory-cli")
    found = str(beside_python) if beside_python.exists() else shutil.which("llamafactory-cli")
    if found is None:
        raise FileNotFoundError("`llamafactory-cli` was not found; install the package: pip install ue-dpo")
    return found


def run_demo(out_dir: Path, *, arch: str = "qwen2_vl", pairs: int = 32, steps: int = 8, seed: int = 0) -> list[dict]:
    from ue_dpo.shapes import write_preference_dataset
    from ue_dpo.tiny_models import build_tiny_model

    out_dir = Path(out_dir)
    model_dir = build_tiny_model(arch, out_dir / "model", seed=seed)
    dataset_dir = write_preference_dataset(out_dir / "data", n_pairs=pairs, seed=seed)
    config = tiny_training_config(arch, model_dir, dataset_dir, out_dir / "ue_dpo", max_steps=steps, seed=seed,
                                  plot_loss=True)
    config_path = out_dir / "ue_dpo.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"training tiny {arch} with stage: ue_dpo ({config_path})", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_DISABLED": "true"}
    subprocess.run([llamafactory_cli(), "train", str(config_path)], check=True, env=env)
    state = json.loads((out_dir / "ue_dpo" / "trainer_state.json").read_text())
    log = [entry for entry in state["log_history"] if "loss" in entry]
    print(format_ue_table(log))
    return log


def format_ue_table(log: list[dict]) -> str:
    header = "| step | " + " | ".join(UE_COLUMNS) + " |"
    rule = "|" + "---|" * (len(UE_COLUMNS) + 1)
    rows = [f"| {entry['step']} | " + " | ".join(f"{entry[key]:.4f}" for key in UE_COLUMNS) + " |" for entry in log]
    return "\n".join([header, rule, *rows])
