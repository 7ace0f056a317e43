"""`results.json`, `results.md` and `results.png` of an experiment, from its stage markers.

A run trained with several seeds reports the mean of each metric over its seeds with a Student t interval
(ue_dpo.statistics.seed_level_interval) and keeps every seed's numbers. With a `baseline:`, every other run gets
Δ = run − baseline per metric: from the paired bootstrap over the benchmark's items (`ue-dpo compare`'s) when the
two are one model each, else the seed-level interval of the per-seed differences, paired by seed (a run
evaluated once is paired with every seed of the other).
"""

import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NamedTuple

from ue_dpo.experiment.config import Experiment, Run, instance_name
from ue_dpo.experiment.layout import CONFIGS_DIR, EVALS_DIR, LOGS_DIR, RESULTS_JSON, RESULTS_PNG, ExperimentLayout
from ue_dpo.experiment.outputs import DEFAULT_RESAMPLES, DEFAULT_SEED, CompareError, compare_folders
from ue_dpo.experiment.stages import Markers
from ue_dpo.machine import summarize_machine, this_machine
from ue_dpo.statistics import CONFIDENCE_LEVEL, seed_level_interval

RECORDED_PACKAGES = (
    "ue-dpo",
    "llamafactory",
    "lmms-eval",
    "transformers",
    "torch",
    "peft",
    "trl",
    "accelerate",
    "datasets",
    "deepspeed",
)
REPORTED_MARK = "reported, not measured"


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def _evaluated_model(run: Run, seed: int | None, markers: Markers) -> dict[str, Any]:
    """One training (or checkpoint) and its evaluation, from their markers."""
    name = instance_name(run.name, seed)
    evaluation = markers.read(f"eval-{name}")
    training = markers.read(f"train-{name}") if run.train is not None else None
    # the model is the entry's first model arg (`pretrained=`, or `model=` for a served run's folder), as `ue-dpo run`
    # writes it; later ones may hold commas inside quotes (a JSON-quoted `default_system`)
    first_model_arg = evaluation["lmms_eval_entries"][0]["model_args"].split(",", 1)[0]
    return {
        "model": first_model_arg.partition("=")[2],
        "training": None
        if training is None
        else {
            **{key: training[key] for key in ("config_file", "config", "seeds", "data", "resumed_from", "versions")},
            "machine": training.get("machine"),  # None: trained before ue-dpo recorded machines
        },
        "evaluation": {
            "world_size": evaluation["world_size"],
            # as lmms-eval recorded each of its runs (one per protocol)
            "protocols": [
                {
                    "tasks": record["tasks"],
                    "backend": record["lmms_eval_config"].get("model"),
                    "batch_size": record["lmms_eval_config"].get("batch_size"),
                    "gen_kwargs": record["lmms_eval_config"].get("gen_kwargs"),
                    "limit": record["lmms_eval_config"].get("limit"),
                    "results_file": record["results_file"],
                    "lmms_eval_config": record["lmms_eval_config"],
                }
                for record in evaluation["evaluations"]
            ],
            "lmms_eval_entries": evaluation["lmms_eval_entries"],
            "samples_files": evaluation["samples_files"],
            "judges": evaluation["judges"],
            "versions": evaluation["versions"],
            "machine": evaluation.get("machine"),
        },
        "metrics": evaluation["metrics"],
        "higher_is_better": evaluation["higher_is_better"],
    }


def mean_over_seeds(values: list[float | None]) -> tuple[float | None, list[float] | None]:
    """The mean of one metric over a run's seeds and its Student t interval (None with one seed); None, None
    when a seed left it undefined."""
    if None in values:
        return None, None
    if len(values) == 1:
        return values[0], None
    mean, low, high, _ = seed_level_interval(values)
    return mean, [low, high]


def _seeded_run(run: Run, markers: Markers) -> dict[str, Any]:
    per_seed = [{"seed": seed, **_evaluated_model(run, seed, markers)} for seed in run.seeds]
    metrics: dict[str, dict[str, float | None]] = {}
    intervals: dict[str, dict[str, list[float] | None]] = {}
    for task, values in per_seed[0]["metrics"].items():
        metrics[task], intervals[task] = {}, {}
        for metric in values:
            metrics[task][metric], intervals[task][metric] = mean_over_seeds(
                [model["metrics"].get(task, {}).get(metric) for model in per_seed]
            )
    return {
        "seeds": list(run.seeds),
        "metrics": metrics,
        "intervals": intervals,
        "higher_is_better": per_seed[0]["higher_is_better"],
        "per_seed": per_seed,
    }


def collect_results(experiment: Experiment, markers: Markers) -> dict[str, Any]:
    runs = [
        {
            "name": run.name,
            "label": run.label,
            **(_evaluated_model(run, None, markers) if run.seeds is None else _seeded_run(run, markers)),
        }
        for run in experiment.runs
    ]
    synthetic = markers.read("synthetic") if experiment.synthetic is not None else None
    results = {
        "experiment": {
            "name": experiment.name,
            "file": None if experiment.source is None else str(experiment.source),
            "config": experiment.raw,
        },
        "synthetic_world": None if synthetic is None else synthetic["world"],
        "evaluation": {
            "tasks": list(experiment.evaluation.tasks),
            "model": experiment.evaluation.model,
            "seed": list(experiment.evaluation.seed),
        },
        "judge": {"model": experiment.judge.model, "base_url": experiment.judge.base_url},
        "versions": package_versions(),
        "machine": this_machine(),  # where this report was written; every stage records its own
        "runs": runs,
        "reported": [
            {"label": row.label, "source": row.source, "judge": row.judge, "measured": False, "metrics": row.metrics}
            for row in experiment.reported
        ],
    }
    if experiment.baseline is not None:
        results["comparison"] = compare_with_baseline(results["runs"], experiment.baseline)
    return results


def _models_by_seed(run: dict[str, Any]) -> dict[int | None, dict[str, Any]]:
    return {None: run} if "per_seed" not in run else {model["seed"]: model for model in run["per_seed"]}


def seed_pairs(run: dict[str, Any], baseline: dict[str, Any]) -> list[tuple[int | None, int | None]]:
    """(seed of run, seed of baseline) of the models compared: the same seeds, or every seed against the one
    model of a run evaluated once (None)."""
    mine, theirs = _models_by_seed(run), _models_by_seed(baseline)
    if None in theirs:
        return [(seed, None) for seed in mine]
    if None in mine:
        return [(None, seed) for seed in theirs]
    return [(seed, seed) for seed in mine if seed in theirs]


def compare_with_baseline(runs: list[dict[str, Any]], baseline_name: str) -> dict[str, Any]:
    baseline = next(run for run in runs if run["name"] == baseline_name)
    compared = {}
    for run in runs:
        if run is baseline:
            continue
        pairs = seed_pairs(run, baseline)
        models = [(_models_by_seed(run)[mine], _models_by_seed(baseline)[theirs]) for mine, theirs in pairs]
        entry: dict[str, Any] = {"seed_pairs": [list(pair) for pair in pairs], "tasks": {}, "not_compared": {}}
        if len(models) == 1:
            entry["method"] = "paired bootstrap over items"
            # evals/<model>/, which holds one lmms-eval output folder per protocol
            folders = [
                Path(model["evaluation"]["lmms_eval_entries"][0]["output_path"]).parent for model in reversed(models[0])
            ]
            try:
                comparison = compare_folders(*folders, resamples=DEFAULT_RESAMPLES, seed=DEFAULT_SEED)
            except CompareError as error:
                entry["not_compared"] = {"all tasks": str(error)}
            else:
                entry["not_compared"] = comparison["not_compared"]
                entry["tasks"] = {
                    task: {
                        metric: {key: value[key] for key in ("delta", "low", "high")}
                        for metric, value in metrics.items()
                    }
                    for task, metrics in comparison["tasks"].items()
                }
        else:
            entry["method"] = "Student t over the per-seed differences"
            for task, values in models[0][0]["metrics"].items():
                entry["tasks"][task] = {}
                for metric in values:
                    paired = [
                        (mine["metrics"][task].get(metric), theirs["metrics"].get(task, {}).get(metric))
                        for mine, theirs in models
                    ]
                    if any(value is None for pair in paired for value in pair):
                        entry["tasks"][task][metric] = {"delta": None, "low": None, "high": None}
                    else:
                        delta, low, high, _ = seed_level_interval([value - base for value, base in paired])
                        entry["tasks"][task][metric] = {"delta": delta, "low": low, "high": high}
        compared[run["name"]] = entry
    return {
        "baseline": baseline_name,
        "delta": "run − baseline",
        "level": CONFIDENCE_LEVEL,
        "bootstrap": {"resamples": DEFAULT_RESAMPLES, "seed": DEFAULT_SEED},
        "runs": compared,
    }


def table_columns(experiment: Experiment, results: dict[str, Any]) -> list[tuple[str, str]]:
    """(task, metric) columns: those the experiment lists, else every metric the first run reported."""
    columns = []
    for task in _reported_tasks(results):
        names = experiment.evaluation.metrics.get(task) or list(results["runs"][0]["metrics"].get(task, {}))
        columns.extend((task, name) for name in names)
    return columns


def _reported_tasks(results: dict[str, Any]) -> list[str]:
    tasks = list(results["evaluation"]["tasks"])
    for task in results["runs"][0]["metrics"]:
        if task not in tasks:
            tasks.append(task)
    return tasks


class TableRow(NamedTuple):
    label: str
    values: list[float | None]  # per column; the mean over seeds for a run trained with several
    intervals: list[list[float] | None]  # per column: the 95% interval of that mean, None for one model


def table_rows(results: dict[str, Any], columns: list[tuple[str, str]]) -> list[TableRow]:
    rows = [
        TableRow(
            run["label"],
            [run["metrics"].get(task, {}).get(metric) for task, metric in columns],
            [run.get("intervals", {}).get(task, {}).get(metric) for task, metric in columns],
        )
        for run in results["runs"]
    ]
    rows += [
        TableRow(
            f"{row['label']} ({REPORTED_MARK})",
            [row["metrics"].get(task, {}).get(metric) for task, metric in columns],
            [None] * len(columns),
        )
        for row in results["reported"]
    ]
    return rows


def value_cell(value: float | None, interval: list[float] | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if interval is None else f"{value:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]"


def delta_cell(comparison: dict[str, Any], run: str | None, task: str, metric: str) -> str:
    if run == comparison["baseline"]:
        return "(baseline)"
    delta = comparison["runs"].get(run, {}).get("tasks", {}).get(task, {}).get(metric)
    if delta is None or delta["delta"] is None:
        return "–"
    interval = "" if delta["low"] is None else f" [{delta['low']:+.2f}, {delta['high']:+.2f}]"
    return f"{delta['delta']:+.2f}{interval}"


def _direction(results: dict[str, Any], task: str, metric: str) -> str:
    higher = results["runs"][0]["higher_is_better"].get(task, {}).get(metric)
    return "" if higher is None else (" ↑" if higher else " ↓")


def render_markdown(experiment: Experiment, results: dict[str, Any], columns: list[tuple[str, str]]) -> str:
    comparison = results.get("comparison")
    headers = []
    for task, metric in columns:
        headers.append(f"{task} {metric}{_direction(results, task, metric)}")
        if comparison is not None:
            headers.append(f"{task} {metric} Δ vs baseline [{comparison['level']:.0%} CI]")
    lines = [f"# {experiment.name}", "", "| run | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|"]
    names = [run["name"] for run in results["runs"]] + [None] * len(results["reported"])
    for name, row in zip(names, table_rows(results, columns)):
        cells = []
        for (task, metric), value, interval in zip(columns, row.values, row.intervals):
            cells.append(value_cell(value, interval))
            if comparison is not None:
                cells.append(delta_cell(comparison, name, task, metric))
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    evaluation = experiment.evaluation
    models = [model for run in results["runs"] for model in run.get("per_seed", [run])]
    world_sizes = sorted({model["evaluation"]["world_size"] for model in models}, key=str)
    protocols = "; ".join(
        f"{', '.join(protocol.tasks)} with gen_kwargs {protocol.gen_kwargs or 'of the task'}, "
        f"limit {protocol.limit or 'none'}, batch size {protocol.batch_size}"
        for protocol in evaluation.protocols
    )
    lines += [
        "",
        f"Measured rows: lmms-eval `--model {evaluation.model}` on {protocols} (seed {list(evaluation.seed)}, "
        f"world size {', '.join('not logged' if size is None else str(size) for size in world_sizes)}); "
        f"↓ lower is better, ↑ higher is better; – undefined or not reported.",
    ]
    seeded = "; ".join(f"{run['label']}: {run['seeds']}" for run in results["runs"] if "per_seed" in run)
    if seeded:
        lines.append(
            f"- Trained once per seed ({seeded}): the mean over the seeds [95% Student t interval]; every "
            f"seed's numbers are in {RESULTS_JSON} (`runs[].per_seed`)."
        )
    if comparison is not None:
        baseline = next(run for run in results["runs"] if run["name"] == comparison["baseline"])
        bootstrap = comparison["bootstrap"]
        lines.append(
            f"- Δ = run − {baseline['label']} (the baseline) [{comparison['level']:.0%} interval]: for two "
            f"models, the paired bootstrap over the benchmark's items ({bootstrap['resamples']} resamples, "
            f"seed {bootstrap['seed']}); for several seeds, the Student t interval of the per-seed "
            f"differences, paired by seed."
        )
    for row in results["reported"]:
        judge = f", judged by {row['judge']}" if row["judge"] else ""
        lines.append(f"- *{row['label']}*: {REPORTED_MARK}; copied from {row['source']}{judge}.")
    lines += [
        "",
        f"Judge model: {experiment.judge.model or 'none'}.",
        "",
        "| run | model | training seed | ue_seed |",
        "|---|---|---|---|",
    ]
    for run in results["runs"]:
        for seed, model in _models_by_seed(run).items():
            seeds = (model["training"] or {}).get("seeds", {})
            label = run["label"] if seed is None else f"{run['label']} (seed {seed})"
            lines.append(
                f"| {label} | `{model['model']}` | {seeds.get('seed', '–')} | "
                f"{seeds.get('ue_seed') if seeds.get('ue_seed') is not None else '–'} |"
            )
    versions = ", ".join(f"{name} {value}" for name, value in results["versions"].items() if value)
    lines += [
        "",
        f"Versions: {versions}.",
        "",
        *machine_lines(results),
        "",
        f"Configs, samples and logs: {RESULTS_JSON}, {CONFIGS_DIR}/, {EVALS_DIR}/, {LOGS_DIR}/.",
        "",
        f"![results]({RESULTS_PNG})",
        "",
    ]
    return "\n".join(lines)


def machine_lines(results: dict[str, Any]) -> list[str]:
    """The machine that measured the rows: one line when every stage ran on the report's machine, else one per
    machine with the stages it ran."""
    stages: dict[str, list[str]] = {}
    for run in results["runs"]:
        for seed, model in _models_by_seed(run).items():
            name = run["name"] if seed is None else f"{run['name']}@seed{seed}"
            for kind, record in (("train", model["training"]), ("eval", model["evaluation"])):
                if record is not None:
                    summary = "not recorded" if record.get("machine") is None else summarize_machine(record["machine"])
                    stages.setdefault(summary, []).append(f"{kind} {name}")
    here = summarize_machine(results["machine"])
    if set(stages) <= {here}:
        return [f"Machine: {here}."]
    lines = [
        "Machines (the stages ran on more than one, or on another than this report's; digits can differ "
        "between machines):"
    ]
    lines += [f"- {summary}: {', '.join(names)}" for summary, names in stages.items()]
    return [*lines, f"- this report written on: {here}"]


def render_chart(results: dict[str, Any], columns: list[tuple[str, str]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table_rows(results, columns)
    measured = len(results["runs"])
    figure, axes = plt.subplots(1, len(columns), figsize=(max(4.0, 3.2 * len(columns)), 4.2), squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for column, ((task, metric), axis) in enumerate(zip(columns, axes[0])):
        for index, row in enumerate(rows):
            value, interval = row.values[column], row.intervals[column]
            reported = index >= measured
            error = None if value is None or interval is None else [[value - interval[0]], [interval[1] - value]]
            bar = axis.bar(
                index,
                0.0 if value is None else value,
                color=colours[index % len(colours)],
                hatch="//" if reported else None,
                alpha=0.45 if reported else 1.0,
                edgecolor="black" if reported else None,
                yerr=error,
                capsize=4,
            )
            axis.bar_label(bar, labels=["n/a" if value is None else f"{value:.1f}"], fontsize=8)
        axis.set_title(f"{task}\n{metric}{_direction(results, task, metric)}", fontsize=9)
        axis.set_xticks(range(len(rows)), [row.label for row in rows], rotation=30, ha="right", fontsize=8)
    notes = ["hatched bars: reported, not measured"] if results["reported"] else []
    if any(interval is not None for row in rows for interval in row.intervals):
        notes.append("error bars: 95% interval of the mean over seeds")
    figure.suptitle("; ".join(notes), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(experiment: Experiment, markers: Markers, output: Path) -> dict[str, Any]:
    layout = ExperimentLayout(output)
    results = collect_results(experiment, markers)
    columns = table_columns(experiment, results)
    layout.results_json.write_text(json.dumps(results, indent=1, default=str))
    layout.results_md.write_text(render_markdown(experiment, results, columns))
    render_chart(results, columns, layout.results_png)
    return results
