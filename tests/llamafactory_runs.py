"""Running `llamafactory-cli train` in a subprocess, as users do, and reading what it logged."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

CLI = Path(sys.executable).with_name("llamafactory-cli")


def offline_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_DISABLED="true",
        DISABLE_VERSION_CHECK="1",
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the launcher runs `torchrun`
    env.update(extra)
    return env


def run_train(config: dict, workdir: Path, *, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "train.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [str(CLI), "train", str(config_path)],
        cwd=workdir,
        env=offline_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_or_fail(config: dict, workdir: Path, **kwargs) -> list[dict]:
    result = run_train(config, workdir, **kwargs)
    if result.returncode != 0:
        raise AssertionError(
            f"llamafactory-cli train failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
        )
    return training_log(Path(config["output_dir"]))


def training_log(output_dir: Path) -> list[dict]:
    """Per-step entries of trainer_state.json (those with a training loss)."""
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry]


def train_in_one_process(runs: dict[str, tuple[dict, Path]], *, timeout: int = 600) -> dict[str, list[dict]]:
    """Several trainings, `{name: (config, workdir)}`, one after another through LLaMA-Factory's `run_exp` in one
    Python subprocess (the import of llamafactory is most of a tiny run) -> `{name: training log}`.

    `llamafactory.train.tuner` is imported plainly, so our auto-load hook installs the stage as under the CLI.
    """
    config_paths = []
    for config, workdir in runs.values():
        workdir.mkdir(parents=True, exist_ok=True)
        config_paths.append(workdir / "train.yaml")
        config_paths[-1].write_text(yaml.safe_dump(config))
    script = (
        "import sys, yaml\nfrom llamafactory.train.tuner import run_exp\n"
        "for path in sys.argv[1:]:\n    run_exp(yaml.safe_load(open(path)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, config_paths)],
        check=False,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"run_exp failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return {name: training_log(Path(config["output_dir"])) for name, (config, _) in runs.items()}


def parsed_by_llamafactory_parser(root: Path, configs: list[str]) -> dict[str, dict]:
    """Each config (a path relative to `root`) through LLaMA-Factory's own argument parser, in a process of its own
    run from `root` as one rank (tests/recipe_lint_worker.py): the arguments it resolves, by config."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    one_rank = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    env = {**os.environ, **one_rank, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "CUDA_VISIBLE_DEVICES": ""}
    out = root / "parsed.json"
    worker = Path(__file__).with_name("recipe_lint_worker.py")
    done = subprocess.run(
        [sys.executable, str(worker), str(out), *configs],
        cwd=root,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-6000:]
    return json.loads(out.read_text())
