"""The experiment file of `ue-dpo run`: its schema, validation and `${...}` references.

Paths of training configs (`runs[].train`) are relative to the experiment file; every other path
(`output`, `checkpoint`, paths inside overrides) is used as written, relative to the current
directory, as `llamafactory-cli` and `lmms-eval` treat paths.

String values in `overrides`, `checkpoint`, `evaluation.model_args` and `evaluation.env` may name
`${output}` (the output folder), `${synthetic.model}`, `${synthetic.data}`, `${synthetic.eval}`
(the embedded shapes world, when the file has a `synthetic:` block) and `${runs.NAME}` (the model of an
earlier run: its training output dir or its checkpoint). In a run trained once per seed (`seeds:`),
`${runs.NAME}` of a run that is also trained per seed is NAME's model of the same seed.
"""

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
REFERENCE = re.compile(r"\$\{([^}]*)\}")
SYNTHETIC_PATHS = ("model", "data", "eval")
SYNTHETIC_ARCHITECTURES = ("llava", "qwen2_vl")
# lmms-eval's default `--seed`: python, numpy, torch and few-shot sampling seeds
DEFAULT_EVAL_SEED = (0, 1234, 1234, 1234)
SEED_SEPARATOR = "@seed"  # `dpo@seed3`: run dpo trained with seed 3 (not a character of run names, so never ambiguous)


class ExperimentConfigError(ValueError):
    """A bad experiment file; the message names the key and the fix."""


@dataclass(frozen=True)
class SyntheticWorld:
    """The embedded default's world, built under `<output>/synthetic`: a tiny model, shapes data, held-out images."""

    arch: str = "qwen2_vl"
    seed: int = 0
    image_size: int = 56
    sft_examples: int = 512
    sft_noisy_share: float = 0.0  # share of warm-up captions that name one absent shape (noisy web captions)
    preference_pairs: int = 256
    eval_images: int = 64


@dataclass(frozen=True)
class Run:
    name: str
    label: str
    train: Path | None = None  # a LLaMA-Factory training YAML
    overrides: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None  # evaluate this model as it is
    seeds: tuple[int, ...] | None = None  # train and evaluate once per seed; None: once, with the config's seed

    @property
    def each_seed(self) -> tuple[int | None, ...]:
        """The seeds this run is trained and evaluated with; (None,) for a run trained or evaluated once."""
        return (None,) if self.seeds is None else self.seeds


def instance_name(run: str, seed: int | None) -> str:
    """What names one training and evaluation of a run (stage markers, `runs/` and `evals/` folders)."""
    return run if seed is None else f"{run}{SEED_SEPARATOR}{seed}"


@dataclass(frozen=True)
class Evaluation:
    tasks: tuple[str, ...]
    model: str = "ue_dpo_hf"
    model_args: dict[str, Any] = field(default_factory=dict)  # `pretrained` is each run's model
    gen_kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 1
    limit: int | None = None
    seed: tuple[int, int, int, int] = DEFAULT_EVAL_SEED
    env: dict[str, str] = field(default_factory=dict)
    launcher: tuple[str, ...] = ("lmms-eval",)
    metrics: dict[str, tuple[str, ...]] = field(default_factory=dict)  # columns per task; default: all


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

    def run(self, name: str) -> Run:
        return next(run for run in self.runs if run.name == name)


def load_experiment(path: Path, settings: list[str] = (), output: Path | None = None) -> Experiment:
    """Read an experiment file, apply `--set key.path=value` settings, and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ExperimentConfigError(f"experiment file {path} does not exist; pass the path of an experiment YAML "
                                    f"(see configs/experiments/)")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ExperimentConfigError(f"{path}: an experiment file is a YAML mapping with `runs:` and `evaluation:`")
    for setting in settings:
        apply_setting(raw, setting)
    if output is not None:
        raw["output"] = str(output)
    return parse_experiment(raw, base_dir=path.resolve().parent, source=path.resolve())


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
                raise ExperimentConfigError(f"--set {setting!r}: {where} has no entry named {key!r}; names: "
                                            f"{[item.get('name') for item in node if isinstance(item, dict)]}")
            node = matches[0]
        elif isinstance(node, dict):
            node = node.setdefault(key, {})
        if not isinstance(node, dict | list):
            raise ExperimentConfigError(f"--set {setting!r}: {'.'.join(keys[:depth + 1])} is not a mapping")
    if not isinstance(node, dict):
        raise ExperimentConfigError(f"--set {setting!r}: {'.'.join(keys[:-1])} is a list; address an entry by name")
    node[keys[-1]] = yaml.safe_load(value_text)


def parse_experiment(raw: Mapping[str, Any], *, base_dir: Path, source: Path | None = None) -> Experiment:
    _only_keys("the experiment", raw, {"name", "output", "runs", "evaluation", "judge", "synthetic", "reported",
                                        "seeds", "baseline"})
    synthetic = _parse_synthetic(raw.get("synthetic"))
    seeds = None if raw.get("seeds") is None else _seeds("seeds", raw["seeds"])
    runs = _parse_runs(raw.get("runs"), base_dir, seeds)
    evaluation = _parse_evaluation(raw.get("evaluation"))
    experiment = Experiment(
        name=_string("name", raw.get("name", source.stem if source else "experiment")),
        source=source,
        output=Path(_string("output", _required(raw, "output", "the experiment", "a results folder, e.g. "
                                                 "`output: results/my_experiment`"))),
        runs=runs,
        evaluation=evaluation,
        judge=_parse_judge(raw.get("judge")),
        synthetic=synthetic,
        reported=_parse_reported(raw.get("reported")),
        baseline=_parse_baseline(raw.get("baseline"), runs),
        raw=dict(raw),
    )
    _check_references(experiment)
    return experiment


def _seeds(where: str, raw: Any) -> tuple[int, ...]:
    if not isinstance(raw, list) or not raw or not all(
            isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 for seed in raw) \
            or len(set(raw)) != len(raw):
        raise ExperimentConfigError(f"{where}: list distinct non-negative integers, e.g. `seeds: [0, 1, 2, 3, 4]`, "
                                    f"got {raw!r}")
    return tuple(raw)


def _parse_baseline(raw: Any, runs: tuple[Run, ...]) -> str | None:
    if raw is None:
        return None
    names = [run.name for run in runs]
    if raw not in names:
        raise ExperimentConfigError(f"baseline: {raw!r} names no run; name the run the others are compared with, "
                                    f"one of {names}")
    baseline = next(run for run in runs if run.name == raw)
    for run in runs:
        if run.seeds is not None and baseline.seeds is not None and not set(run.seeds) & set(baseline.seeds):
            raise ExperimentConfigError(f"runs.{run.name}.seeds: {list(run.seeds)} shares no seed with the baseline "
                                        f"{raw!r} ({list(baseline.seeds)}), so the two cannot be paired by seed; "
                                        f"train both with some seeds in common")
    return raw


def _parse_synthetic(raw: Any) -> SyntheticWorld | None:
    if raw is None:
        return None
    _mapping("synthetic", raw)
    fields = {item.name for item in dataclasses.fields(SyntheticWorld)}
    _only_keys("synthetic", raw, fields)
    world = SyntheticWorld(**raw)
    if world.arch not in SYNTHETIC_ARCHITECTURES:
        raise ExperimentConfigError(f"synthetic.arch: {world.arch!r} is not a tiny model architecture; use one of "
                                    f"{', '.join(SYNTHETIC_ARCHITECTURES)}")
    noisy_share = world.sft_noisy_share
    if isinstance(noisy_share, bool) or not isinstance(noisy_share, int | float) or not 0 <= noisy_share <= 1:
        raise ExperimentConfigError(f"synthetic.sft_noisy_share: must be a number in [0, 1], got {noisy_share!r}")
    for name in fields - {"arch", "sft_noisy_share"}:
        value = getattr(world, name)
        minimum = 0 if name == "seed" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ExperimentConfigError(f"synthetic.{name}: must be an integer >= {minimum}, got {value!r}")
    return world


def _parse_runs(raw: Any, base_dir: Path, seeds: tuple[int, ...] | None) -> tuple[Run, ...]:
    if not isinstance(raw, list) or not raw:
        raise ExperimentConfigError("runs: list the runs to compare, each with `name` and either `train: "
                                    "<LLaMA-Factory YAML>` (plus optional `overrides`) or `checkpoint: <model>`")
    runs, names = [], set()
    for index, item in enumerate(raw):
        where = f"runs[{index}]"
        _mapping(where, item)
        _only_keys(where, item, {"name", "label", "train", "overrides", "checkpoint", "seeds"})
        name = _string(f"{where}.name", _required(item, "name", where, "a short unique name, e.g. `name: ue_dpo`"))
        if not RUN_NAME.match(name):
            raise ExperimentConfigError(f"{where}.name: {name!r} must be letters, digits, '_', '-' or '.', starting "
                                        f"with a letter or digit (it names folders)")
        if name in names:
            raise ExperimentConfigError(f"{where}.name: {name!r} is used twice; give each run its own name")
        names.add(name)
        where = f"runs.{name}"
        has_train, has_checkpoint = "train" in item, "checkpoint" in item
        if has_train == has_checkpoint:
            raise ExperimentConfigError(f"{where}: give exactly one of `train: <LLaMA-Factory YAML>` (train, then "
                                        f"evaluate) or `checkpoint: <model dir or hub id>` (evaluate only)")
        overrides = item.get("overrides", {})
        _mapping(f"{where}.overrides", overrides)
        if has_checkpoint and overrides:
            raise ExperimentConfigError(f"{where}.overrides: only a `train:` run has overrides; drop them or train")
        for key in ("output_dir", "resume_from_checkpoint"):
            if key in overrides:
                raise ExperimentConfigError(f"{where}.overrides.{key}: set by `ue-dpo run` (the run trains into "
                                            f"<output>/runs/{name} and resumes its last checkpoint); remove it")
        train = None
        if has_train:
            train = base_dir / _string(f"{where}.train", item["train"])
            if not train.is_file():
                raise ExperimentConfigError(f"{where}.train: {train} does not exist (paths of training configs are "
                                            f"relative to the experiment file)")
            config = yaml.safe_load(train.read_text())
            if not isinstance(config, dict):
                raise ExperimentConfigError(f"{where}.train: {train} is not a LLaMA-Factory YAML mapping")
            if not config.get("do_train", False) and not overrides.get("do_train", False):
                raise ExperimentConfigError(f"{where}.train: {train} does not set `do_train: true`; a `train:` run "
                                            f"must train (use `checkpoint:` to evaluate a model as it is)")
        checkpoint = _string(f"{where}.checkpoint", item["checkpoint"]) if has_checkpoint else None
        run_seeds = None
        if has_checkpoint and "seeds" in item:
            raise ExperimentConfigError(f"{where}.seeds: a `checkpoint:` run is not trained and its greedy evaluation "
                                        f"does not depend on a seed, so it is evaluated once; remove `seeds`")
        if has_train:
            run_seeds = _seeds(f"{where}.seeds", item["seeds"]) if item.get("seeds") is not None else \
                (None if "seeds" in item else seeds)
        if run_seeds is not None:
            for key in ("seed", "ue_seed"):
                if key in overrides:
                    raise ExperimentConfigError(f"{where}.overrides.{key}: set per seed by `seeds:` ({list(run_seeds)});"
                                                f" remove it, or give the run `seeds: null` to train it once with "
                                                f"its own seed")
        runs.append(Run(name=name, label=_string(f"{where}.label", item.get("label", name)), train=train,
                        overrides=dict(overrides), checkpoint=checkpoint, seeds=run_seeds))
    return tuple(runs)


def _parse_evaluation(raw: Any) -> Evaluation:
    if raw is None:
        raise ExperimentConfigError("the experiment: `evaluation` is missing; add `evaluation: {tasks: [...], "
                                    "model: ue_dpo_hf}`")
    _mapping("evaluation", raw)
    _only_keys("evaluation", raw, {item.name for item in dataclasses.fields(Evaluation)})
    tasks = raw.get("tasks")
    if isinstance(tasks, str):
        tasks = [task.strip() for task in tasks.split(",")]
    if not isinstance(tasks, list) or not tasks or not all(isinstance(task, str) and task for task in tasks):
        raise ExperimentConfigError("evaluation.tasks: list the lmms-eval tasks, e.g. `tasks: [object_halbench, "
                                    "mmhal_bench, amber]`")
    for key in ("model_args", "gen_kwargs", "env", "metrics"):
        _mapping(f"evaluation.{key}", raw.get(key, {}))
    if "pretrained" in raw.get("model_args", {}):
        raise ExperimentConfigError("evaluation.model_args.pretrained: set by `ue-dpo run` to each run's model; "
                                    "remove it (use `checkpoint:` in a run to evaluate a given model)")
    for key in ("model_args", "gen_kwargs"):
        for name, value in raw.get(key, {}).items():
            if "," in str(value) or "=" in str(value):
                raise ExperimentConfigError(f"evaluation.{key}.{name}: {value!r} contains ',' or '=', which "
                                            f"lmms-eval's `k=v,k=v` syntax cannot carry")
    batch_size = raw.get("batch_size", 1)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ExperimentConfigError(f"evaluation.batch_size: must be a positive integer, got {batch_size!r}")
    limit = raw.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ExperimentConfigError(f"evaluation.limit: must be a positive integer (items per task) or null for "
                                    f"all, got {limit!r}")
    launcher = raw.get("launcher", ["lmms-eval"])
    if isinstance(launcher, str):
        launcher = launcher.split()
    if not isinstance(launcher, list) or not launcher or not all(isinstance(part, str) for part in launcher):
        raise ExperimentConfigError("evaluation.launcher: the command that starts lmms-eval as a list, e.g. "
                                    "`[lmms-eval]` or `[accelerate, launch, --num_processes=8, -m, lmms_eval]`")
    metrics = {}
    for task, names in raw.get("metrics", {}).items():
        if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
            raise ExperimentConfigError(f"evaluation.metrics.{task}: list the metric names to tabulate, e.g. "
                                        f"`[chair_s, chair_i]`")
        metrics[task] = tuple(names)
    return Evaluation(
        tasks=tuple(tasks), model=_string("evaluation.model", raw.get("model", "ue_dpo_hf")),
        model_args=dict(raw.get("model_args", {})), gen_kwargs=dict(raw.get("gen_kwargs", {})),
        batch_size=batch_size, limit=limit, seed=_eval_seed(raw.get("seed", list(DEFAULT_EVAL_SEED))),
        env={str(key): str(value) for key, value in raw.get("env", {}).items()}, launcher=tuple(launcher),
        metrics=metrics,
    )


def _eval_seed(raw: Any) -> tuple[int, int, int, int]:
    seeds = [raw] * 4 if isinstance(raw, int) and not isinstance(raw, bool) else raw
    if not isinstance(seeds, list) or len(seeds) != 4 or not all(
            isinstance(seed, int) and not isinstance(seed, bool) for seed in seeds):
        raise ExperimentConfigError(f"evaluation.seed: one integer or four (python, numpy, torch, few-shot), e.g. "
                                    f"`seed: {list(DEFAULT_EVAL_SEED)}`; got {raw!r}")
    return tuple(seeds)


def _parse_judge(raw: Any) -> Judge:
    if raw is None:
        return Judge()
    _mapping("judge", raw)
    _only_keys("judge", raw, {item.name for item in dataclasses.fields(Judge)} | {"api_key"})
    if "api_key" in raw:
        raise ExperimentConfigError("judge.api_key: keys never go in experiment files (they are recorded in "
                                    "results); export OPENAI_API_KEY instead")
    if not isinstance(raw.get("allow_failures", False), bool):
        raise ExperimentConfigError("judge.allow_failures: must be true or false")
    return Judge(**{key: value if key == "allow_failures" else _string(f"judge.{key}", value)
                    for key, value in raw.items() if value is not None})


def _parse_reported(raw: Any) -> tuple[ReportedRow, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ExperimentConfigError("reported: a list of rows `{label, source, metrics: {task: {metric: value}}}`")
    rows = []
    for index, item in enumerate(raw):
        where = f"reported[{index}]"
        _mapping(where, item)
        _only_keys(where, item, {"label", "source", "metrics"})
        label = _string(f"{where}.label", _required(item, "label", where, "the row's name, e.g. `UE-DPO (paper)`"))
        source = _string(f"{where}.source", _required(item, "source", where,
                                                      "where the numbers come from, e.g. `paper, Table 1`"))
        metrics = _required(item, "metrics", where, "`metrics: {object_halbench: {chair_s: 5.1}}`")
        _mapping(f"{where}.metrics", metrics)
        for task, values in metrics.items():
            _mapping(f"{where}.metrics.{task}", values)
            for metric, value in values.items():
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ExperimentConfigError(f"{where}.metrics.{task}.{metric}: must be a number, got {value!r}")
        rows.append(ReportedRow(label=label, source=source,
                                metrics={task: {metric: float(value) for metric, value in values.items()}
                                         for task, values in metrics.items()}))
    return tuple(rows)


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
                raise ExperimentConfigError(f"evaluation.{key}: ${{{name}}} cannot be used here; each run is "
                                            f"evaluated with its own model as `pretrained`")
            _check_reference(name, f"evaluation.{key}", experiment, earlier)


def _check_seeds_of_reference(run: Run, target: Run) -> None:
    """`${runs.TARGET}` in `run`: a target trained per seed gives each seed of `run` its model of that seed."""
    if target.seeds is None:
        return
    if run.seeds is None:
        raise ExperimentConfigError(f"runs.{run.name}: ${{runs.{target.name}}} has one model per seed "
                                    f"({list(target.seeds)}) but {run.name} is one model; train {run.name} with "
                                    f"`seeds:` among those, or give {target.name} `seeds: null`")
    missing = [seed for seed in run.seeds if seed not in target.seeds]
    if missing:
        raise ExperimentConfigError(f"runs.{run.name}.seeds: ${{runs.{target.name}}} has no model of seed(s) "
                                    f"{missing} ({target.name} is trained with seeds {list(target.seeds)}); use "
                                    f"seeds that {target.name} has, or give {target.name} `seeds: null`")


def _check_reference(name: str, where: str, experiment: Experiment, earlier: list[str]) -> None:
    if name == "output":
        return
    if name.startswith("synthetic."):
        if experiment.synthetic is None:
            raise ExperimentConfigError(f"{where}: ${{{name}}} needs a `synthetic:` block in the experiment file")
        if name.removeprefix("synthetic.") not in SYNTHETIC_PATHS:
            raise ExperimentConfigError(f"{where}: ${{{name}}} is unknown; use one of "
                                        f"{', '.join('${synthetic.' + path + '}' for path in SYNTHETIC_PATHS)}")
        return
    if name.startswith("runs."):
        target = name.removeprefix("runs.")
        if target not in earlier:
            raise ExperimentConfigError(f"{where}: ${{{name}}} must name a run listed before it; earlier runs: "
                                        f"{earlier or 'none'}")
        return
    raise ExperimentConfigError(f"{where}: ${{{name}}} is unknown; use ${{output}}, ${{synthetic.model}}, "
                                f"${{synthetic.data}}, ${{synthetic.eval}} or ${{runs.NAME}}")


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
