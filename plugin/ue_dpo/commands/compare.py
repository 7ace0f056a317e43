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

EXPERIMENT_EVALS_DIR = "evals"  # where `ue-dpo run` writes each run's lmms-eval output (ExperimentRunner.lmms_eval_entries)
EXPERIMENT_RESULTS_FILE = "results.json"
DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0


class CompareError(ValueError):
    """A result folder that cannot be compared; the message says what to pass instead."""


def _experiment_run_names(experiment: Path) -> list[str]:
    evals = experiment / EXPERIMENT_EVALS_DIR
    return sorted(path.name for path in evals.iterdir() if path.is_dir()) if evals.is_dir() else []


def run_folder(run: str, experiment: Path | None) -> Path:
    """The lmms-eval output folder of RUN_A / RUN_B."""
    if experiment is not None:
        folder = experiment / EXPERIMENT_EVALS_DIR / run
        if not folder.is_dir():
            names = _experiment_run_names(experiment)
            raise CompareError(f"{experiment} has no evaluated run {run!r} ({folder} does not exist); its runs: "
                               f"{', '.join(names) or 'none'}. Pass --experiment the output folder of `ue-dpo run`")
        return folder
    folder = Path(run)
    if (folder / EXPERIMENT_RESULTS_FILE).is_file() and (folder / EXPERIMENT_EVALS_DIR).is_dir():
        names = _experiment_run_names(folder)
        raise CompareError(f"{folder} is the output folder of `ue-dpo run`, which holds several runs "
                           f"({', '.join(names)}); name two of them: ue-dpo compare RUN_A RUN_B --experiment {folder}")
    if not folder.is_dir():
        raise CompareError(f"{folder} is not a folder; pass lmms-eval --output_path folders (or run names with "
                           f"--experiment DIR)")
    return folder


def read_logged_samples(path: Path) -> list[dict[str, Any]]:
    """The lines of an lmms-eval `*_samples_<task>.jsonl` file."""
    samples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                samples.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise CompareError(f"{path} line {number} is not JSON ({error}); is it lmms-eval's samples file?") from None
    return samples


def compare_folders(folder_a: Path, folder_b: Path, *, resamples: int, seed: int,
                    tasks: list[str] | None = None) -> dict[str, Any]:
    from ue_dpo.benchmarks.paired_comparison import PAIRED_TASKS, paired_differences
    from ue_dpo.experiment.runner import read_lmms_eval_output
    from ue_dpo.statistics import CONFIDENCE_LEVEL

    outputs = {side: read_lmms_eval_output(folder, []) for side, folder in (("A", folder_a), ("B", folder_b))}
    samples_a, samples_b = outputs["A"]["samples_files"], outputs["B"]["samples_files"]
    wanted = tasks or sorted(set(samples_a) | set(samples_b))
    compared: dict[str, Any] = {}
    not_compared: dict[str, str] = {}
    for task in wanted:
        if task not in samples_a or task not in samples_b:
            not_compared[task] = f"logged only in {'A' if task in samples_a else 'B'}"
        elif task not in PAIRED_TASKS:
            not_compared[task] = "no paired metrics for this task"
        else:
            judges = {side: outputs[side]["judges"].get(task) for side in ("A", "B")}
            if judges["A"] != judges["B"]:
                raise CompareError(f"{task}: A was scored with judge {judges['A'] or 'none'}, B with judge "
                                   f"{judges['B'] or 'none'} (lmms-eval's task config, metadata.judge); scores of "
                                   f"different judges are not comparable: score both with the same judge")
            differences = paired_differences(read_logged_samples(Path(samples_a[task])),
                                             read_logged_samples(Path(samples_b[task])), task,
                                             resamples=resamples, seed=seed)
            compared[task] = {name: difference._asdict() for name, difference in differences.items()}
    if not compared:
        raise CompareError(f"no task to compare between {folder_a} and {folder_b} ("
                           + "; ".join(f"{task}: {why}" for task, why in not_compared.items())
                           + f"); paired metrics exist for {', '.join(PAIRED_TASKS)}")
    comparison = {
        "a": str(folder_a), "b": str(folder_b),
        "method": "paired percentile bootstrap over items", "level": CONFIDENCE_LEVEL,
        "resamples": resamples, "seed": seed, "tasks": compared, "not_compared": not_compared,
    }
    if folder_a.resolve() == folder_b.resolve():
        comparison["note"] = (f"A and B are the same folder ({folder_a}), so every Δ is 0 and every interval [0, 0]; "
                              f"name two different runs to compare them")
    return comparison


def _number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def format_table(comparison: dict[str, Any]) -> str:
    header = ("task", "metric", "A", "B", "Δ (B − A)", f"{comparison['level']:.0%} CI")
    rows = [header]
    for task, metrics in comparison["tasks"].items():
        for name, value in metrics.items():
            interval = "-" if value["low"] is None else f"[{_number(value['low'], True)}, {_number(value['high'], True)}]"
            rows.append((task, name, _number(value["a"]), _number(value["b"]), _number(value["delta"], True), interval))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) if column < 2 else cell.rjust(width)
                       for column, (cell, width) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.append(f"A = {comparison['a']}, B = {comparison['b']}; {comparison['method']}, "
                 f"{comparison['resamples']} resamples, seed {comparison['seed']}")
    lines += [f"not compared: {task} ({why})" for task, why in comparison["not_compared"].items()]
    if "note" in comparison:
        lines.append(f"note: {comparison['note']}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> None:
    from ue_dpo.experiment.stages import StageError

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
    parser = commands.add_parser("compare", help="metric differences of two evaluated runs with paired bootstrap intervals")
    parser.add_argument("run_a", metavar="RUN_A", help="lmms-eval --output_path folder of the baseline (or a run name "
                        "with --experiment)")
    parser.add_argument("run_b", metavar="RUN_B", help="the same for the run compared with it; Δ is B − A")
    parser.add_argument("--experiment", type=Path, help="output folder of `ue-dpo run`: RUN_A and RUN_B are its run names (RUN@seedS: one seed of a seeded run)")
    parser.add_argument("--tasks", help="comma-separated logged tasks to compare, e.g. amber_generative,amber_discriminative (default: every "
                        "task logged by either run)")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES,
                        help=f"bootstrap resamples (default: {DEFAULT_RESAMPLES})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"bootstrap seed (default: {DEFAULT_SEED})")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(handler=_run)
