"""`ue-dpo run EXPERIMENT.yaml`: train, evaluate and compare the runs of an experiment file (resumable)."""

import argparse
import signal
import sys
from pathlib import Path

from ue_dpo.commands import exit_with_user_error
from ue_dpo.experiment.config import ExperimentConfigError, load_experiment
from ue_dpo.experiment.stages import RunInterrupted, StageError

RESUME_HINT = (
    "run the same command again to resume: finished stages are skipped, an interrupted training resumes "
    "from its last checkpoint"
)


def add_experiment_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="output folder (default: the file's `output`)")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="change one value of the experiment file (YAML syntax; runs are addressed by name), "
        "e.g. --set evaluation.limit=8 --set runs.dpo.overrides.max_steps=4; repeatable",
    )


def run_experiment_file(path: Path, args: argparse.Namespace) -> None:
    """Load and run the experiment; a bad file exits 2, a failed stage 1, an interruption 128 + the signal number."""
    # The runner imports numpy and the report's statistics: loaded when an experiment runs, not for `ue-dpo --help`.
    from ue_dpo.experiment.runner import run_experiment
    from ue_dpo.experiment.sweep import run_sweep

    try:
        experiment = load_experiment(path, args.settings, output=args.out)
        (run_sweep if experiment.cells else run_experiment)(experiment)
    except ExperimentConfigError as error:
        exit_with_user_error(args.command, error)
    except StageError as error:
        print(f"ue-dpo {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except RunInterrupted as error:
        print(f"ue-dpo {args.command}: {error}; {RESUME_HINT}", file=sys.stderr)
        raise SystemExit(128 + error.signal_number) from None
    except KeyboardInterrupt:
        print(f"ue-dpo {args.command}: interrupted by SIGINT; {RESUME_HINT}", file=sys.stderr)
        raise SystemExit(128 + signal.SIGINT) from None


def _run(args: argparse.Namespace) -> None:
    run_experiment_file(args.experiment, args)


def register(commands) -> None:
    parser = commands.add_parser(
        "run",
        help="train (llamafactory-cli), evaluate (lmms-eval) and compare the runs of an experiment YAML",
        description="Train each run with `llamafactory-cli train`, evaluate each with lmms-eval, and write "
        "results.json, results.md and results.png to the output folder (with `sweep:`, those of each cell in "
        "cells/<cell>/, and sweep.md, sweep.json and one plot per metric). Re-running skips finished "
        "stages and resumes an interrupted training from its last checkpoint.",
    )
    parser.add_argument("experiment", type=Path, help="experiment YAML (see configs/experiments/)")
    add_experiment_options(parser)
    parser.set_defaults(handler=_run)
