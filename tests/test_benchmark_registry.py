"""The benchmark registry (`ue_dpo.benchmarks.registry`) agrees with the task YAMLs and with what is built from it."""

from pathlib import Path

import pytest
import yaml

from ue_dpo.benchmarks.paired_comparison import PAIRED_TASKS
from ue_dpo.benchmarks.registry import BENCHMARKS, judged_tasks, score_commands
from ue_dpo.commands import score
from ue_dpo.experiment.config import JUDGED_TASKS

EVAL_TASKS = Path(__file__).resolve().parents[1] / "eval_tasks"


class _TaskLoader(yaml.SafeLoader):
    """Reads lmms-eval task YAMLs, keeping each `!function` reference as its text."""


_TaskLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def _task_yaml(task: str) -> dict:
    return yaml.load((EVAL_TASKS / f"{task}.yaml").read_text(encoding="utf-8"), Loader=_TaskLoader)


@pytest.mark.parametrize("task", list(BENCHMARKS))
def test_each_descriptor_names_a_task_yaml_and_its_metrics(task):
    benchmark = BENCHMARKS[task]
    config = _task_yaml(task)
    assert config["task"] == benchmark.task == task
    metrics = {entry["metric"] for entry in config["metric_list"]}
    assert benchmark.record_key in metrics
    assert set(benchmark.paired_metrics) <= metrics
    assert benchmark.data and all(folder.env.startswith("UE_DPO_") for folder in benchmark.data)
    assert benchmark.judged in ("always", "optional", "never")


def test_the_lists_built_from_the_registry():
    assert JUDGED_TASKS == judged_tasks() == ("mmhal_bench",)
    assert list(PAIRED_TASKS) == [
        "object_halbench",
        "shapes_caption",
        "shapes_blind_spots",
        "mmhal_bench",
        "amber_generative",
        "amber_discriminative",
    ]
    scored = {command: [benchmark.task for benchmark in benchmarks] for command, benchmarks in score_commands().items()}
    assert scored == {
        "object_halbench": ["object_halbench"],
        "mmhal_bench": ["mmhal_bench"],
        "amber": ["amber_generative", "amber_discriminative"],
    }
    assert set(score.SCORED) == set(score._COMMANDS)


def test_amber_empty_responses_note_joins_both_tasks_and_counts_the_empty_captions():
    assert score.EMPTY_RESPONSE_SCORING["amber"] == (
        "AMBER's code scores an empty caption as one with no objects (hallucination-free in Hal, nothing covered in "
        "Cover and Cog), and so do these numbers; an empty yes/no answer is counted in `unparsed`"
    )
    result = {"generative": {"empty": 2}, "discriminative": {"overall": {"unparsed": 5}}}
    assert score._empty_responses(result, "amber") == 2
    assert score._empty_responses({"empty": 3}, "mmhal_bench") == 3


def test_the_adapters_read_their_data_folders_from_the_descriptors():
    from ue_dpo.evaluation import amber, coco_ground_truth, mmhal_bench, object_halbench, shapes_caption

    assert (amber.AMBER_DIR_ENV, amber.AMBER_IMAGE_DIR_ENV) == ("UE_DPO_AMBER_DIR", "UE_DPO_AMBER_IMAGE_DIR")
    assert object_halbench.OBJECT_HALBENCH_DIR_ENV == "UE_DPO_OBJECT_HALBENCH_DIR"
    assert coco_ground_truth.COCO_ANNOTATIONS_DIR_ENV == "UE_DPO_COCO_ANNOTATIONS_DIR"
    assert mmhal_bench.MMHAL_DIR_ENV == "UE_DPO_MMHAL_DIR"
    assert shapes_caption.SHAPES_EVAL_DIR_ENV == BENCHMARKS["shapes_blind_spots"].data_env("data_dir")
