"""`ue-dpo run EXPERIMENT.yaml`: train, evaluate and compare the runs of an experiment file (resumable)."""

import argparse
from pathlib import Path


def add_experiment_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="output folder (default: the file's `output`)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="change one value of the experiment file (YAML syntax; runs are addressed by name), "
                             "e.g. --set evaluation.limit=8 --set runs.dpo.overrides.max_steps=4; repeatable")


def run_experiment_file(path: Path, args: argparse.Namespace) -> None:
    from ue_dpo.experiment.config import load_experiment
    from ue_dpo.experiment.runner import run_experiment

    run_experiment(load_experiment(path, args.settings, output=args.out))


def _run(args: argparse.Namespace) -> None:
    run_experiment_file(args.experiment, args)


def register(commands) -> None:
    parser = commands.add_parser(
        "run", help="train (llamafactory-cli), evaluate (lmms-eval) and compare the runs of an experiment YAML",
        description="Train each run with `llamafactory-cli train`, evaluate each with lmms-eval, and write "
                    "results.json, results.md and results.png to the output folder. Re-running skips finished "
                    "stages and resumes an interrupted training from its last checkpoint.",
    )
    parser.add_argument("experiment", type=Path, help="experiment YAML (see configs/experiments/)")
    add_experiment_options(parser)
    parser.set_defaults(handler=_run)
