"""`ue-dpo compare RUN_A RUN_B`: the difference B - A of every metric of the tasks both runs were evaluated on,
with its paired bootstrap interval over the benchmark's items (ue_dpo.benchmarks.paired_comparison).

A run is an lmms-eval `--output_path` folder written with `--log_samples`; with `--experiment DIR`, RUN_A and
RUN_B are run names of the `ue-dpo run` output folder DIR, whose lmms-eval folders are DIR/evals/<run> (one seed
of a run trained per seed: <run>@seed<S>).
"""

import argparse
import json
from pathlib import Path
from typing import Any

from ue_dpo.commands import exit_with_user_error
from ue_dpo.experiment.outputs import DEFAULT_RESAMPLES, DEFAULT_SEED, compare_folders, run_folder
from ue_dpo.experiment.stages import StageError


def _number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def format_table(comparison: dict[str, Any]) -> str:
    header = ("task", "metric", "A", "B", "Δ (B − A)", f"{comparison['level']:.0%} CI")
    rows = [header]
    for task, metrics in comparison["tasks"].items():
        for name, value in metrics.items():
            interval = (
                "-" if value["low"] is None else f"[{_number(value['low'], True)}, {_number(value['high'], True)}]"
            )
            rows.append((task, name, _number(value["a"]), _number(value["b"]), _number(value["delta"], True), interval))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if column < 2 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths))
        ).rstrip()
        for row in rows
    ]
    lines.append(
        f"A = {comparison['a']}, B = {comparison['b']}; {comparison['method']}, "
        f"{comparison['resamples']} resamples, seed {comparison['seed']}"
    )
    lines += [f"not compared: {task} ({why})" for task, why in comparison["not_compared"].items()]
    if "note" in comparison:
        lines.append(f"note: {comparison['note']}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> None:
    if args.resamples < 1:
        exit_with_user_error(args.command, f"--resamples must be at least 1, got {args.resamples}")
    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()] if args.tasks else None
    try:
        folders = [run_folder(run, args.experiment) for run in (args.run_a, args.run_b)]
        comparison = compare_folders(*folders, resamples=args.resamples, seed=args.seed, tasks=tasks)
    except (OSError, ValueError, StageError) as error:
        exit_with_user_error(args.command, error)
    print(json.dumps(comparison) if args.json else format_table(comparison))


def register(commands) -> None:
    parser = commands.add_parser(
        "compare", help="metric differences of two evaluated runs with paired bootstrap intervals"
    )
    parser.add_argument(
        "run_a",
        metavar="RUN_A",
        help="lmms-eval --output_path folder of the baseline (or a run name with --experiment)",
    )
    parser.add_argument("run_b", metavar="RUN_B", help="the same for the run compared with it; Δ is B − A")
    parser.add_argument(
        "--experiment",
        type=Path,
        help="output folder of `ue-dpo run`: RUN_A and RUN_B are its run names (RUN@seedS: one seed of a seeded run)",
    )
    parser.add_argument(
        "--tasks",
        help="comma-separated logged tasks to compare, e.g. amber_generative,amber_discriminative (default: every "
        "task logged by either run)",
    )
    parser.add_argument(
        "--resamples", type=int, default=DEFAULT_RESAMPLES, help=f"bootstrap resamples (default: {DEFAULT_RESAMPLES})"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"bootstrap seed (default: {DEFAULT_SEED})")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(handler=_run)
