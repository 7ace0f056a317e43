"""`results.json`, `results.md` and `results.png` of an experiment, from its stage markers."""

import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ue_dpo.experiment.config import Experiment
from ue_dpo.experiment.stages import Markers

RECORDED_PACKAGES = ("ue-dpo", "llamafactory", "lmms-eval", "transformers", "torch", "peft", "trl", "accelerate",
                     "datasets", "deepspeed")
REPORTED_MARK = "reported, not measured"


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def collect_results(experiment: Experiment, markers: Markers) -> dict[str, Any]:
    runs = []
    for run in experiment.runs:
        evaluation = markers.read(f"eval-{run.name}")
        training = markers.read(f"train-{run.name}") if run.train is not None else None
        runs.append({
            "name": run.name,
            "label": run.label,
            "model": evaluation["lmms_eval_entries"][0]["model_args"].split(",")[0].removeprefix("pretrained="),
            "training": None if training is None else {
                key: training[key] for key in ("config_file", "config", "seeds", "data", "resumed_from", "versions")
            },
            "evaluation": {
                "world_size": evaluation["world_size"],
                # as lmms-eval recorded each of its runs (one per protocol)
                "protocols": [{"tasks": record["tasks"], "backend": record["lmms_eval_config"].get("model"),
                               "batch_size": record["lmms_eval_config"].get("batch_size"),
                               "gen_kwargs": record["lmms_eval_config"].get("gen_kwargs"),
                               "limit": record["lmms_eval_config"].get("limit"),
                               "results_file": record["results_file"], "lmms_eval_config": record["lmms_eval_config"]}
                              for record in evaluation["evaluations"]],
                "lmms_eval_entries": evaluation["lmms_eval_entries"],
                "samples_files": evaluation["samples_files"],
                "judges": evaluation["judges"],
                "versions": evaluation["versions"],
            },
            "metrics": evaluation["metrics"],
            "higher_is_better": evaluation["higher_is_better"],
        })
    synthetic = markers.read("synthetic") if experiment.synthetic is not None else None
    return {
        "experiment": {"name": experiment.name, "file": None if experiment.source is None else str(experiment.source),
                       "config": experiment.raw},
        "synthetic_world": None if synthetic is None else synthetic["world"],
        "evaluation": {"tasks": list(experiment.evaluation.tasks), "model": experiment.evaluation.model,
                       "seed": list(experiment.evaluation.seed)},
        "judge": {"model": experiment.judge.model, "base_url": experiment.judge.base_url},
        "versions": package_versions(),
        "runs": runs,
        "reported": [{"label": row.label, "source": row.source, "judge": row.judge, "measured": False,
                      "metrics": row.metrics} for row in experiment.reported],
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


def table_rows(results: dict[str, Any], columns: list[tuple[str, str]]) -> list[tuple[str, list[float | None]]]:
    rows = [(run["label"], [run["metrics"].get(task, {}).get(metric) for task, metric in columns])
            for run in results["runs"]]
    rows += [(f"{row['label']} ({REPORTED_MARK})", [row["metrics"].get(task, {}).get(metric) for task, metric in columns])
             for row in results["reported"]]
    return rows


def _direction(results: dict[str, Any], task: str, metric: str) -> str:
    higher = results["runs"][0]["higher_is_better"].get(task, {}).get(metric)
    return "" if higher is None else (" ↑" if higher else " ↓")


def render_markdown(experiment: Experiment, results: dict[str, Any], columns: list[tuple[str, str]]) -> str:
    header = "| run | " + " | ".join(f"{task} {metric}{_direction(results, task, metric)}"
                                     for task, metric in columns) + " |"
    lines = [f"# {experiment.name}", "", header, "|---" * (len(columns) + 1) + "|"]
    for label, values in table_rows(results, columns):
        lines.append(f"| {label} | " + " | ".join("–" if value is None else f"{value:.2f}" for value in values) + " |")
    evaluation = experiment.evaluation
    world_sizes = sorted({run["evaluation"]["world_size"] for run in results["runs"]}, key=str)
    protocols = "; ".join(f"{', '.join(protocol.tasks)} with gen_kwargs {protocol.gen_kwargs or 'of the task'}, "
                          f"limit {protocol.limit or 'none'}, batch size {protocol.batch_size}"
                          for protocol in evaluation.protocols)
    lines += ["", f"Measured rows: lmms-eval `--model {evaluation.model}` on {protocols} (seed {list(evaluation.seed)}, "
              f"world size {', '.join('not logged' if size is None else str(size) for size in world_sizes)}); "
              f"↓ lower is better, ↑ higher is better; – undefined or not reported."]
    for row in results["reported"]:
        judge = f", judged by {row['judge']}" if row["judge"] else ""
        lines.append(f"- *{row['label']}*: {REPORTED_MARK}; copied from {row['source']}{judge}.")
    lines += ["", f"Judge model: {experiment.judge.model or 'none'}.", "", "| run | model | training seed | ue_seed |",
              "|---|---|---|---|"]
    for run in results["runs"]:
        seeds = (run["training"] or {}).get("seeds", {})
        lines.append(f"| {run['label']} | `{run['model']}` | {seeds.get('seed', '–')} | "
                     f"{seeds.get('ue_seed') if seeds.get('ue_seed') is not None else '–'} |")
    versions = ", ".join(f"{name} {value}" for name, value in results["versions"].items() if value)
    lines += ["", f"Versions: {versions}.", "", "Configs, samples and logs: results.json, configs/, evals/, logs/.",
              "", "![results](results.png)", ""]
    return "\n".join(lines)


def render_chart(results: dict[str, Any], columns: list[tuple[str, str]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table_rows(results, columns)
    measured = len(results["runs"])
    figure, axes = plt.subplots(1, len(columns), figsize=(max(4.0, 3.2 * len(columns)), 4.2), squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for column, ((task, metric), axis) in enumerate(zip(columns, axes[0])):
        for index, (label, values) in enumerate(rows):
            value = values[column]
            reported = index >= measured
            bar = axis.bar(index, 0.0 if value is None else value, color=colours[index % len(colours)],
                           hatch="//" if reported else None, alpha=0.45 if reported else 1.0,
                           edgecolor="black" if reported else None)
            axis.bar_label(bar, labels=["n/a" if value is None else f"{value:.1f}"], fontsize=8)
        axis.set_title(f"{task}\n{metric}{_direction(results, task, metric)}", fontsize=9)
        axis.set_xticks(range(len(rows)), [label for label, _ in rows], rotation=30, ha="right", fontsize=8)
    figure.suptitle("hatched bars: reported, not measured" if results["reported"] else "", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(experiment: Experiment, markers: Markers, output: Path) -> dict[str, Any]:
    results = collect_results(experiment, markers)
    columns = table_columns(experiment, results)
    (output / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (output / "results.md").write_text(render_markdown(experiment, results, columns))
    render_chart(results, columns, output / "results.png")
    return results
