"""lmms-eval adapter of `mmhal_bench`; the scoring is `ue_dpo.benchmarks.mmhal`.

Data: a folder holding the official `response_template.json` (the 96 items) and `images/`, where each
item's image is the last path component of its `image_src` (the layout of the Hugging Face dataset
Shengcao1006/MMHal-Bench), named by `dataset_kwargs: {data_dir: DIR}` or `UE_DPO_MMHAL_DIR`; with
neither, those files are fetched from that dataset into the cache directory.

The judge is configured as ue_dpo.evaluation.judge_settings describes; its settings (never the API
key) are recorded under `metadata.judge` of the task's config in the results, and whether unparsed
replies were scored 0 (UE_DPO_JUDGE_UNPARSED_AS_ZERO) under `metadata.judge_unparsed_as_zero`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, Image
from PIL import Image as PILImage

from ue_dpo.benchmarks.judge import JudgeClient
from ue_dpo.benchmarks.mmhal import (
    MMHAL_QUESTION_TYPES,
    check_mmhal_item,
    check_mmhal_unique,
    mmhal_metrics,
    score_mmhal_item,
)
from ue_dpo.benchmarks.registry import MMHAL_BENCH
from ue_dpo.evaluation.data import (
    BenchmarkDataError,
    benchmark_image,
    cache_dir,
    configured_dir,
    offline_variable,
    require_file,
)
from ue_dpo.evaluation.judge_settings import JUDGE_UNPARSED_AS_ZERO_ENV, task_judge, unparsed_as_zero
from ue_dpo.evaluation.local_task import LocalFilesTask

MMHAL_DIR_ENV = MMHAL_BENCH.data_env("data_dir")  # UE_DPO_MMHAL_DIR
MMHAL_REPO_ID = "Shengcao1006/MMHal-Bench"
MMHAL_TEMPLATE_FILE = "response_template.json"
_SOURCE = (
    f"It comes from the Hugging Face dataset {MMHAL_REPO_ID} (response_template.json and images/); put a copy "
    f"in the folder named by {MMHAL_DIR_ENV} (or dataset_kwargs data_dir)."
)


def mmhal_data_dir(dataset_kwargs: Mapping[str, Any] | None) -> Path:
    configured = configured_dir(dataset_kwargs, "data_dir", MMHAL_DIR_ENV)
    if configured is not None:
        return configured
    offline = offline_variable()
    if offline:
        raise BenchmarkDataError(
            f"No MMHal-Bench folder is configured and {offline} is set, so it is not downloaded. {_SOURCE}"
        )
    from huggingface_hub import snapshot_download

    target = cache_dir() / "mmhal_bench"
    snapshot_download(
        repo_id=MMHAL_REPO_ID, repo_type="dataset", allow_patterns=[MMHAL_TEMPLATE_FILE, "images/*"], local_dir=target
    )
    return target


def mmhal_image_name(item: Mapping[str, Any]) -> str:
    return str(item["image_src"]).rstrip("/").rsplit("/", 1)[-1]


def load_mmhal_docs(data_dir: Path) -> list[dict[str, Any]]:
    """The template's items with `question_id` (their position) and `image` (the image's path)."""
    template = require_file(data_dir / MMHAL_TEMPLATE_FILE, "MMHal-Bench template", _SOURCE)
    items = json.loads(template.read_text(encoding="utf-8"))
    if not isinstance(items, list):
        raise BenchmarkDataError(f"{template} must hold the official list of items. {_SOURCE}")
    try:
        check_mmhal_unique([item for item in items if isinstance(item, Mapping) and "question" in item])
    except ValueError as error:
        raise BenchmarkDataError(f"{template}: {error}") from None
    docs = []
    for index, item in enumerate(items):
        check_mmhal_item({**item, "model_answer": ""}, index)
        if "image_src" not in item:
            raise BenchmarkDataError(f"{template}: item {index} lacks image_src. {_SOURCE}")
        image = require_file(
            data_dir / "images" / mmhal_image_name(item), f"MMHal-Bench image of item {index}", _SOURCE
        )
        docs.append(
            {
                "question_id": index,
                "question_type": item["question_type"],
                "question_topic": item.get("question_topic", ""),
                "image_id": item.get("image_id", ""),
                "image_src": item["image_src"],
                "image_content": list(item["image_content"]),
                "question": item["question"],
                "gt_answer": item["gt_answer"],
                "image": str(image),
            }
        )
    return docs


class MMHalBenchTask(LocalFilesTask):
    def load_docs(self, dataset_kwargs: Mapping[str, Any] | None) -> Dataset:
        return Dataset.from_list(load_mmhal_docs(mmhal_data_dir(dataset_kwargs))).cast_column(
            "image", Image(decode=False)
        )

    def bind_settings(self, metadata: dict[str, Any]) -> dict[str, Any]:
        judge = task_judge("mmhal_bench", metadata)
        zero = unparsed_as_zero(metadata)
        metadata.update(judge=judge.config.public_dict(), judge_unparsed_as_zero=zero)
        return {"judge": judge, "unparsed_as_zero": zero}


def mmhal_doc_to_visual(doc: Mapping[str, Any]) -> list[PILImage.Image]:
    return [benchmark_image(doc["image"], f"MMHal-Bench image of item {doc['question_id']}", _SOURCE)]


def mmhal_doc_to_text(doc: Mapping[str, Any], lmms_eval_specific_kwargs: Mapping[str, Any] | None = None) -> str:
    return doc["question"]


MMHAL_METRICS = (
    "score",
    "hallucination_rate",
    "informativeness",
    *(f"score_{kind}" for kind in MMHAL_QUESTION_TYPES),
    "judge_failures",
    "judge_unparsed",
)
_ITEM_KEYS = ("question_type", "question_topic", "image_id", "image_content", "question", "gt_answer")


def mmhal_process_results(
    doc: Mapping[str, Any], results: Sequence[str], *, judge: JudgeClient, unparsed_as_zero: bool = False
) -> dict[str, dict[str, Any]]:
    item = {key: doc[key] for key in _ITEM_KEYS}
    record = score_mmhal_item(
        {**item, "model_answer": results[0]}, judge, unparsed_as_zero=unparsed_as_zero, index=doc["question_id"]
    )
    return {metric: record for metric in MMHAL_METRICS}


def _aggregation(name: str, pick: Callable[[dict[str, Any]], Any]) -> Callable[[Sequence[Mapping[str, Any]]], Any]:
    def aggregate(records: Sequence[Mapping[str, Any]]) -> Any:
        return pick(mmhal_metrics(records, unparsed_fix=f"set {JUDGE_UNPARSED_AS_ZERO_ENV}=1"))

    aggregate.__name__ = name
    return aggregate


def _per_type(question_type: str) -> Callable[[dict[str, Any]], Any]:
    return lambda metrics: metrics["per_type"][question_type]


mmhal_score = _aggregation("mmhal_score", lambda metrics: metrics["score"])
mmhal_hallucination_rate = _aggregation("mmhal_hallucination_rate", lambda metrics: metrics["hallucination_rate"])
mmhal_informativeness = _aggregation("mmhal_informativeness", lambda metrics: metrics["informativeness"])
mmhal_score_attribute = _aggregation("mmhal_score_attribute", _per_type("attribute"))
mmhal_score_adversarial = _aggregation("mmhal_score_adversarial", _per_type("adversarial"))
mmhal_score_comparison = _aggregation("mmhal_score_comparison", _per_type("comparison"))
mmhal_score_counting = _aggregation("mmhal_score_counting", _per_type("counting"))
mmhal_score_relation = _aggregation("mmhal_score_relation", _per_type("relation"))
mmhal_score_environment = _aggregation("mmhal_score_environment", _per_type("environment"))
mmhal_score_holistic = _aggregation("mmhal_score_holistic", _per_type("holistic"))
mmhal_score_other = _aggregation("mmhal_score_other", _per_type("other"))
mmhal_judge_failures = _aggregation("mmhal_judge_failures", lambda metrics: metrics["judge_failures"])
mmhal_judge_unparsed = _aggregation("mmhal_judge_unparsed", lambda metrics: metrics["judge_unparsed"])
