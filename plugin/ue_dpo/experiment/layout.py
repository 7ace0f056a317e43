"""The output folder of `ue-dpo run`: every name in it is spelled here, once.

<output>/results.json, results.md, results.png   the report (ue_dpo.experiment.report)
<output>/state/<stage>.<kind>.json              stage markers (ue_dpo.experiment.stages.Markers)
<output>/synthetic/                             the embedded world, when the file has one
<output>/runs/<run>/                            each training's output_dir (<run>@seed<S> per seed)
                                                (<run>@difficulty<L> per stage of a staged run)
<output>/evals/<run>/<protocol>/                each run's lmms-eval --output_path, one per protocol
<output>/served/<run>/                          a run's model prepared for an inference server
<output>/configs/<stage>.yaml                   the config each stage ran with
<output>/logs/<stage>.log                       each stage's output

A file with `sweep:` (ue_dpo.experiment.sweep) keeps that layout in several folders, each stage in the one named by
the swept values it reads (directly or through `${...}`):
<output>/                                       the stages that read no swept key, shared by every cell
<output>/shared/<key=value+...>/                those that read some of the swept keys, shared by the cells with
                                                those values
<output>/cells/<key=value+...>/                 those that read every swept key, and the cell's report, lmms-eval
                                                config and log
<output>/sweep.json, sweep.md, sweep_<task>_<metric>.png   the sweep's report
"""

import re
from dataclasses import dataclass
from pathlib import Path

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RESULTS_PNG = "results.png"
STATE_DIR = "state"
SYNTHETIC_DIR = "synthetic"
RUNS_DIR = "runs"
EVALS_DIR = "evals"
SERVED_DIR = "served"
CONFIGS_DIR = "configs"
LOGS_DIR = "logs"
CELLS_DIR = "cells"
SHARED_DIR = "shared"
SWEEP_JSON = "sweep.json"
SWEEP_MD = "sweep.md"


@dataclass(frozen=True)
class ExperimentLayout:
    """The paths under one experiment's output folder `root`."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def results_json(self) -> Path:
        return self.root / RESULTS_JSON

    @property
    def results_md(self) -> Path:
        return self.root / RESULTS_MD

    @property
    def results_png(self) -> Path:
        return self.root / RESULTS_PNG

    @property
    def sweep_json(self) -> Path:
        return self.root / SWEEP_JSON

    @property
    def sweep_md(self) -> Path:
        return self.root / SWEEP_MD

    def sweep_chart(self, task: str, metric: str) -> Path:
        """The plot of one metric against the swept values (characters other than letters, digits, '.', '-' and
        '_' of a metric's name, such as the ',' of `recall,exact`, become '_')."""
        return self.root / re.sub(r"[^A-Za-z0-9._-]", "_", f"sweep_{task}_{metric}.png")

    def cell_dir(self, cell: str) -> Path:
        return self.root / CELLS_DIR / cell

    def shared_dir(self, values: str) -> Path:
        return self.root / SHARED_DIR / values

    @property
    def state(self) -> Path:
        return self.root / STATE_DIR

    @property
    def synthetic(self) -> Path:
        return self.root / SYNTHETIC_DIR

    @property
    def evals(self) -> Path:
        return self.root / EVALS_DIR

    def run_dir(self, name: str) -> Path:
        """The training output_dir of `name` (a run, or `run@seedS`)."""
        return self.root / RUNS_DIR / name

    def eval_dir(self, name: str) -> Path:
        """The lmms-eval output of `name`: one `--output_path` folder per protocol inside it."""
        return self.evals / name

    def served_dir(self, name: str) -> Path:
        return self.root / SERVED_DIR / name

    def config(self, stage: str) -> Path:
        return self.root / CONFIGS_DIR / f"{stage}.yaml"

    def log(self, stage: str) -> Path:
        return self.root / LOGS_DIR / f"{stage}.log"

    def is_experiment(self) -> bool:
        """Whether `root` is the output folder of `ue-dpo run` (a report, and evaluated runs under it)."""
        return self.results_json.is_file() and self.evals.is_dir()

    def evaluated_runs(self) -> list[str]:
        """The names with an lmms-eval output folder under evals/."""
        return sorted(path.name for path in self.evals.iterdir() if path.is_dir()) if self.evals.is_dir() else []
