"""What lmms-eval leaves in an `--output_path` folder, read and checked, and two such folders compared item by
item (`ue-dpo compare`, and the baseline comparison of `ue-dpo run`'s report).

A run is an lmms-eval `--output_path` folder written with `--log_samples` (or a folder holding one per protocol,
as `ue-dpo run` evaluates into); a run of an experiment is named by its output folder and run name
(ue_dpo.experiment.layout).
"""

import json
from pathlib import Path
from typing import Any

from ue_dpo.experiment.layout import ExperimentLayout
from ue_dpo.experiment.stages import StageError

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0


class CompareError(ValueError):
    """A result folder that cannot be compared; the message says what to pass instead."""


def run_folder(run: str, experiment: Path | None) -> Path:
    """The lmms-eval output folder of RUN_A / RUN_B: `run` itself, or with `experiment`, that run's folder of it."""
    if experiment is not None:
        layout = ExperimentLayout(experiment)
        folder = layout.eval_dir(run)
        if not folder.is_dir():
            names = layout.evaluated_runs()
            raise CompareError(
                f"{experiment} has no evaluated run {run!r} ({folder} does not exist); its runs: "
                f"{', '.join(names) or 'none'}. Pass --experiment the output folder of `ue-dpo run`"
            )
        return folder
    folder = Path(run)
    if ExperimentLayout(folder).is_experiment():
        names = ExperimentLayout(folder).evaluated_runs()
        raise CompareError(
            f"{folder} is the output folder of `ue-dpo run`, which holds several runs "
            f"({', '.join(names)}); name two of them: ue-dpo compare RUN_A RUN_B --experiment {folder}"
        )
    if not folder.is_dir():
        raise CompareError(
            f"{folder} is not a folder; pass lmms-eval --output_path folders (or run names with --experiment DIR)"
        )
    return folder


def read_lmms_eval_output(output_path: Path, tasks: list[str]) -> dict[str, Any]:
    """Metrics, sample files, judges and lmms-eval's own records of the lmms-eval runs under `output_path` (one
    `--output_path`, or the folders of a `ue-dpo run` run's protocols), after checking they are all there."""
    found = sorted(output_path.rglob("*_results.json"))
    if not found:
        raise StageError(f"found no *_results.json under {output_path}")
    summary: dict[str, Any] = {
        "metrics": {},
        "higher_is_better": {},
        "samples_files": {},
        "judges": {},
        "evaluations": [],
    }
    groups: set[str] = set()
    for results_file in found:
        results = json.loads(results_file.read_text())
        groups.update(results.get("groups", {}))
        twice = sorted(set(results.get("results", {})) & set(summary["metrics"]))
        if twice:
            raise StageError(
                f"{results_file} and an earlier results file under {output_path} both hold {twice}; keep "
                f"one lmms-eval run per task there"
            )
        for task, counts in results.get("n-samples", {}).items():
            files = sorted(results_file.parent.glob(f"*_samples_{task}.jsonl"))
            if counts.get("effective", 0) >= 1 and not files:
                raise StageError(
                    f"task {task} under {results_file.parent} was evaluated without --log_samples (its "
                    f"results file has no samples file beside it), so its items cannot be compared: "
                    f"evaluate it again with lmms-eval --log_samples"
                )
            if counts.get("effective", 0) < 1 or len(files) != 1:
                raise StageError(
                    f"task {task} evaluated {counts.get('effective', 0)} samples and logged {len(files)} "
                    f"sample files under {results_file.parent}"
                )
            summary["samples_files"][task] = str(files[0])
        for task, values in results.get("results", {}).items():
            summary["metrics"][task] = {}
            for key, value in values.items():
                name, _, filter_name = key.partition(",")
                if key == "alias" or "_stderr" in name or not (value is None or isinstance(value, int | float)):
                    continue
                summary["metrics"][task][name if filter_name in ("", "none") else key] = value
        summary["higher_is_better"].update(results.get("higher_is_better", {}))
        for task, config in results.get("configs", {}).items():
            judge = (config.get("metadata") or {}).get("judge")
            summary["judges"][task] = judge.get("model") if isinstance(judge, dict) else None
        summary["evaluations"].append(
            {
                "results_file": str(results_file),
                "tasks": list(results.get("results", {})),
                "lmms_eval_config": results.get("config", {}),
            }
        )
    missing = [task for task in tasks if task not in summary["metrics"] and task not in groups]
    if missing:
        raise StageError(f"no results for {missing} under {output_path}")
    return summary


def read_logged_samples(path: Path) -> list[dict[str, Any]]:
    """The lines of an lmms-eval `*_samples_<task>.jsonl` file."""
    samples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                samples.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise CompareError(
                    f"{path} line {number} is not JSON ({error}); is it lmms-eval's samples file?"
                ) from None
    return samples


def compare_folders(
    folder_a: Path, folder_b: Path, *, resamples: int, seed: int, tasks: list[str] | None = None
) -> dict[str, Any]:
    """The paired differences B - A of every task both folders logged (or of `tasks`), with their bootstrap intervals
    (`ue-dpo compare --json` prints this)."""
    # The benchmarks' metrics import openai and numpy: only a comparison needs them, not the runner's reading of
    # lmms-eval output nor `ue-dpo --help`, which imports this module for the defaults above.
    from ue_dpo.benchmarks.paired_comparison import PAIRED_TASKS, paired_differences
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
                raise CompareError(
                    f"{task}: A was scored with judge {judges['A'] or 'none'}, B with judge "
                    f"{judges['B'] or 'none'} (lmms-eval's task config, metadata.judge); scores of "
                    f"different judges are not comparable: score both with the same judge"
                )
            differences = paired_differences(
                read_logged_samples(Path(samples_a[task])),
                read_logged_samples(Path(samples_b[task])),
                task,
                resamples=resamples,
                seed=seed,
            )
            compared[task] = {name: difference._asdict() for name, difference in differences.items()}
    if not compared:
        raise CompareError(
            f"no task to compare between {folder_a} and {folder_b} ("
            + "; ".join(f"{task}: {why}" for task, why in not_compared.items())
            + f"); paired metrics exist for {', '.join(PAIRED_TASKS)}"
        )
    comparison = {
        "a": str(folder_a),
        "b": str(folder_b),
        "method": "paired percentile bootstrap over items",
        "level": CONFIDENCE_LEVEL,
        "resamples": resamples,
        "seed": seed,
        "tasks": compared,
        "not_compared": not_compared,
    }
    if folder_a.resolve() == folder_b.resolve():
        comparison["note"] = (
            f"A and B are the same folder ({folder_a}), so every Δ is 0 and every interval [0, 0]; "
            f"name two different runs to compare them"
        )
    return comparison
