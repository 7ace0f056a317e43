"""lmms-eval adapters of `amber_generative`, `amber_discriminative` and the group `amber`; the scoring is
`ue_dpo.benchmarks.amber`.

Data: the AMBER repository's `data/` folder (annotations.json, relation.json, safe_words.txt and
query/query_generative.json, query/query_discriminative.json), named by `dataset_kwargs: {data_dir: DIR}`
or `UE_DPO_AMBER_DIR`; without either, those files are fetched from GitHub into the cache directory.
Images (AMBER_1.jpg ... AMBER_1004.jpg, shared by both tasks): `dataset_kwargs: {image_dir: DIR}` or
`UE_DPO_AMBER_IMAGE_DIR`, else `<data_dir>/image`; AMBER publishes them only as a Google Drive archive.

Settings (task YAML `metadata`, else the environment): `spacy_model` / UE_DPO_AMBER_SPACY_MODEL
(default en_core_web_lg), `answer_parse` / UE_DPO_AMBER_ANSWER_PARSE (`exact`, the official parse, or
`lenient`).

The group's `amber_score` is (100 - CHAIR + F1) / 2, the mean of the two subtasks' `amber_score`
terms: 100 - CHAIR in amber_generative, the overall F1 in amber_discriminative.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, Image
from PIL import Image as PILImage

from ue_dpo.benchmarks.amber import (
    AMBER_ANSWER_PARSE_MODES,
    AMBER_DATA_FILES,
    AMBER_GENERATIVE_TYPE,
    AmberReference,
    amber_item_result,
    amber_metrics,
    load_amber_reference,
)
from ue_dpo.benchmarks.nlp import AMBER_SPACY_MODEL
from ue_dpo.benchmarks.registry import AMBER_GENERATIVE
from ue_dpo.evaluation.data import (
    BenchmarkDataError,
    benchmark_image,
    cache_dir,
    configured_dir,
    download_file,
    require_file,
    setting,
)
from ue_dpo.evaluation.local_task import LocalFilesTask

AMBER_DIR_ENV = AMBER_GENERATIVE.data_env("data_dir")  # UE_DPO_AMBER_DIR, shared by both tasks
AMBER_IMAGE_DIR_ENV = AMBER_GENERATIVE.data_env("image_dir")  # UE_DPO_AMBER_IMAGE_DIR
AMBER_SPACY_MODEL_ENV = "UE_DPO_AMBER_SPACY_MODEL"
AMBER_ANSWER_PARSE_ENV = "UE_DPO_AMBER_ANSWER_PARSE"
AMBER_QUERY_FILES = {"generative": "query/query_generative.json", "discriminative": "query/query_discriminative.json"}
AMBER_REPOSITORY_COMMIT = "534babf6bbfcce2e735c26289dedfb21cef3c939"
AMBER_RAW_URL = "https://raw.githubusercontent.com/junyangwang0410/AMBER/{commit}/data/{name}"
AMBER_IMAGES_URL = "https://drive.google.com/file/d/1MaCHgtupcZUjf007anNl4_MV0o4DjXvl/view"
_DATA_SOURCE = (
    f"It is in the `data/` folder of https://github.com/junyangwang0410/AMBER; point "
    f"{AMBER_DIR_ENV} (or dataset_kwargs data_dir) at a copy of that folder."
)
_IMAGE_SOURCE = (
    f"The AMBER images come as one archive from {AMBER_IMAGES_URL}; unpack it and point "
    f"{AMBER_IMAGE_DIR_ENV} (or dataset_kwargs image_dir) at the folder of AMBER_*.jpg files."
)


def amber_data_dir(dataset_kwargs: Mapping[str, Any] | None) -> Path:
    configured = configured_dir(dataset_kwargs, "data_dir", AMBER_DIR_ENV)
    if configured is not None:
        return configured
    target = cache_dir() / "amber" / AMBER_REPOSITORY_COMMIT / "data"
    for name in (*AMBER_DATA_FILES, *AMBER_QUERY_FILES.values()):
        url = AMBER_RAW_URL.format(commit=AMBER_REPOSITORY_COMMIT, name=name)
        download_file(url, target / name, how_to_go_offline=_DATA_SOURCE)
    return target


def amber_image_dir(dataset_kwargs: Mapping[str, Any] | None, data_dir: Path) -> Path:
    return configured_dir(dataset_kwargs, "image_dir", AMBER_IMAGE_DIR_ENV) or data_dir / "image"


def load_amber_docs(kind: str, data_dir: Path, image_dir: Path) -> list[dict[str, Any]]:
    """The queries of one AMBER task as docs {"id", "image" (path), "query"}, checked against the annotations."""
    reference = load_amber_reference(data_dir)
    query_path = require_file(data_dir / AMBER_QUERY_FILES[kind], f"AMBER {kind} query file", _DATA_SOURCE)
    queries = json.loads(query_path.read_text(encoding="utf-8"))
    docs = []
    for query in queries:
        entry = reference.entry(query["id"])
        if (entry["type"] == AMBER_GENERATIVE_TYPE) != (kind == "generative"):
            raise BenchmarkDataError(
                f"{query_path}: query {query['id']} is a {entry['type']} item in annotations.json, "
                f"not a {kind} one; use the official query files."
            )
        image = require_file(image_dir / query["image"], f"AMBER image of query {query['id']}", _IMAGE_SOURCE)
        docs.append({"id": int(query["id"]), "image": str(image), "query": query["query"]})
    return docs


class AmberTask(LocalFilesTask):
    KIND = ""

    def load_docs(self, dataset_kwargs: Mapping[str, Any] | None) -> Dataset:
        data_dir = amber_data_dir(dataset_kwargs)
        self.data_dir = data_dir
        docs = load_amber_docs(self.KIND, data_dir, amber_image_dir(dataset_kwargs, data_dir))
        return Dataset.from_list(docs).cast_column("image", Image(decode=False))

    def bind_settings(self, metadata: dict[str, Any]) -> dict[str, Any]:
        parse = setting(metadata, "answer_parse", AMBER_ANSWER_PARSE_ENV, "exact")
        if parse not in AMBER_ANSWER_PARSE_MODES:
            raise ValueError(
                f"AMBER answer_parse {parse!r} (metadata answer_parse or {AMBER_ANSWER_PARSE_ENV}) is not one of "
                f"{AMBER_ANSWER_PARSE_MODES}; `exact` is the official parse."
            )
        spacy_model = setting(metadata, "spacy_model", AMBER_SPACY_MODEL_ENV, AMBER_SPACY_MODEL)
        metadata.update(answer_parse=parse, spacy_model=spacy_model, data_dir=str(self.data_dir))
        return {"reference": load_amber_reference(self.data_dir), "nlp": spacy_model, "parse": parse}


class AmberGenerativeTask(AmberTask):
    KIND = "generative"


class AmberDiscriminativeTask(AmberTask):
    KIND = "discriminative"


def amber_doc_to_visual(doc: Mapping[str, Any]) -> list[PILImage.Image]:
    return [benchmark_image(doc["image"], f"AMBER image of query {doc['id']}", _IMAGE_SOURCE)]


def amber_doc_to_text(doc: Mapping[str, Any], lmms_eval_specific_kwargs: Mapping[str, Any] | None = None) -> str:
    return doc["query"]


# Aggregation functions are named without "amber_": lmms-eval 0.7.3 bootstraps any function so named 100k times.
def _aggregation(name: str, pick: Callable[[dict[str, Any]], Any]) -> Callable[[Sequence[Mapping[str, Any]]], Any]:
    def aggregate(records: Sequence[Mapping[str, Any]]) -> Any:
        return pick(amber_metrics(records))

    aggregate.__name__ = name
    return aggregate


def _generative_score_term(metrics: dict[str, Any]) -> float | None:
    chair = metrics["generative"]["CHAIR"]
    return None if chair is None else 100 - chair


generative_chair = _aggregation("generative_chair", lambda m: m["generative"]["CHAIR"])
generative_cover = _aggregation("generative_cover", lambda m: m["generative"]["Cover"])
generative_hal = _aggregation("generative_hal", lambda m: m["generative"]["Hal"])
generative_cog = _aggregation("generative_cog", lambda m: m["generative"]["Cog"])
generative_score_term = _aggregation("generative_score_term", _generative_score_term)


def _question_metric(group: str, key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda metrics: metrics["discriminative"][group][key]


discriminative_accuracy = _aggregation("discriminative_accuracy", _question_metric("overall", "Accuracy"))
discriminative_precision = _aggregation("discriminative_precision", _question_metric("overall", "Precision"))
discriminative_recall = _aggregation("discriminative_recall", _question_metric("overall", "Recall"))
discriminative_f1 = _aggregation("discriminative_f1", _question_metric("overall", "F1"))
discriminative_existence_accuracy = _aggregation(
    "discriminative_existence_accuracy", _question_metric("existence", "Accuracy")
)
discriminative_existence_precision = _aggregation(
    "discriminative_existence_precision", _question_metric("existence", "Precision")
)
discriminative_existence_recall = _aggregation(
    "discriminative_existence_recall", _question_metric("existence", "Recall")
)
discriminative_existence_f1 = _aggregation("discriminative_existence_f1", _question_metric("existence", "F1"))
discriminative_attribute_accuracy = _aggregation(
    "discriminative_attribute_accuracy", _question_metric("attribute", "Accuracy")
)
discriminative_attribute_precision = _aggregation(
    "discriminative_attribute_precision", _question_metric("attribute", "Precision")
)
discriminative_attribute_recall = _aggregation(
    "discriminative_attribute_recall", _question_metric("attribute", "Recall")
)
discriminative_attribute_f1 = _aggregation("discriminative_attribute_f1", _question_metric("attribute", "F1"))
discriminative_relation_accuracy = _aggregation(
    "discriminative_relation_accuracy", _question_metric("relation", "Accuracy")
)
discriminative_relation_precision = _aggregation(
    "discriminative_relation_precision", _question_metric("relation", "Precision")
)
discriminative_relation_recall = _aggregation("discriminative_relation_recall", _question_metric("relation", "Recall"))
discriminative_relation_f1 = _aggregation("discriminative_relation_f1", _question_metric("relation", "F1"))
discriminative_unparsed = _aggregation("discriminative_unparsed", _question_metric("overall", "unparsed"))
discriminative_score_term = _aggregation("discriminative_score_term", _question_metric("overall", "F1"))

# metric name in the task YAML -> aggregation
GENERATIVE_AGGREGATIONS = {
    "chair": generative_chair,
    "cover": generative_cover,
    "hal": generative_hal,
    "cog": generative_cog,
    "amber_score": generative_score_term,
}
DISCRIMINATIVE_AGGREGATIONS = {
    "accuracy": discriminative_accuracy,
    "precision": discriminative_precision,
    "recall": discriminative_recall,
    "f1": discriminative_f1,
    "existence_accuracy": discriminative_existence_accuracy,
    "existence_precision": discriminative_existence_precision,
    "existence_recall": discriminative_existence_recall,
    "existence_f1": discriminative_existence_f1,
    "attribute_accuracy": discriminative_attribute_accuracy,
    "attribute_precision": discriminative_attribute_precision,
    "attribute_recall": discriminative_attribute_recall,
    "attribute_f1": discriminative_attribute_f1,
    "relation_accuracy": discriminative_relation_accuracy,
    "relation_precision": discriminative_relation_precision,
    "relation_recall": discriminative_relation_recall,
    "relation_f1": discriminative_relation_f1,
    "unparsed": discriminative_unparsed,
    "amber_score": discriminative_score_term,
}


def amber_process_results(
    doc: Mapping[str, Any], results: Sequence[str], *, reference: AmberReference, nlp: Any, parse: str
) -> dict[str, dict[str, Any]]:
    entry = reference.entry(doc["id"])
    record = amber_item_result(entry, results[0], vocabulary=reference.vocabulary, nlp=nlp, parse=parse)
    metrics = GENERATIVE_AGGREGATIONS if record["task"] == "generative" else DISCRIMINATIVE_AGGREGATIONS
    return {metric: record for metric in metrics}


def amber_score_from_terms(terms: Sequence[float | None], sizes: Sequence[int], weight_by_size: bool = False) -> float:
    """The group's AMBER Score from the two subtasks' terms (100 - CHAIR and F1), as benchmarks.amber rounds it."""
    if len(terms) != 2 or any(term is None for term in terms):
        raise ValueError(
            "The AMBER Score needs both amber_generative and amber_discriminative with scored items; got terms "
            f"{list(terms)}."
        )
    return round(sum(terms) / 2, 2)
