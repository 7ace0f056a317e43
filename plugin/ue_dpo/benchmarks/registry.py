"""The benchmarks this package scores: one `Benchmark` descriptor per lmms-eval task, the one place where a
benchmark is registered.

A descriptor holds what varies between benchmarks: the aggregation of its per-item records (the function the
lmms-eval task, `ue-dpo score` and `ue-dpo compare` all use), the metrics that `ue-dpo compare` recomputes on
paired resamples, whether an LLM judge scores it, how an empty response counts, and the folders its data comes
from. Built from it: the paired-comparison tables (`ue_dpo.benchmarks.paired_comparison`), the `ue-dpo score`
subcommands' dispatch and empty-response notes (`ue_dpo.commands.score`), the judged tasks of experiment files
(`ue_dpo.experiment.config`) and the data variables of the lmms-eval adapters (`ue_dpo.evaluation`).

Adding a benchmark: its metric module here in `benchmarks/`, its descriptor below, its task YAML in `eval_tasks/`
and a thin adapter in `evaluation/` whose aggregations call the descriptor's metric module.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ue_dpo.benchmarks.amber import amber_metrics
from ue_dpo.benchmarks.chair import CHAIR_METRICS
from ue_dpo.benchmarks.mmhal import mmhal_metrics
from ue_dpo.benchmarks.object_halbench import object_halbench_metrics
from ue_dpo.benchmarks.shapes_chair import shapes_chair_metrics

Records = Sequence[Mapping[str, Any]]
Pick = Callable[[Mapping[str, Any]], Any]  # one value out of an aggregation's result
# "always": an LLM judge scores every item; "optional": only with a setting that asks for one (Object-HalBench's
# gpt extractor); "never": no judge is involved
Judged = Literal["always", "optional", "never"]


def key(name: str) -> Pick:
    """Picks `result[name]`."""
    return lambda result: result[name]


def path(*names: str) -> Pick:
    """Picks `result[names[0]][names[1]]...`."""

    def pick(result: Mapping[str, Any]) -> Any:
        for name in names:
            result = result[name]
        return result

    return pick


@dataclass(frozen=True)
class DataFolder:
    """A folder a benchmark reads, named by the task YAML's `dataset_kwargs: {<key>: DIR}`, else by `env`."""

    key: str
    env: str
    holds: str  # what it holds and where it comes from


@dataclass(frozen=True)
class Benchmark:
    task: str  # the lmms-eval task (eval_tasks/<task>.yaml); a key of its logged samples' file names
    # per-item records (what the task's process_results returns) -> the metrics, with the counts behind them
    aggregate: Callable[[Records], Mapping[str, Any]]
    record_key: str  # a metric name under which each logged sample holds the item's record
    # lmms-eval metric name -> its value in `aggregate`'s result: what `ue-dpo compare` recomputes per resample
    paired_metrics: Mapping[str, Pick]
    empty_responses: str  # how an empty response counts, as a clause for the note `ue-dpo score` prints
    data: tuple[DataFolder, ...]
    judged: Judged = "never"
    same_in_both_runs: tuple[str, ...] = ()  # record fields two runs must agree on to be compared
    empty_count: Pick | None = None  # the number of empty responses in `aggregate`'s result, where it counts them
    score_command: str | None = None  # `ue-dpo score <command>` scores this benchmark's saved responses

    def data_env(self, key: str) -> str:
        """The environment variable that names the data folder of `dataset_kwargs` key `key`."""
        return next(folder.env for folder in self.data if folder.key == key)


_SHAPES_DATA = DataFolder(
    "data_dir",
    "UE_DPO_SHAPES_EVAL_DIR",
    "held-out shapes images and their ground truth (manifest.json), written by `ue-dpo "
    "shapes-eval --out DIR` or by an experiment's `synthetic:` world",
)
_AMBER_DATA = (
    DataFolder(
        "data_dir",
        "UE_DPO_AMBER_DIR",
        "AMBER's data/ folder (annotations.json, relation.json, safe_words.txt, query/); fetched from GitHub "
        "when not named",
    ),
    DataFolder(
        "image_dir",
        "UE_DPO_AMBER_IMAGE_DIR",
        "the images AMBER_1.jpg ... AMBER_1004.jpg, else <data_dir>/image; AMBER publishes them only as a "
        "Google Drive archive",
    ),
)
_CHAIR_PAIRED = {name: key(name) for name in CHAIR_METRICS}

OBJECT_HALBENCH = Benchmark(
    task="object_halbench",
    aggregate=object_halbench_metrics,
    record_key="chair_s",
    paired_metrics=_CHAIR_PAIRED,
    empty_responses="the official code scores an empty answer as one that mentions no object (in chair_s_all and "
    "recall, not in chair_s), and so do these numbers",
    data=(
        DataFolder(
            "data_dir",
            "UE_DPO_OBJECT_HALBENCH_DIR",
            "RLAIF-V's question file obj_halbench_300_with_image.jsonl; fetched from GitHub when not named",
        ),
        DataFolder(
            "coco_dir",
            "UE_DPO_COCO_ANNOTATIONS_DIR",
            "the COCO 2014 instances_/captions_ train2014/val2014.json, else <data_dir>/annotations; fetched "
            "from cocodataset.org when neither folder is named",
        ),
    ),
    judged="optional",
    empty_count=key("empty"),
    score_command="object_halbench",
)
SHAPES_CAPTION = Benchmark(
    task="shapes_caption",
    aggregate=shapes_chair_metrics,
    record_key="chair_s",
    paired_metrics={**_CHAIR_PAIRED, "mean_shapes_mentioned": key("mean_shapes_mentioned")},
    empty_responses="an empty caption mentions no shape, so it counts in chair_s_all, recall and "
    "mean_shapes_mentioned, not in chair_s",
    data=(_SHAPES_DATA,),
)
SHAPES_BLIND_SPOTS = Benchmark(
    task="shapes_blind_spots",
    aggregate=shapes_chair_metrics,
    record_key="chair_s",
    paired_metrics={
        **_CHAIR_PAIRED,
        "mean_shapes_mentioned": key("mean_shapes_mentioned"),
        "faint_recall": key("faint_recall"),
        "faint_noun_accuracy": key("faint_noun_accuracy"),
    },
    empty_responses="an empty caption mentions no shape, so it counts in chair_s_all, recall, mean_shapes_mentioned "
    "and faint_recall, not in chair_s nor faint_noun_accuracy",
    data=(
        DataFolder(
            _SHAPES_DATA.key,
            _SHAPES_DATA.env,
            "held-out images of a blind-spot world, whose manifest.json lists each image's faint shapes, "
            "written for an experiment's `synthetic: {world: blind_spots}`",
        ),
    ),
)
MMHAL_BENCH = Benchmark(
    task="mmhal_bench",
    aggregate=mmhal_metrics,
    record_key="score",
    paired_metrics={name: key(name) for name in ("score", "hallucination_rate", "informativeness")},
    empty_responses="the official script sends empty answers to the judge like any other, and so did this run",
    data=(
        DataFolder(
            "data_dir",
            "UE_DPO_MMHAL_DIR",
            "the official response_template.json and images/; fetched from the Hugging Face dataset "
            "Shengcao1006/MMHal-Bench when not named",
        ),
    ),
    judged="always",
    same_in_both_runs=("judge_model",),
    empty_count=key("empty"),
    score_command="mmhal_bench",
)
AMBER_GENERATIVE = Benchmark(
    task="amber_generative",
    aggregate=amber_metrics,
    record_key="chair",
    paired_metrics={name.lower(): path("generative", name) for name in ("CHAIR", "Cover", "Hal", "Cog")},
    empty_responses="AMBER's code scores an empty caption as one with no objects (hallucination-free in Hal, nothing "
    "covered in Cover and Cog), and so do these numbers",
    data=_AMBER_DATA,
    empty_count=path("generative", "empty"),
    score_command="amber",
)
AMBER_DISCRIMINATIVE = Benchmark(
    task="amber_discriminative",
    aggregate=amber_metrics,
    record_key="accuracy",
    paired_metrics={
        name.lower(): path("discriminative", "overall", name) for name in ("Accuracy", "Precision", "Recall", "F1")
    },
    empty_responses="an empty yes/no answer is counted in `unparsed`",
    data=_AMBER_DATA,
    score_command="amber",
)

BENCHMARKS: Mapping[str, Benchmark] = {
    benchmark.task: benchmark
    for benchmark in (
        OBJECT_HALBENCH,
        SHAPES_CAPTION,
        SHAPES_BLIND_SPOTS,
        MMHAL_BENCH,
        AMBER_GENERATIVE,
        AMBER_DISCRIMINATIVE,
    )
}


def judged_tasks() -> tuple[str, ...]:
    """The tasks an LLM judge scores whatever their settings."""
    return tuple(task for task, benchmark in BENCHMARKS.items() if benchmark.judged == "always")


def paired_tasks() -> dict[str, Benchmark]:
    """The tasks `ue-dpo compare` compares item by item."""
    return {task: benchmark for task, benchmark in BENCHMARKS.items() if benchmark.paired_metrics}


def score_commands() -> dict[str, tuple[Benchmark, ...]]:
    """`ue-dpo score` subcommand -> the benchmarks whose saved responses it scores, in registry order."""
    commands: dict[str, tuple[Benchmark, ...]] = {}
    for benchmark in BENCHMARKS.values():
        if benchmark.score_command is not None:
            commands[benchmark.score_command] = (*commands.get(benchmark.score_command, ()), benchmark)
    return commands
