"""The experiment file of `ue-dpo run`: its schema, validation and `${...}` references.

Paths of training configs (`runs[].train`) are relative to the experiment file; every other path
(`output`, `checkpoint`, paths inside overrides) is used as written, relative to the current
directory, as `llamafactory-cli` and `lmms-eval` treat paths.

String values in `overrides`, `checkpoint`, `evaluation.model_args` and `evaluation.env` may name
`${output}` (the output folder), `${synthetic.model}`, `${synthetic.data}`, `${synthetic.eval}`
(the embedded world, when the file has a `synthetic:` block) and `${runs.NAME}` (the model of an
earlier run: its training output dir or its checkpoint). In a run trained once per seed (`seeds:`),
`${runs.NAME}` of a run that is also trained per seed is NAME's model of the same seed.

`stages: {by: difficulty, levels: [0, 1, 2]}` trains a run in consecutive stages, one per level in that order, each on
the rows of its level (`ue_difficulty`) and continuing from the previous stage's weights; the run's model is the last
stage's (ue_dpo.experiment.runner.staged_config).

`sweep:` maps keys (`synthetic.FIELD`, `runs.RUN.KEY` into that run's overrides, `evaluation.SETTING...`) to lists
of values; the cells are their Cartesian product in file order, each the file with its values set, parsed and
checked like a file of its own before anything runs (ue_dpo.experiment.sweep runs them).
"""

import copy
import dataclasses
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ue_dpo.benchmarks.registry import judged_tasks
from ue_dpo.config import UEDPOArguments
from ue_dpo.evaluation.model_settings import (
    GENERATION_KWARGS,
    SERVED_MODEL,
    SERVED_MODEL_ARGS,
    TRAINING_PROMPT_KEYS,
    UE_DPO_HF,
)
from ue_dpo.experiment.stages import digest
from ue_dpo.methods import DEFAULT_METHOD, METHODS, key_groups, readers
from ue_dpo.synthetic.world import ARCHITECTURES as SYNTHETIC_ARCHITECTURES
from ue_dpo.synthetic.world import BLIND_SPOT_KEYS, SyntheticWorld, check_blind_spot_keys
from ue_dpo.synthetic.world import WORLDS as SYNTHETIC_WORLDS
from ue_dpo.yaml_errors import describe_yaml_error

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
REFERENCE = re.compile(r"\$\{([^}]*)\}")
SYNTHETIC_PATHS = ("model", "data", "eval")
JUDGED_TASKS = judged_tasks()  # scored by an LLM judge whatever the settings (object_halbench only with `gpt`)
# lmms-eval's default `--seed`: python, numpy, torch and few-shot sampling seeds
DEFAULT_EVAL_SEED = (0, 1234, 1234, 1234)
SEED_SEPARATOR = "@seed"  # `dpo@seed3`: run dpo trained with seed 3 (not a character of run names, so never ambiguous)
DIFFICULTY_SEPARATOR = "@difficulty"  # `dpo@seed3@difficulty1`: the stage of dpo@seed3 on the rows of level 1
STAGED_BY = ("difficulty",)  # what `stages: {by: ...}` can split a run's training by


class ExperimentConfigError(ValueError):
    """A bad experiment file; the message names the key and the fix."""


SWEPT_SECTIONS = ("synthetic", "runs", "evaluation")
# evaluation settings a sweep may not vary: the tasks and the tabulated metrics make the cells' tables differ
UNSWEPT_EVALUATION_KEYS = {"tasks", "metrics"}
# A cell's folder is named `key=value+key=value`; lmms-eval's `k=v,k=v` model_args carry the paths of its models,
# so a ',' would cut them
CELL_NAME_SEPARATOR = "+"
CELL_NAME_FORBIDDEN = re.compile(r"[/,=+\s]")


@dataclass(frozen=True)
class SweepAxis:
    """One key of `sweep:` and its values."""

    key: str  # as written: `synthetic.faint_grey`, `runs.ue_dpo.ue_alpha`, `evaluation.gen_kwargs.max_new_tokens`
    values: tuple[Any, ...]
    name: str  # in cell names: the shortest dotted tail of `key` that no other swept key ends with


@dataclass(frozen=True)
class Cell:
    """One combination of the swept values: the experiment file with them set."""

    name: str  # `faint_grey=160+ue_alpha=0.1`: its folder under <output>/cells/
    values: dict[str, Any]  # swept key -> its value in this cell
    experiment: "Experiment"


@dataclass(frozen=True)
class Run:
    name: str
    label: str
    train: Path | None = None  # a LLaMA-Factory training YAML
    overrides: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None  # evaluate this model as it is
    seeds: tuple[int, ...] | None = None  # train and evaluate once per seed; None: once, with the config's seed
    difficulty_levels: tuple[int, ...] | None = None  # `stages:`: the levels trained in order; None: one training

    @property
    def each_seed(self) -> tuple[int | None, ...]:
        """The seeds this run is trained and evaluated with; (None,) for a run trained or evaluated once."""
        return (None,) if self.seeds is None else self.seeds


def instance_name(run: str, seed: int | None) -> str:
    """What names one training and evaluation of a run (stage markers, `runs/` and `evals/` folders)."""
    return run if seed is None else f"{run}{SEED_SEPARATOR}{seed}"


def stage_instance(name: str, level: int) -> str:
    """What names the stage of instance `name` (a run, or `run@seedS`) on the rows of difficulty `level`."""
    return f"{name}{DIFFICULTY_SEPARATOR}{level}"


def run_of_instance(name: str) -> str:
    """The run of an instance or stage name (`dpo@seed3`, `dpo@seed3@difficulty1` -> `dpo`; '@' is in no run name)."""
    return name.partition("@")[0]


@dataclass(frozen=True)
class Server:
    """`evaluation.server`: evaluate each run through an inference server started from this command template."""

    command: str  # e.g. "vllm serve {model} --tensor-parallel-size 8 --port {port}"
    concurrency: int = 8  # requests in flight (lmms-eval openai's num_concurrent)
    health_timeout_s: int = 900  # from start until /health answers
    request_timeout_s: int = 600  # per request (lmms-eval openai's timeout)
    merge_dtype: str = "auto"  # `llamafactory-cli export`'s infer_dtype when a LoRA run is merged first


SERVER_MODEL = SERVED_MODEL  # lmms-eval's OpenAI-compatible chat model, the client of every served run
MERGE_DTYPES = ("auto", "float16", "bfloat16", "float32")


@dataclass(frozen=True)
class Protocol:
    """Tasks evaluated with the same settings, by one lmms-eval run (one `--config` entry) per model."""

    tasks: tuple[str, ...]
    gen_kwargs: dict[str, Any]  # evaluation.gen_kwargs, then the task entry's: over the task YAML's
    limit: int | None
    batch_size: int

    @property
    def name(self) -> str:
        """The folder of its lmms-eval output under evals/<run>/."""
        return "+".join(self.tasks)


@dataclass(frozen=True)
class Evaluation:
    tasks: tuple[str, ...]
    # from `tasks`, `gen_kwargs`, `limit` and `batch_size`: each task's settings, tasks with the same ones together
    protocols: tuple[Protocol, ...]
    model: str = UE_DPO_HF
    model_args: dict[str, Any] = field(default_factory=dict)  # `pretrained` is each run's model
    seed: tuple[int, int, int, int] = DEFAULT_EVAL_SEED
    env: dict[str, str] = field(default_factory=dict)
    launcher: tuple[str, ...] = ("lmms-eval",)
    metrics: dict[str, tuple[str, ...]] = field(default_factory=dict)  # columns per task; default: all
    server: Server | None = None


@dataclass(frozen=True)
class Judge:
    model: str | None = None
    base_url: str | None = None
    cache_dir: str | None = None
    allow_failures: bool = False


@dataclass(frozen=True)
class ReportedRow:
    label: str
    source: str
    metrics: dict[str, dict[str, float]]
    judge: str | None = None  # the judge model behind its judged metrics; must be the experiment's judge.model


@dataclass(frozen=True)
class Experiment:
    name: str
    source: Path | None  # the experiment file
    output: Path
    runs: tuple[Run, ...]
    evaluation: Evaluation
    judge: Judge = field(default_factory=Judge)
    synthetic: SyntheticWorld | None = None
    reported: tuple[ReportedRow, ...] = ()
    baseline: str | None = None  # the run every other run is compared with, item-paired or seed-paired
    raw: dict[str, Any] = field(default_factory=dict)  # the mapping it was read from, after --set
    sweep: tuple[SweepAxis, ...] = ()  # `sweep:`, in file order; () for a file without one
    cells: tuple[Cell, ...] = ()  # the sweep's cells, in order (the last key varies fastest)

    def run(self, name: str) -> Run:
        return next(run for run in self.runs if run.name == name)


def load_experiment(path: Path, settings: list[str] = (), output: Path | None = None) -> Experiment:
    """Read an experiment file, apply `--set key.path=value` settings, and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ExperimentConfigError(
            f"experiment file {path} does not exist; pass the path of an experiment YAML (see configs/experiments/)"
        )
    raw = read_yaml(path, "experiment file")
    if not isinstance(raw, dict):
        raise ExperimentConfigError(f"{path}: an experiment file is a YAML mapping with `runs:` and `evaluation:`")
    for setting in settings:
        apply_setting(raw, setting)
    if output is not None:
        raw["output"] = str(output)
    return parse_experiment(raw, base_dir=path.resolve().parent, source=path.resolve())


def read_yaml(path: Path, what: str) -> Any:
    """The YAML document in `path`; a syntax error is an ExperimentConfigError naming the file, line and column."""
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except yaml.YAMLError as error:
        raise ExperimentConfigError(
            f"{what} {path} is not valid YAML: {describe_yaml_error(error)}; fix its syntax"
        ) from None
    except UnicodeDecodeError as error:
        raise ExperimentConfigError(f"{what} {path} is not UTF-8 text ({error}); save it as UTF-8") from None


def apply_setting(raw: dict[str, Any], setting: str) -> None:
    """`a.b.c=value` (value parsed as YAML) sets raw[a][b][c]; a list element is addressed by its `name`."""
    key_path, separator, value_text = setting.partition("=")
    if not separator or not key_path:
        raise ExperimentConfigError(f"--set {setting!r}: write KEY.PATH=VALUE, e.g. --set evaluation.limit=8")
    keys = key_path.split(".")
    node: Any = raw
    for depth, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            matches = [item for item in node if isinstance(item, dict) and item.get("name") == key]
            if not matches:
                where = ".".join(keys[:depth])
                raise ExperimentConfigError(
                    f"--set {setting!r}: {where} has no entry named {key!r}; names: "
                    f"{[item.get('name') for item in node if isinstance(item, dict)]}"
                )
            node = matches[0]
        elif isinstance(node, dict):
            node = node.setdefault(key, {})
        if not isinstance(node, dict | list):
            raise ExperimentConfigError(f"--set {setting!r}: {'.'.join(keys[: depth + 1])} is not a mapping")
    if not isinstance(node, dict):
        raise ExperimentConfigError(f"--set {setting!r}: {'.'.join(keys[:-1])} is a list; address an entry by name")
    try:
        node[keys[-1]] = yaml.safe_load(value_text)
    except yaml.YAMLError as error:
        raise ExperimentConfigError(
            f"--set {setting!r}: the value is not valid YAML ({describe_yaml_error(error)}); "
            f"quote a text value, e.g. --set '{key_path}=\"...\"'"
        ) from None


def parse_experiment(raw: Mapping[str, Any], *, base_dir: Path, source: Path | None = None) -> Experiment:
    _only_keys(
        "the experiment",
        raw,
        {"name", "output", "runs", "evaluation", "judge", "synthetic", "reported", "seeds", "baseline", "sweep"},
    )
    if raw.get("sweep") is not None:
        return _parse_swept_experiment(raw, base_dir=base_dir, source=source)
    synthetic = _parse_synthetic(raw.get("synthetic"))
    seeds = None if raw.get("seeds") is None else _seeds("seeds", raw["seeds"])
    runs = _parse_runs(raw.get("runs"), base_dir, seeds)
    evaluation = _parse_evaluation(raw.get("evaluation"))
    experiment = Experiment(
        name=_string("name", raw.get("name", source.stem if source else "experiment")),
        source=source,
        output=Path(
            _string(
                "output",
                _required(raw, "output", "the experiment", "a results folder, e.g. `output: results/my_experiment`"),
            )
        ),
        runs=runs,
        evaluation=evaluation,
        judge=_parse_judge(raw.get("judge")),
        synthetic=synthetic,
        reported=_parse_reported(raw.get("reported")),
        baseline=_parse_baseline(raw.get("baseline"), runs),
        raw=dict(raw),
    )
    _check_references(experiment)
    _check_reported_judges(experiment)
    return experiment


def _parse_swept_experiment(raw: Mapping[str, Any], *, base_dir: Path, source: Path | None) -> Experiment:
    """The file without its sweep, checked first, then each cell: the file with the cell's values set."""
    unswept = {key: value for key, value in raw.items() if key != "sweep"}
    experiment = parse_experiment(unswept, base_dir=base_dir, source=source)
    axes = _parse_sweep_axes(raw["sweep"], experiment)
    cells = []
    for values in itertools.product(*(axis.values for axis in axes)):
        assignment = {axis.key: value for axis, value in zip(axes, values)}
        name = values_name(axes, assignment)
        cell_raw = copy.deepcopy(unswept)
        for key, value in assignment.items():
            _set_swept_value(cell_raw, key, value)
        try:
            cell = parse_experiment(cell_raw, base_dir=base_dir, source=source)
            _check_swept_run_keys(cell, assignment)
        except ExperimentConfigError as error:
            raise ExperimentConfigError(f"sweep: in cell {name}: {error}") from None
        cells.append(Cell(name=name, values=assignment, experiment=cell))
    return dataclasses.replace(experiment, raw=dict(raw), sweep=axes, cells=tuple(cells))


def values_name(axes: tuple[SweepAxis, ...], values: Mapping[str, Any]) -> str:
    """`faint_grey=160+ue_alpha=0.1`: the values of the axes whose key `values` holds, in sweep order."""
    return CELL_NAME_SEPARATOR.join(
        f"{axis.name}={value_text(values[axis.key])}" for axis in axes if axis.key in values
    )


def value_text(value: Any) -> str:
    """A swept value as cell names and tables write it (YAML's spelling of a scalar)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


def _parse_sweep_axes(raw: Any, experiment: Experiment) -> tuple[SweepAxis, ...]:
    if not isinstance(raw, dict) or not raw:
        raise ExperimentConfigError(
            "sweep: map each swept key to its list of values, e.g. `sweep: {synthetic.preference_pairs: [64, 256], "
            "runs.ue_dpo.ue_alpha: [0.1, 0.3]}`"
        )
    keys = [str(key) for key in raw]
    axes = []
    for key, values in zip(keys, raw.values()):
        where = f"sweep.{key}"
        _check_swept_key(where, key, experiment)
        if not isinstance(values, list) or not values:
            raise ExperimentConfigError(f"{where}: list the values to sweep, e.g. `{key}: [1, 2]`; got {values!r}")
        texts = []
        for value in values:
            if not (value is None or isinstance(value, str | int | float | bool)):
                raise ExperimentConfigError(
                    f"{where}: {value!r} is not one value; each value is a YAML scalar (a number, a word, true, "
                    f"false or null)"
                )
            text = value_text(value)
            if not text or CELL_NAME_FORBIDDEN.search(text) or text.startswith("."):
                raise ExperimentConfigError(
                    f"{where}: {value!r} cannot name a cell folder (`{key.rsplit('.', 1)[-1]}={text}`): use a value "
                    f"without '/', ',', '=', '+' or spaces that does not start with '.'"
                )
            earlier = values[: len(texts)]
            if text in texts or any(
                value == other and isinstance(other, bool) == isinstance(value, bool) for other in earlier
            ):
                raise ExperimentConfigError(f"{where}: {value!r} is listed twice; list each value once")
            texts.append(text)
        axes.append(SweepAxis(key=key, values=tuple(values), name=_short_name(key, keys)))
    return tuple(axes)


def _short_name(key: str, keys: list[str]) -> str:
    parts = key.split(".")
    for length in range(1, len(parts) + 1):
        tail = parts[-length:]
        if not any(other != key and other.split(".")[-length:] == tail for other in keys):
            return ".".join(tail)
    return key


def _check_swept_key(where: str, key: str, experiment: Experiment) -> None:
    """The key names something the file has, and the sweep would not replace a `${...}` reference."""
    section, _, rest = key.partition(".")
    if section not in SWEPT_SECTIONS or not rest:
        raise ExperimentConfigError(
            f"{where}: not a key a sweep can vary; sweep `synthetic.FIELD` (a world parameter), `runs.RUN.KEY` (a "
            f"training key of one run) or `evaluation.SETTING` (e.g. evaluation.gen_kwargs.max_new_tokens)"
        )
    raw = experiment.raw
    if section == "synthetic":
        fields = sorted(item.name for item in dataclasses.fields(SyntheticWorld))
        if experiment.synthetic is None:
            raise ExperimentConfigError(
                f"{where}: the file has no `synthetic:` block to vary; add one, or sweep a `runs.` or `evaluation.` key"
            )
        if rest not in fields:
            raise ExperimentConfigError(f"{where}: {rest!r} is not a synthetic world parameter; use one of {fields}")
        return
    if section == "runs":
        run_name, _, name = rest.rpartition(".")
        names = [run.name for run in experiment.runs]
        if run_name not in names:
            raise ExperimentConfigError(
                f"{where}: write runs.RUN.KEY with RUN one of the runs {names} and KEY a training key of it"
            )
        run = experiment.run(run_name)
        if run.train is None:
            raise ExperimentConfigError(
                f"{where}: run {run_name!r} is a `checkpoint:` run, which is not trained; sweep a key of a `train:` run"
            )
        if references(run.overrides.get(name)):
            raise ExperimentConfigError(
                f"{where}: runs.{run_name}.overrides.{name} is {run.overrides[name]!r}, a reference the sweep would "
                f"replace; sweep another key, or set {name} in the overrides without a reference"
            )
        return
    parts = rest.split(".")
    if parts[0] not in EVALUATION_KEYS - UNSWEPT_EVALUATION_KEYS:
        raise ExperimentConfigError(
            f"{where}: {parts[0]!r} is not an evaluation setting a sweep can vary; use one of "
            f"{sorted(EVALUATION_KEYS - UNSWEPT_EVALUATION_KEYS)} (a cell evaluates the file's tasks and metrics)"
        )
    node: Any = raw["evaluation"]
    for depth, part in enumerate(parts[:-1]):
        node = node.get(part, {})
        if not isinstance(node, dict):
            raise ExperimentConfigError(
                f"{where}: evaluation.{'.'.join(parts[: depth + 1])} is not a mapping, so it has no key {parts[-1]!r}"
            )
    if references(node.get(parts[-1])):
        raise ExperimentConfigError(
            f"{where}: {key} is {node[parts[-1]]!r}, a reference the sweep would replace; sweep another setting, or "
            f"set it without a reference"
        )


def _set_swept_value(raw: dict[str, Any], key: str, value: Any) -> None:
    section, _, rest = key.partition(".")
    if section == "runs":
        run_name, _, name = rest.rpartition(".")
        entry = next(item for item in raw["runs"] if item.get("name") == run_name)
        entry.setdefault("overrides", {})[name] = value
        return
    node = raw[section]
    *parents, name = rest.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[name] = value


STAGE_KEYS = {item.name for item in dataclasses.fields(UEDPOArguments) if item.init}


def _check_swept_run_keys(cell: Experiment, assignment: Mapping[str, Any]) -> None:
    """A swept key of `stage: ue_dpo` is refused on a run whose stage or method would not read it, and so is a swept
    run whose method, in this cell, would not read a key of `stage: ue_dpo` that its config sets."""
    swept: dict[str, list[str]] = {}
    for key in assignment:
        section, _, rest = key.partition(".")
        if section == "runs":
            run_name, _, name = rest.rpartition(".")
            swept.setdefault(run_name, []).append(name)
    for run_name, names in swept.items():
        run = cell.run(run_name)
        config = {**read_yaml(run.train, f"runs.{run_name}.train:"), **run.overrides}
        for name in names:
            if name.startswith("ue_") and name not in STAGE_KEYS:
                raise ExperimentConfigError(
                    f"sweep.runs.{run_name}.{name}: {name!r} is not a key of `stage: ue_dpo`; its keys: "
                    f"{', '.join(sorted(STAGE_KEYS))}"
                )
            if name in STAGE_KEYS and config.get("stage") != "ue_dpo":
                raise ExperimentConfigError(
                    f"sweep.runs.{run_name}.{name}: run {run_name!r} trains with `stage: {config.get('stage')}` "
                    f"({run.train.name}), which does not read {name} (a key of `stage: ue_dpo`); sweep it on a run "
                    f"with `stage: ue_dpo`"
                )
        if config.get("stage") != "ue_dpo":
            continue  # a LLaMA-Factory key of another stage: LLaMA-Factory's own parser refuses an unknown one
        method = config.get("ue_weighting", DEFAULT_METHOD)
        if method not in METHODS:
            raise ExperimentConfigError(
                f"runs.{run_name}.overrides.ue_weighting: {method!r} is not a preference method; use one of "
                f"{', '.join(METHODS)}"
            )
        unread = [
            (name, group)
            for group in key_groups()
            if group not in METHODS[method].key_groups
            for name in group.defaults
            if name in config
        ]
        for name, group in sorted(unread, key=lambda item: item[0] not in names):  # a swept one first
            where = f"sweep.runs.{run_name}.{name}" if name in names else f"sweep: runs.{run_name}"
            raise ExperimentConfigError(
                f"{where}: run {run_name!r} trains with `ue_weighting: {method}`, which does not read {name} "
                f"(read by {', '.join(readers(group))}; set by "
                f"{'the sweep' if name in names else f'{run.train.name} or its overrides'}); sweep a key that "
                f"{method} reads, or drop {name}"
            )


def _seeds(where: str, raw: Any) -> tuple[int, ...]:
    if (
        not isinstance(raw, list)
        or not raw
        or not all(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 for seed in raw)
        or len(set(raw)) != len(raw)
    ):
        raise ExperimentConfigError(
            f"{where}: list distinct non-negative integers, e.g. `seeds: [0, 1, 2, 3, 4]`, got {raw!r}"
        )
    return tuple(raw)


def _parse_baseline(raw: Any, runs: tuple[Run, ...]) -> str | None:
    if raw is None:
        return None
    names = [run.name for run in runs]
    if raw not in names:
        raise ExperimentConfigError(
            f"baseline: {raw!r} names no run; name the run the others are compared with, one of {names}"
        )
    baseline = next(run for run in runs if run.name == raw)
    for run in runs:
        if run.seeds is not None and baseline.seeds is not None and not set(run.seeds) & set(baseline.seeds):
            raise ExperimentConfigError(
                f"runs.{run.name}.seeds: {list(run.seeds)} shares no seed with the baseline "
                f"{raw!r} ({list(baseline.seeds)}), so the two cannot be paired by seed; "
                f"train both with some seeds in common"
            )
    return raw


def _parse_synthetic(raw: Any) -> SyntheticWorld | None:
    if raw is None:
        return None
    _mapping("synthetic", raw)
    fields = {item.name for item in dataclasses.fields(SyntheticWorld)}
    _only_keys("synthetic", raw, fields)
    try:
        world = SyntheticWorld(**raw)
        check_blind_spot_keys(world.world, raw)  # a key written at its default would be ignored too
    except ValueError as error:  # the checks name the key
        raise ExperimentConfigError(str(error)) from None
    if world.world not in SYNTHETIC_WORLDS:
        raise ExperimentConfigError(
            f"synthetic.world: {world.world!r} is not a synthetic world; use one of "
            f"{', '.join(SYNTHETIC_WORLDS)} (default shapes)"
        )
    if world.arch not in SYNTHETIC_ARCHITECTURES:
        raise ExperimentConfigError(
            f"synthetic.arch: {world.arch!r} is not a tiny model architecture; use one of "
            f"{', '.join(SYNTHETIC_ARCHITECTURES)}"
        )
    noisy_share = world.sft_noisy_share
    if isinstance(noisy_share, bool) or not isinstance(noisy_share, int | float) or not 0 <= noisy_share <= 1:
        raise ExperimentConfigError(f"synthetic.sft_noisy_share: must be a number in [0, 1], got {noisy_share!r}")
    for name in fields - {"world", "arch", "sft_noisy_share", *BLIND_SPOT_KEYS}:
        value = getattr(world, name)
        minimum = 0 if name == "seed" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ExperimentConfigError(f"synthetic.{name}: must be an integer >= {minimum}, got {value!r}")
    return world


def _parse_runs(raw: Any, base_dir: Path, seeds: tuple[int, ...] | None) -> tuple[Run, ...]:
    if not isinstance(raw, list) or not raw:
        raise ExperimentConfigError(
            "runs: list the runs to compare, each with `name` and either `train: "
            "<LLaMA-Factory YAML>` (plus optional `overrides`) or `checkpoint: <model>`"
        )
    runs, names = [], set()
    for index, item in enumerate(raw):
        where = f"runs[{index}]"
        _mapping(where, item)
        _only_keys(where, item, {"name", "label", "train", "overrides", "checkpoint", "seeds", "stages"})
        name = _string(f"{where}.name", _required(item, "name", where, "a short unique name, e.g. `name: ue_dpo`"))
        if not RUN_NAME.match(name):
            raise ExperimentConfigError(
                f"{where}.name: {name!r} must be letters, digits, '_', '-' or '.', starting "
                f"with a letter or digit (it names folders)"
            )
        if name in names:
            raise ExperimentConfigError(f"{where}.name: {name!r} is used twice; give each run its own name")
        names.add(name)
        where = f"runs.{name}"
        has_train, has_checkpoint = "train" in item, "checkpoint" in item
        if has_train == has_checkpoint:
            raise ExperimentConfigError(
                f"{where}: give exactly one of `train: <LLaMA-Factory YAML>` (train, then "
                f"evaluate) or `checkpoint: <model dir or hub id>` (evaluate only)"
            )
        overrides = item.get("overrides", {})
        _mapping(f"{where}.overrides", overrides)
        if has_checkpoint and overrides:
            raise ExperimentConfigError(f"{where}.overrides: only a `train:` run has overrides; drop them or train")
        for key in ("output_dir", "resume_from_checkpoint"):
            if key in overrides:
                raise ExperimentConfigError(
                    f"{where}.overrides.{key}: set by `ue-dpo run` (the run trains into "
                    f"<output>/runs/{name} and resumes its last checkpoint); remove it"
                )
        train = None
        if has_train:
            train = base_dir / _string(f"{where}.train", item["train"])
            if not train.is_file():
                raise ExperimentConfigError(
                    f"{where}.train: {train} does not exist (paths of training configs are "
                    f"relative to the experiment file)"
                )
            config = read_yaml(train, f"{where}.train:")
            if not isinstance(config, dict):
                raise ExperimentConfigError(f"{where}.train: {train} is not a LLaMA-Factory YAML mapping")
            if not config.get("do_train", False) and not overrides.get("do_train", False):
                raise ExperimentConfigError(
                    f"{where}.train: {train} does not set `do_train: true`; a `train:` run "
                    f"must train (use `checkpoint:` to evaluate a model as it is)"
                )
        checkpoint = _string(f"{where}.checkpoint", item["checkpoint"]) if has_checkpoint else None
        run_seeds = None
        if has_checkpoint and "seeds" in item:
            raise ExperimentConfigError(
                f"{where}.seeds: a `checkpoint:` run is not trained and its greedy evaluation "
                f"does not depend on a seed, so it is evaluated once; remove `seeds`"
            )
        if has_train:
            run_seeds = (
                _seeds(f"{where}.seeds", item["seeds"])
                if item.get("seeds") is not None
                else (None if "seeds" in item else seeds)
            )
        if run_seeds is not None:
            for key in ("seed", "ue_seed"):
                if key in overrides:
                    raise ExperimentConfigError(
                        f"{where}.overrides.{key}: set per seed by `seeds:` ({list(run_seeds)});"
                        f" remove it, or give the run `seeds: null` to train it once with "
                        f"its own seed"
                    )
        levels = None
        if "stages" in item:
            if has_checkpoint:
                raise ExperimentConfigError(
                    f"{where}.stages: a `checkpoint:` run is evaluated as it is, not trained in stages; remove "
                    "`stages` or train the run"
                )
            levels = _difficulty_levels(f"{where}.stages", item["stages"], {**config, **overrides}, train)
        runs.append(
            Run(
                name=name,
                label=_string(f"{where}.label", item.get("label", name)),
                train=train,
                overrides=dict(overrides),
                checkpoint=checkpoint,
                seeds=run_seeds,
                difficulty_levels=levels,
            )
        )
    return tuple(runs)


def _difficulty_levels(where: str, raw: Any, config: Mapping[str, Any], train: Path) -> tuple[int, ...]:
    """The levels of `stages: {by: difficulty, levels: [...]}`, refused unless the run's training reads them."""
    example = "e.g. `stages: {by: difficulty, levels: [0, 1, 2]}` (easy to hard)"
    _mapping(where, raw)
    _only_keys(where, raw, {"by", "levels"})
    by = _required(raw, "by", where, example)
    if by not in STAGED_BY:
        raise ExperimentConfigError(
            f"{where}.by: {by!r} is not what a run can be staged by; use {', '.join(STAGED_BY)} ({example})"
        )
    levels = _required(raw, "levels", where, example)
    if (
        not isinstance(levels, list)
        or not levels
        or not all(isinstance(level, int) and not isinstance(level, bool) and level >= 0 for level in levels)
        or len(set(levels)) != len(levels)
    ):
        raise ExperimentConfigError(
            f"{where}.levels: list the `difficulty` levels to train on, one stage each in that order: distinct "
            f"integers >= 0, at least one ({example}), got {levels!r}"
        )
    if config.get("stage") != "ue_dpo":
        raise ExperimentConfigError(
            f"{where}: the run trains with `stage: {config.get('stage')}` ({train.name}), which does not read "
            "`ue_difficulty`, the key each stage keeps its level's rows with; train it with `stage: ue_dpo` "
            "(`ue_weighting: uniform` is DPO)"
        )
    if "ue_difficulty" in config:
        raise ExperimentConfigError(
            f"{where}: `ue_difficulty` is set per stage by `stages:`; remove it from {train.name} or the overrides"
        )
    finetuning_type = config.get("finetuning_type", "lora")  # LLaMA-Factory 0.9.5's default
    if finetuning_type not in ("lora", "full", "freeze"):
        raise ExperimentConfigError(
            f"{where}: a run trained in stages continues a LoRA adapter or full or freeze-tuned weights, not "
            f"`finetuning_type: {finetuning_type}`; use lora, full or freeze"
        )
    if finetuning_type != "lora" and config.get("adapter_name_or_path"):
        raise ExperimentConfigError(
            f"{where}: `adapter_name_or_path` with `finetuning_type: {finetuning_type}`: each stage after the first "
            "starts from the previous stage's weights, which do not hold the adapter; merge it into the model first "
            "(llamafactory-cli export) and give that model as model_name_or_path"
        )
    return tuple(levels)


TASK_ENTRY_KEYS = {"name", "gen_kwargs", "limit", "batch_size"}
EVALUATION_KEYS = {
    "tasks",
    "gen_kwargs",
    "limit",
    "batch_size",
    "model",
    "model_args",
    "seed",
    "env",
    "launcher",
    "metrics",
    "server",
}


def _parse_evaluation(raw: Any) -> Evaluation:
    if raw is None:
        raise ExperimentConfigError(
            "the experiment: `evaluation` is missing; add `evaluation: {tasks: [...], model: ue_dpo_hf}`"
        )
    _mapping("evaluation", raw)
    _only_keys("evaluation", raw, EVALUATION_KEYS)
    for key in ("model_args", "gen_kwargs", "env", "metrics"):
        _mapping(f"evaluation.{key}", raw.get(key, {}))
    if "pretrained" in raw.get("model_args", {}):
        raise ExperimentConfigError(
            "evaluation.model_args.pretrained: set by `ue-dpo run` to each run's model; "
            "remove it (use `checkpoint:` in a run to evaluate a given model)"
        )
    for key in TRAINING_PROMPT_KEYS:
        if key in raw.get("model_args", {}):
            raise ExperimentConfigError(
                f"evaluation.model_args.{key}: set by `ue-dpo run` to each trained run's training value (its "
                f"config's `{key}`, else LLaMA-Factory's default), so that evaluation encodes prompts as training "
                f"did; a `checkpoint:` run is read with its model family's template and LLaMA-Factory's defaults. "
                f"Remove it"
            )
    _check_lmms_eval_values("evaluation.model_args", raw.get("model_args", {}))
    server = _parse_server(raw.get("server"))
    model = raw.get("model", SERVER_MODEL if server is not None else UE_DPO_HF)
    gen_kwargs = _gen_kwargs("evaluation.gen_kwargs", raw.get("gen_kwargs", {}), model)
    batch_size = _batch_size("evaluation.batch_size", raw.get("batch_size", 1))
    limit = _limit("evaluation.limit", raw.get("limit"))
    protocols: dict[str, tuple[list[str], dict[str, Any], int | None, int]] = {}
    for name, entry in _task_entries(raw.get("tasks")):
        where = f"evaluation.tasks.{name}"
        settings = (
            {**gen_kwargs, **_gen_kwargs(f"{where}.gen_kwargs", entry.get("gen_kwargs", {}), model)},
            _limit(f"{where}.limit", entry["limit"]) if "limit" in entry else limit,
            _batch_size(f"{where}.batch_size", entry.get("batch_size", batch_size)),
        )
        key = digest(settings)
        protocols.setdefault(key, ([], *settings))[0].append(name)
    launcher = raw.get("launcher", ["lmms-eval"])
    if isinstance(launcher, str):
        launcher = launcher.split()
    if not isinstance(launcher, list) or not launcher or not all(isinstance(part, str) for part in launcher):
        raise ExperimentConfigError(
            "evaluation.launcher: the command that starts lmms-eval as a list, e.g. "
            "`[lmms-eval]` or `[accelerate, launch, --num_processes=8, -m, lmms_eval]`"
        )
    metrics = {}
    for task, names in raw.get("metrics", {}).items():
        if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
            raise ExperimentConfigError(
                f"evaluation.metrics.{task}: list the metric names to tabulate, e.g. `[chair_s, chair_i]`"
            )
        metrics[task] = tuple(names)
    set_by_runner = sorted({"model", "base_url", "api_key"} & set(raw.get("model_args", {})))
    if server is not None and set_by_runner:
        raise ExperimentConfigError(
            f"evaluation.model_args: {set_by_runner} are set by `ue-dpo run` for each served "
            f"run (its model folder and server); remove them"
        )
    not_served = sorted(set(raw.get("model_args", {})) - set(SERVED_MODEL_ARGS))
    if server is not None and not_served:
        raise ExperimentConfigError(
            f"evaluation.model_args: {not_served} would be ignored: a served run is evaluated by lmms-eval's "
            f"`{SERVER_MODEL}` model, which takes none of them (the server loads the model: set the device and dtype "
            f"in evaluation.server.command, e.g. `vllm serve {{model}} --dtype bfloat16 --port {{port}}`); remove "
            f"them, or drop evaluation.server to evaluate in-process"
        )
    if server is not None and model != SERVER_MODEL:
        raise ExperimentConfigError(
            f"evaluation.model: {model!r} with evaluation.server; a served run is evaluated "
            f"by lmms-eval's `{SERVER_MODEL}` model, so drop `model` or set it to "
            f"{SERVER_MODEL}"
        )
    return Evaluation(
        tasks=tuple(name for tasks, *_ in protocols.values() for name in tasks),
        protocols=tuple(Protocol(tuple(tasks), *settings) for tasks, *settings in protocols.values()),
        model=_string("evaluation.model", model),
        server=server,
        model_args=dict(raw.get("model_args", {})),
        seed=_eval_seed(raw.get("seed", list(DEFAULT_EVAL_SEED))),
        env={str(key): str(value) for key, value in raw.get("env", {}).items()},
        launcher=tuple(launcher),
        metrics=metrics,
    )


def _parse_server(raw: Any) -> Server | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = {"command": raw}
    _mapping("evaluation.server", raw)
    _only_keys("evaluation.server", raw, {item.name for item in dataclasses.fields(Server)})
    command = raw.get("command")
    if not isinstance(command, str) or "{model}" not in command:
        raise ExperimentConfigError(
            f"evaluation.server.command: {command!r} must be a command template with "
            f"{{model}} (the model folder to serve) and {{port}}, e.g. "
            f"`vllm serve {{model}} --port {{port}}`"
        )
    if "{port}" not in command:
        raise ExperimentConfigError(
            f"evaluation.server.command: {command!r} has no {{port}}; `ue-dpo run` picks a "
            f"free loopback port and the server must listen on it, e.g. "
            f"`vllm serve {{model}} --port {{port}}`"
        )
    for key in ("concurrency", "health_timeout_s", "request_timeout_s"):
        value = raw.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ExperimentConfigError(f"evaluation.server.{key}: must be a positive integer, got {value!r}")
    merge_dtype = raw.get("merge_dtype", "auto")
    if merge_dtype not in MERGE_DTYPES:
        raise ExperimentConfigError(
            f"evaluation.server.merge_dtype: {merge_dtype!r} is not one of "
            f"{', '.join(MERGE_DTYPES)} (llamafactory-cli export's infer_dtype)"
        )
    return Server(**raw)


def _task_entries(raw: Any) -> list[tuple[str, dict[str, Any]]]:
    """(name, its own settings) of each `evaluation.tasks` entry: a name, or `{name, gen_kwargs, limit, batch_size}`."""
    if isinstance(raw, str):
        raw = [task.strip() for task in raw.split(",")]
    if not isinstance(raw, list) or not raw:
        raise ExperimentConfigError(
            "evaluation.tasks: list the lmms-eval tasks, e.g. `tasks: [object_halbench, mmhal_bench, amber]`"
        )
    entries = []
    for index, entry in enumerate(raw):
        where = f"evaluation.tasks[{index}]"
        if isinstance(entry, dict):
            _only_keys(where, entry, TASK_ENTRY_KEYS)
            name = _string(f"{where}.name", _required(entry, "name", where, "the lmms-eval task, e.g. `name: amber`"))
        else:
            name, entry = _string(where, entry), {}
        if name in (seen for seen, _ in entries):
            raise ExperimentConfigError(
                f"{where}: task {name!r} is listed twice; list each task once, with its "
                f"own gen_kwargs, limit and batch_size in one entry"
            )
        entries.append((name, entry))
    return entries


def _gen_kwargs(where: str, raw: Any, model: Any) -> dict[str, Any]:
    _mapping(where, raw)
    _check_lmms_eval_values(where, raw)
    read = GENERATION_KWARGS.get(model) if isinstance(model, str) else None
    for name in raw:
        if read is not None and name not in read:
            served = " (a served run)" if model == SERVED_MODEL else ""
            raise ExperimentConfigError(
                f"{where}.{name}: lmms-eval model {model}{served} does not read this "
                f"generation kwarg; it reads {', '.join(read)}. Remove it or fix its name"
            )
    return dict(raw)


def _check_lmms_eval_values(where: str, raw: Mapping[str, Any]) -> None:
    for name, value in raw.items():
        if "," in str(value) or "=" in str(value):
            raise ExperimentConfigError(
                f"{where}.{name}: {value!r} contains ',' or '=', which lmms-eval's `k=v,k=v` syntax cannot carry"
            )


def _batch_size(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ExperimentConfigError(f"{where}: must be a positive integer, got {value!r}")
    return value


def _limit(where: str, value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ExperimentConfigError(
            f"{where}: must be a positive integer (items per task) or null for all, got {value!r}"
        )
    return value


def _eval_seed(raw: Any) -> tuple[int, int, int, int]:
    seeds = [raw] * 4 if isinstance(raw, int) and not isinstance(raw, bool) else raw
    if (
        not isinstance(seeds, list)
        or len(seeds) != 4
        or not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in seeds)
    ):
        raise ExperimentConfigError(
            f"evaluation.seed: one integer or four (python, numpy, torch, few-shot), e.g. "
            f"`seed: {list(DEFAULT_EVAL_SEED)}`; got {raw!r}"
        )
    return tuple(seeds)


def _parse_judge(raw: Any) -> Judge:
    if raw is None:
        return Judge()
    _mapping("judge", raw)
    _only_keys("judge", raw, {item.name for item in dataclasses.fields(Judge)} | {"api_key"})
    if "api_key" in raw:
        raise ExperimentConfigError(
            "judge.api_key: keys never go in experiment files (they are recorded in "
            "results); export OPENAI_API_KEY instead"
        )
    if not isinstance(raw.get("allow_failures", False), bool):
        raise ExperimentConfigError("judge.allow_failures: must be true or false")
    return Judge(
        **{
            key: value if key == "allow_failures" else _string(f"judge.{key}", value)
            for key, value in raw.items()
            if value is not None
        }
    )


def _parse_reported(raw: Any) -> tuple[ReportedRow, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ExperimentConfigError("reported: a list of rows `{label, source, metrics: {task: {metric: value}}}`")
    rows = []
    for index, item in enumerate(raw):
        where = f"reported[{index}]"
        _mapping(where, item)
        _only_keys(where, item, {"label", "source", "metrics", "judge"})
        label = _string(f"{where}.label", _required(item, "label", where, "the row's name, e.g. `UE-DPO (paper)`"))
        source = _string(
            f"{where}.source", _required(item, "source", where, "where the numbers come from, e.g. `paper, Table 1`")
        )
        metrics = _required(item, "metrics", where, "`metrics: {object_halbench: {chair_s: 5.1}}`")
        _mapping(f"{where}.metrics", metrics)
        for task, values in metrics.items():
            _mapping(f"{where}.metrics.{task}", values)
            for metric, value in values.items():
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ExperimentConfigError(f"{where}.metrics.{task}.{metric}: must be a number, got {value!r}")
        judge = _string(f"{where}.judge", item["judge"]) if item.get("judge") is not None else None
        judged = sorted(set(metrics) & set(JUDGED_TASKS))
        if judged and judge is None:
            raise ExperimentConfigError(
                f"{where}.judge: the row reports {judged}, which an LLM judge scores; name the "
                f"judge model its numbers come from, e.g. `judge: gpt-4-1106-preview`"
            )
        rows.append(
            ReportedRow(
                label=label,
                source=source,
                judge=judge,
                metrics={
                    task: {metric: float(value) for metric, value in values.items()} for task, values in metrics.items()
                },
            )
        )
    return tuple(rows)


def _check_reported_judges(experiment: Experiment) -> None:
    """A reported row judged by another model than ours is not comparable with the measured rows."""
    for index, row in enumerate(experiment.reported):
        if row.judge is not None and row.judge != experiment.judge.model:
            raise ExperimentConfigError(
                f"reported[{index}].judge: {row.label!r} was judged by {row.judge}, but this experiment's judge.model "
                "is "
                f"{experiment.judge.model or 'not set'}; ratings of different judges are not comparable: judge the "
                "runs "
                f"with {row.judge} (judge.model) or drop the row"
            )


def references(value: Any) -> list[str]:
    """The `${...}` names inside a (nested) value."""
    if isinstance(value, str):
        return REFERENCE.findall(value)
    if isinstance(value, dict):
        return [name for item in value.values() for name in references(item)]
    if isinstance(value, list | tuple):
        return [name for item in value for name in references(item)]
    return []


def _check_references(experiment: Experiment) -> None:
    earlier: list[str] = []
    for run in experiment.runs:
        for name in references([run.overrides, run.checkpoint]):
            _check_reference(name, f"runs.{run.name}", experiment, earlier)
            if name.startswith("runs."):
                _check_seeds_of_reference(run, experiment.run(name.removeprefix("runs.")))
        earlier.append(run.name)
    for key in ("model_args", "env"):
        for name in references(getattr(experiment.evaluation, key)):
            if name.startswith("runs."):
                raise ExperimentConfigError(
                    f"evaluation.{key}: ${{{name}}} cannot be used here; each run is "
                    f"evaluated with its own model as `pretrained`"
                )
            _check_reference(name, f"evaluation.{key}", experiment, earlier)


def _check_seeds_of_reference(run: Run, target: Run) -> None:
    """`${runs.TARGET}` in `run`: a target trained per seed gives each seed of `run` its model of that seed."""
    if target.seeds is None:
        return
    if run.seeds is None:
        raise ExperimentConfigError(
            f"runs.{run.name}: ${{runs.{target.name}}} has one model per seed "
            f"({list(target.seeds)}) but {run.name} is one model; train {run.name} with "
            f"`seeds:` among those, or give {target.name} `seeds: null`"
        )
    missing = [seed for seed in run.seeds if seed not in target.seeds]
    if missing:
        raise ExperimentConfigError(
            f"runs.{run.name}.seeds: ${{runs.{target.name}}} has no model of seed(s) "
            f"{missing} ({target.name} is trained with seeds {list(target.seeds)}); use "
            f"seeds that {target.name} has, or give {target.name} `seeds: null`"
        )


def _check_reference(name: str, where: str, experiment: Experiment, earlier: list[str]) -> None:
    if name == "output":
        return
    if name.startswith("synthetic."):
        if experiment.synthetic is None:
            raise ExperimentConfigError(f"{where}: ${{{name}}} needs a `synthetic:` block in the experiment file")
        if name.removeprefix("synthetic.") not in SYNTHETIC_PATHS:
            raise ExperimentConfigError(
                f"{where}: ${{{name}}} is unknown; use one of "
                f"{', '.join('${synthetic.' + path + '}' for path in SYNTHETIC_PATHS)}"
            )
        return
    if name.startswith("runs."):
        target = name.removeprefix("runs.")
        if target not in earlier:
            raise ExperimentConfigError(
                f"{where}: ${{{name}}} must name a run listed before it; earlier runs: {earlier or 'none'}"
            )
        return
    raise ExperimentConfigError(
        f"{where}: ${{{name}}} is unknown; use ${{output}}, ${{synthetic.model}}, "
        f"${{synthetic.data}}, ${{synthetic.eval}} or ${{runs.NAME}}"
    )


def substitute(value: Any, paths: Mapping[str, str]) -> Any:
    """`value` with every `${name}` replaced by paths[name] (names were checked when the file was parsed)."""
    if isinstance(value, str):
        return REFERENCE.sub(lambda match: paths[match.group(1)], value)
    if isinstance(value, dict):
        return {key: substitute(item, paths) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, paths) for item in value]
    return value


def _required(raw: Mapping[str, Any], key: str, where: str, example: str) -> Any:
    if raw.get(key) is None:
        raise ExperimentConfigError(f"{where}: `{key}` is missing; add {example}")
    return raw[key]


def _mapping(where: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise ExperimentConfigError(f"{where}: must be a mapping (key: value), got {type(value).__name__}")


def _string(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ExperimentConfigError(f"{where}: must be a non-empty string, got {value!r}")
    return value


def _only_keys(where: str, raw: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ExperimentConfigError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(sorted(allowed))}")
