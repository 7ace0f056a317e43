"""lmms-eval adapter of `object_halbench`; the scoring is `ue_dpo.benchmarks.object_halbench`.

Data: a folder holding RLAIF-V's question file `obj_halbench_300_with_image.jsonl` (one line per
question: `image_id`, `question` and the COCO val2014 image in base64 as `image`), named by
`dataset_kwargs: {data_dir: DIR}` or `UE_DPO_OBJECT_HALBENCH_DIR`, and the four COCO 2014 annotation
files (instances_/captions_ train2014/val2014.json) in `dataset_kwargs: {coco_dir: DIR}`,
`UE_DPO_COCO_ANNOTATIONS_DIR`, else `<data_dir>/annotations` (how the COCO zip unpacks). With no
folder configured the question file comes from GitHub and the annotations from cocodataset.org.

The ground truth of the questions' images is cached (ue_dpo.evaluation.coco_ground_truth).

Settings (task YAML `metadata`, else the environment): `extractor` / UE_DPO_OBJECT_HALBENCH_EXTRACTOR
(`nltk`, the default, or `gpt`, the path of the published RLAIF-V numbers, which needs a judge:
see ue_dpo.evaluation.judge_settings), `spacy_model` / UE_DPO_OBJECT_HALBENCH_SPACY_MODEL.
"""

from __future__ import annotations

import base64
import binascii
import json
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, Image
from PIL import Image as PILImage

from ue_dpo.benchmarks.nlp import OBJECT_HALBENCH_SPACY_MODEL
from ue_dpo.benchmarks.object_halbench import (
    OBJECT_HALBENCH_EXTRACTORS,
    object_halbench_item_result,
    object_halbench_metrics,
)
from ue_dpo.benchmarks.registry import OBJECT_HALBENCH
from ue_dpo.evaluation.coco_ground_truth import (
    COCO_ANNOTATION_FILES,
    COCO_ANNOTATIONS_DIR_ENV,
    COCO_ANNOTATIONS_URL,
    COCO_SOURCE,
    cached_coco_ground_truth,
)
from ue_dpo.evaluation.data import (
    BenchmarkDataError,
    benchmark_image,
    cache_dir,
    configured_dir,
    download_file,
    require_file,
    setting,
)
from ue_dpo.evaluation.judge_settings import task_judge
from ue_dpo.evaluation.local_task import LocalFilesTask

OBJECT_HALBENCH_DIR_ENV = OBJECT_HALBENCH.data_env("data_dir")  # UE_DPO_OBJECT_HALBENCH_DIR
OBJECT_HALBENCH_EXTRACTOR_ENV = "UE_DPO_OBJECT_HALBENCH_EXTRACTOR"
OBJECT_HALBENCH_SPACY_MODEL_ENV = "UE_DPO_OBJECT_HALBENCH_SPACY_MODEL"
QUESTION_FILE = "obj_halbench_300_with_image.jsonl"
RLAIF_V_COMMIT = "83d917b2e8118ca8e7877a796d72af9bb3e6b356"
QUESTION_FILE_URL = f"https://raw.githubusercontent.com/RLHF-V/RLAIF-V/{RLAIF_V_COMMIT}/eval/data/{QUESTION_FILE}"
_QUESTION_SOURCE = (
    f"It is RLAIF-V's eval/data/{QUESTION_FILE} (https://github.com/RLHF-V/RLAIF-V); put it in the folder "
    f"named by {OBJECT_HALBENCH_DIR_ENV} (or dataset_kwargs data_dir)."
)


def _download_coco_annotations(target: Path) -> Path:
    if all((target / name).is_file() for name in COCO_ANNOTATION_FILES):
        return target
    archive = download_file(
        COCO_ANNOTATIONS_URL, target.parent / "annotations_trainval2014.zip", how_to_go_offline=COCO_SOURCE
    )
    with zipfile.ZipFile(archive) as zipped:
        for name in COCO_ANNOTATION_FILES:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            partial = target / f"{name}.part"
            partial.write_bytes(zipped.read(f"annotations/{name}"))
            partial.replace(target / name)
    return target


def object_halbench_dirs(dataset_kwargs: Mapping[str, Any] | None) -> tuple[Path, Path]:
    """(folder of the question file, folder of the COCO annotation files), fetching what is not configured."""
    data_dir = configured_dir(dataset_kwargs, "data_dir", OBJECT_HALBENCH_DIR_ENV)
    coco_dir = configured_dir(dataset_kwargs, "coco_dir", COCO_ANNOTATIONS_DIR_ENV)
    if data_dir is None:
        data_dir = cache_dir() / "object_halbench" / RLAIF_V_COMMIT
        download_file(QUESTION_FILE_URL, data_dir / QUESTION_FILE, how_to_go_offline=_QUESTION_SOURCE)
        if coco_dir is None:
            coco_dir = _download_coco_annotations(cache_dir() / "coco2014" / "annotations")
    return data_dir, coco_dir or data_dir / "annotations"


def load_object_halbench_docs(data_dir: Path, coco_dir: Path) -> list[dict[str, Any]]:
    """Docs {"question_id", "image_id", "question", "image" (bytes), "ground_truth" (COCO classes)}."""
    path = require_file(data_dir / QUESTION_FILE, "Object-HalBench question file", _QUESTION_SOURCE)
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    questions = []
    first_line: dict[Any, int] = {}
    for number, line in enumerate(lines, start=1):
        question = json.loads(line)
        question_id = question.get("question_id")
        if isinstance(question_id, (int, str)):
            if question_id in first_line:
                raise BenchmarkDataError(
                    f"{path}: question_id {question_id} appears twice (lines "
                    f"{first_line[question_id]} and {number}); each question is scored once: "
                    f"remove the repeat. {_QUESTION_SOURCE}"
                )
            first_line[question_id] = number
        missing = [key for key in ("image_id", "question", "image") if key not in question]
        if missing:
            raise BenchmarkDataError(f"{path} line {number} lacks {', '.join(missing)}. {_QUESTION_SOURCE}")
        try:
            image_bytes = base64.b64decode(question["image"], validate=True)
        except (binascii.Error, ValueError):
            raise BenchmarkDataError(f"{path} line {number}: `image` is not base64. {_QUESTION_SOURCE}") from None
        questions.append((number - 1, question, image_bytes))
    ground_truth = cached_coco_ground_truth(coco_dir, [question["image_id"] for _, question, _ in questions])
    return [
        {
            "question_id": question.get("question_id", index),
            "image_id": int(question["image_id"]),
            "question": question["question"],
            "image": {"bytes": image_bytes, "path": None},
            "ground_truth": sorted(ground_truth[int(question["image_id"])]),
        }
        for index, question, image_bytes in questions
    ]


class ObjectHalBenchTask(LocalFilesTask):
    def load_docs(self, dataset_kwargs: Mapping[str, Any] | None) -> Dataset:
        data_dir, coco_dir = object_halbench_dirs(dataset_kwargs)
        return Dataset.from_list(load_object_halbench_docs(data_dir, coco_dir)).cast_column(
            "image", Image(decode=False)
        )

    def bind_settings(self, metadata: dict[str, Any]) -> dict[str, Any]:
        extractor = setting(metadata, "extractor", OBJECT_HALBENCH_EXTRACTOR_ENV, "nltk")
        if extractor not in OBJECT_HALBENCH_EXTRACTORS:
            raise ValueError(
                f"Object-HalBench extractor {extractor!r} (metadata extractor or {OBJECT_HALBENCH_EXTRACTOR_ENV}) "
                f"is not one of {OBJECT_HALBENCH_EXTRACTORS}."
            )
        spacy_model = setting(metadata, "spacy_model", OBJECT_HALBENCH_SPACY_MODEL_ENV, OBJECT_HALBENCH_SPACY_MODEL)
        judge = task_judge("object_halbench with the gpt extractor", metadata) if extractor == "gpt" else None
        metadata.update(extractor=extractor)
        if judge is not None:
            metadata.update(spacy_model=spacy_model, judge=judge.config.public_dict())
        return {"extractor": extractor, "judge": judge, "nlp": spacy_model}


def object_halbench_doc_to_visual(doc: Mapping[str, Any]) -> list[PILImage.Image]:
    return [
        benchmark_image(
            doc["image"], f"Object-HalBench image of question {doc['question_id']} in {QUESTION_FILE}", _QUESTION_SOURCE
        )
    ]


def object_halbench_doc_to_text(
    doc: Mapping[str, Any], lmms_eval_specific_kwargs: Mapping[str, Any] | None = None
) -> str:
    return doc["question"]


OBJECT_HALBENCH_METRICS = ("chair_s", "chair_s_all", "chair_i", "recall", "judge_unparsed")


def object_halbench_process_results(
    doc: Mapping[str, Any], results: Sequence[str], *, extractor: str, judge: Any, nlp: Any
) -> dict[str, dict[str, Any]]:
    record = object_halbench_item_result(
        results[0],
        doc["ground_truth"],
        extractor=extractor,
        question=doc["question"],
        judge=judge,
        nlp=nlp,
        image_id=doc["image_id"],
        question_id=doc["question_id"],
    )
    return {metric: record for metric in OBJECT_HALBENCH_METRICS}


def _aggregation(name: str, key: str) -> Callable[[Sequence[Mapping[str, Any]]], Any]:
    def aggregate(records: Sequence[Mapping[str, Any]]) -> Any:
        return object_halbench_metrics(records)[key]

    aggregate.__name__ = name
    return aggregate


# Not named after coco_cap_chair: lmms-eval 0.7.3 bootstraps functions so named 100k times.
halbench_chair_s = _aggregation("halbench_chair_s", "chair_s")
halbench_chair_s_all = _aggregation("halbench_chair_s_all", "chair_s_all")
halbench_chair_i = _aggregation("halbench_chair_i", "chair_i")
halbench_recall = _aggregation("halbench_recall", "recall")
halbench_judge_unparsed = _aggregation("halbench_judge_unparsed", "extraction_failures")
