"""`ue-dpo run` of a file with `sweep:`: its cells one by one, each stage that cells share computed once, and the
sweep's report.

A stage reads some of the swept keys: the world every `synthetic.` key, a run's trainings the `runs.RUN.` keys of
that run, every evaluation the `evaluation.` keys, and each stage what the stages it names by `${...}` read. Its
folders and marker live in the folder named by those keys' values (ExperimentLayout draws them): a stage that reads
no swept key where the file without `sweep:` keeps it, one that reads every swept key in its cell's folder, and the
others under `shared/`. Cells that agree on what a stage reads thus give it the same folder, paths and digest, and
the first cell to need it computes it; the others find its marker. Each cell then runs as an unswept file does
(ue_dpo.experiment.runner): a stage is skipped when its marker holds its current digest, so an interrupted sweep
resumes where it stopped.

Each cell's report (results.json, .md, .png) is written in its folder when it is finished, by the unswept report
(its runs compared with the cell's own baseline, paired by seed). The sweep's report, sweep.json, sweep.md and one
sweep_<task>_<metric>.png per metric, is written from those after every cell, finished or not: a cell without a
current results.json (not reached yet, interrupted, or finished with another version of the file) is listed as
missing.
"""

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ue_dpo.experiment.config import Cell, Experiment, SweepAxis, references, value_text, values_name
from ue_dpo.experiment.layout import RESULTS_JSON, RESULTS_MD, ExperimentLayout
from ue_dpo.experiment.report import delta_cell, table_columns, value_cell
from ue_dpo.experiment.runner import ExperimentRunner
from ue_dpo.statistics import CONFIDENCE_LEVEL


def stage_reads(experiment: Experiment, keys: Sequence[str]) -> dict[str, frozenset[str]]:
    """The swept keys read by the world (`synthetic`), by each run's trainings or checkpoint (`runs.RUN`) and by each
    run's evaluations (`evals.RUN`), directly or through `${...}`."""
    reads = {"synthetic": frozenset(key for key in keys if key.startswith("synthetic."))}

    def through(value: Any) -> frozenset[str]:
        found: frozenset[str] = frozenset()
        for name in references(value):
            if name.startswith("synthetic."):
                found |= reads["synthetic"]
            elif name.startswith("runs."):
                found |= reads[name]
        return found

    for run in experiment.runs:
        own = frozenset(key for key in keys if key.rpartition(".")[0] == f"runs.{run.name}")
        reads[f"runs.{run.name}"] = own | through([run.overrides, run.checkpoint])
    evaluation = frozenset(key for key in keys if key.startswith("evaluation."))
    evaluation |= through([experiment.evaluation.model_args, experiment.evaluation.env])
    for run in experiment.runs:
        reads[f"evals.{run.name}"] = evaluation | reads[f"runs.{run.name}"]
    return reads


def stage_home(root: Path, axes: tuple[SweepAxis, ...], cell: Cell, read: frozenset[str]) -> Path:
    """The folder of a stage of `cell` that reads the swept keys `read`."""
    layout = ExperimentLayout(root)
    if not read:
        return root
    if len(read) == len(axes):
        return layout.cell_dir(cell.name)
    return layout.shared_dir(values_name(axes, {key: cell.values[key] for key in read}))


def run_sweep(experiment: Experiment) -> dict[str, Any]:
    """Run every cell in order (each stage skipped when its marker is current), then report; the sweep's report is
    written again after each cell, and when a cell fails or is interrupted."""
    root = experiment.output.resolve()
    layout = ExperimentLayout(root)
    reads = stage_reads(experiment.cells[0].experiment, [axis.key for axis in experiment.sweep])
    finished: dict[Path, str] = {}
    for number, cell in enumerate(experiment.cells, start=1):
        print(f"==> [ue-dpo run: sweep cell {number}/{len(experiment.cells)}] {cell.name}", flush=True)
        cell_layout = ExperimentLayout(layout.cell_dir(cell.name))
        cell_layout.results_json.unlink(missing_ok=True)  # written again once the cell is finished
        runner = ExperimentRunner(
            cell.experiment,
            home=lambda key, cell=cell: stage_home(root, experiment.sweep, cell, reads[key]),
            own_dir=cell_layout.root,
            finished=finished,
        )
        try:
            runner.run()
        finally:
            report = write_sweep_report(experiment)
    print(f"==> sweep: {layout.sweep_md}, {layout.sweep_json} and one plot per metric", flush=True)
    return report


def finished_cell(experiment: Experiment, cell: Cell) -> dict[str, Any] | None:
    """The cell's results.json, if the cell was finished with its current values and file; else None."""
    path = ExperimentLayout(ExperimentLayout(experiment.output.resolve()).cell_dir(cell.name)).results_json
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    current = json.loads(json.dumps(cell.experiment.raw, default=str))
    return results if results["experiment"]["config"] == current else None


def collect_sweep(experiment: Experiment) -> dict[str, Any]:
    root = experiment.output.resolve()
    cells, columns, first = [], [], None
    for cell in experiment.cells:
        results = finished_cell(experiment, cell)
        if results is not None and first is None:
            first = results
            columns = table_columns(cell.experiment, results)
        cells.append(
            {
                "name": cell.name,
                "values": cell.values,
                "folder": str(ExperimentLayout(root).cell_dir(cell.name)),
                "finished": results is not None,
                "runs": None
                if results is None
                else [
                    {key: run.get(key) for key in ("name", "label", "seeds", "metrics", "intervals")}
                    for run in results["runs"]
                ],
                "comparison": None if results is None else results.get("comparison"),
            }
        )
    return {
        "experiment": {
            "name": experiment.name,
            "file": None if experiment.source is None else str(experiment.source),
            "config": experiment.raw,
        },
        "sweep": [{"key": axis.key, "name": axis.name, "values": list(axis.values)} for axis in experiment.sweep],
        "baseline": experiment.baseline,
        "level": CONFIDENCE_LEVEL,
        "columns": [list(column) for column in columns],
        "higher_is_better": None if first is None else first["runs"][0]["higher_is_better"],
        "cells": cells,
    }


def render_sweep_markdown(experiment: Experiment, sweep: dict[str, Any]) -> str:
    axes, cells = experiment.sweep, sweep["cells"]
    missing = [cell["name"] for cell in cells if not cell["finished"]]
    seeds = experiment.raw.get("seeds")
    baseline = None if experiment.baseline is None else experiment.run(experiment.baseline)
    lines = [
        f"# {experiment.name}: sweep",
        "",
        "Swept: "
        + "; ".join(f"{axis.name} (`{axis.key}`): {', '.join(map(value_text, axis.values))}" for axis in axes)
        + f". {len(cells)} cells, {len(cells) - len(missing)} finished"
        + (f"; missing: {', '.join(missing)} (run `ue-dpo run` again to resume)." if missing else "."),
        "",
        f"Each cell runs the file with its values{f' and seeds {seeds}' if seeds else ''}; a run with several seeds "
        f"shows the mean over them [{CONFIDENCE_LEVEL:.0%} Student t interval]"
        + (
            f", and Δ = run − {baseline.label} of the same cell [{CONFIDENCE_LEVEL:.0%} interval]: paired by seed "
            f"(Student t of the per-seed differences), or for two single models the paired bootstrap over items."
            if baseline is not None
            else "."
        )
        + f" Every cell's numbers, seeds and models: cells/<cell>/{RESULTS_JSON} and {RESULTS_MD}.",
    ]
    for column, (task, metric) in enumerate(map(tuple, sweep["columns"])):
        better = sweep["higher_is_better"].get(task, {}).get(metric)
        higher = "" if better is None else (" ↑" if better else " ↓")
        headers = [axis.name for axis in axes] + ["run", f"{task} {metric}{higher}"]
        if baseline is not None:
            headers.append(f"Δ vs {baseline.label} [{CONFIDENCE_LEVEL:.0%} CI]")
        lines += ["", f"## {task} {metric}{higher}", "", "| " + " | ".join(headers) + " |", "|---" * len(headers) + "|"]
        for cell in cells:
            values = [value_text(cell["values"][axis.key]) for axis in axes]
            if not cell["finished"]:
                lines.append("| " + " | ".join([*values, "missing", *["–"] * (len(headers) - len(axes) - 1)]) + " |")
                continue
            for run in cell["runs"]:
                cells_of_row = [
                    *values,
                    run["label"],
                    value_cell(
                        run["metrics"].get(task, {}).get(metric), (run.get("intervals") or {}).get(task, {}).get(metric)
                    ),
                ]
                if baseline is not None:
                    cells_of_row.append(delta_cell(cell["comparison"], run["name"], task, metric))
                lines.append("| " + " | ".join(cells_of_row) + " |")
        lines += ["", f"![{task} {metric}]({ExperimentLayout(Path('.')).sweep_chart(task, metric).name})"]
    if not sweep["columns"]:
        lines += ["", "No cell is finished yet."]
    return "\n".join(lines) + "\n"


def numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(value, int | float) and not isinstance(value, bool) for value in values)


def render_sweep_chart(experiment: Experiment, sweep: dict[str, Any], task: str, metric: str, path: Path) -> None:
    """One panel per swept key, its values on x; a line per run and combination of the other keys' values: Δ vs
    the cell's baseline (or, without a baseline, the mean) with its interval as a band; missing cells leave gaps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = experiment.sweep
    by_values = {tuple(cell["values"][axis.key] for axis in axes): cell for cell in sweep["cells"]}
    baseline = experiment.baseline
    runs = [run for run in experiment.runs if run.name != baseline]
    figure, panels = plt.subplots(1, len(axes), figsize=(5.0 * len(axes), 4.0), squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for index, (axis, panel) in enumerate(zip(axes, panels[0])):
        others = [other for other in axes if other is not axis]
        xs = list(axis.values) if numeric(axis.values) else list(range(len(axis.values)))
        combinations = [()]
        for other in others:
            combinations = [(*combination, value) for combination in combinations for value in other.values]
        line = 0
        for run in runs:
            for combination in combinations:
                fixed = dict(zip((other.key for other in others), combination))
                points = []
                for value in axis.values:
                    cell = by_values[tuple(value if item is axis else fixed[item.key] for item in axes)]
                    points.append(point(cell, run.name, baseline, task, metric))
                label = run.label + "".join(
                    f", {other.name}={value_text(fixed[other.key])}" for other in others if len(other.values) > 1
                )
                colour = colours[line % len(colours)]
                line += 1
                ys = [math.nan if item is None else item[0] for item in points]
                lows = [math.nan if item is None or item[1] is None else item[1] for item in points]
                highs = [math.nan if item is None or item[2] is None else item[2] for item in points]
                panel.plot(xs, ys, marker="o", color=colour, label=label)
                panel.fill_between(xs, lows, highs, color=colour, alpha=0.2)
        if baseline is not None:
            panel.axhline(0.0, color="grey", linewidth=0.8)
        if not numeric(axis.values):
            panel.set_xticks(xs, [value_text(value) for value in axis.values])
        panel.set_xlabel(axis.key)
        what = f"Δ vs {experiment.run(baseline).label}" if baseline is not None else "mean"
        panel.set_ylabel(f"{task} {metric}: {what}")
        panel.legend(fontsize=7)
    figure.suptitle(
        f"{task} {metric}: {'Δ vs the cell’s baseline' if baseline else 'mean'}\nband: "
        f"{CONFIDENCE_LEVEL:.0%} interval; a gap: a missing cell",
        fontsize=9,
    )
    figure.tight_layout(rect=(0.0, 0.0, 1.0, 0.92))  # below the two-line title
    figure.savefig(path, dpi=110)
    plt.close(figure)


def point(
    cell: dict[str, Any], run: str, baseline: str | None, task: str, metric: str
) -> tuple[float, float | None, float | None] | None:
    """(value, low, high) of one run in one cell: its Δ vs the baseline, or its mean without one; None if missing."""
    if not cell["finished"]:
        return None
    if baseline is not None:
        delta = cell["comparison"]["runs"].get(run, {}).get("tasks", {}).get(task, {}).get(metric)
        return None if delta is None or delta["delta"] is None else (delta["delta"], delta["low"], delta["high"])
    measured = next(item for item in cell["runs"] if item["name"] == run)
    value = measured["metrics"].get(task, {}).get(metric)
    interval = (measured.get("intervals") or {}).get(task, {}).get(metric)
    return None if value is None else (value, *(interval or (None, None)))


def write_sweep_report(experiment: Experiment) -> dict[str, Any]:
    layout = ExperimentLayout(experiment.output.resolve())
    layout.root.mkdir(parents=True, exist_ok=True)
    sweep = collect_sweep(experiment)
    text = json.dumps(sweep, indent=1, default=str)
    charts = {(task, metric): layout.sweep_chart(task, metric) for task, metric in sweep["columns"]}
    unchanged = layout.sweep_json.is_file() and layout.sweep_json.read_text() == text
    layout.sweep_json.write_text(text)
    layout.sweep_md.write_text(render_sweep_markdown(experiment, sweep))
    for (task, metric), path in charts.items():
        if not (unchanged and path.is_file()):  # drawn from sweep.json's numbers alone
            render_sweep_chart(experiment, sweep, task, metric, path)
    return sweep
