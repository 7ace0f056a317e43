"""lmms-eval adapters of the `shapes_caption` task (exact CHAIR on held-out synthetic shapes images) and of
`shapes_blind_spots` (the same, plus the recall of the faint shapes of the blind-spot world and the accuracy of
the faint nouns named).

The images and their ground truth are a folder written by `ue_dpo.synthetic.shapes.write_caption_eval_set`
(`ue-dpo shapes-eval --out DIR`), or by `ue_dpo.synthetic.blind_spots.write_blind_spot_eval_set`, whose
manifest also lists each image's faint shapes (`faint`). The task reads it from `dataset_kwargs: {data_dir: DIR}`
when the task YAML (or a YAML that includes it) sets one, else from the `UE_DPO_SHAPES_EVAL_DIR` variable.
"""

import json
from pathlib import Path
from typing import Any

from datasets import Dataset
from PIL import Image

from ue_dpo.benchmarks.registry import SHAPES_CAPTION
from ue_dpo.benchmarks.shapes_chair import (
    BLIND_SPOT_METRICS,
    SHAPES_CHAIR_METRICS,
    shapes_caption_item_result,
    shapes_chair_metrics,
)
from ue_dpo.evaluation.data import BenchmarkDataError, benchmark_image, configured_dir
from ue_dpo.evaluation.local_task import LocalFilesTask
from ue_dpo.synthetic.shapes import CAPTION_PROMPT, EVAL_MANIFEST

SHAPES_EVAL_DIR_ENV = SHAPES_CAPTION.data_env("data_dir")  # UE_DPO_SHAPES_EVAL_DIR, shared with shapes_blind_spots
_HOW_TO = (
    f"write one with `ue-dpo shapes-eval --out DIR` (or ue_dpo.synthetic.shapes.write_caption_eval_set) and set "
    f"{SHAPES_EVAL_DIR_ENV}=DIR, or set dataset_kwargs: {{data_dir: DIR}} in a task YAML"
)


def shapes_eval_dir(dataset_kwargs: dict[str, Any] | None) -> Path:
    configured = configured_dir(dataset_kwargs, "data_dir", SHAPES_EVAL_DIR_ENV)
    if configured is None:
        raise BenchmarkDataError(f"shapes_caption needs a folder of held-out shapes images: {_HOW_TO}")
    manifest = configured / EVAL_MANIFEST
    if not manifest.is_file():
        raise BenchmarkDataError(
            f"shapes_caption: {manifest} does not exist, so {configured} is not a shapes evaluation folder; {_HOW_TO}"
        )
    return configured


def load_shapes_eval_docs(data_dir: Path) -> list[dict[str, Any]]:
    entries = json.loads((data_dir / EVAL_MANIFEST).read_text())
    docs = []
    for index, entry in enumerate(entries):
        image = (data_dir / entry["image"]).resolve()
        if not image.is_file():
            raise BenchmarkDataError(
                f"shapes_caption: image {image} listed in {data_dir / EVAL_MANIFEST} "
                f"is missing; rewrite the folder with `ue-dpo shapes-eval`"
            )
        doc = {"question_id": index, "image": str(image), "shapes": list(entry["shapes"]), "caption": entry["caption"]}
        if "faint" in entry:
            doc["faint"] = list(entry["faint"])
        docs.append(doc)
    return docs


class ShapesCaptionTask(LocalFilesTask):
    def load_docs(self, dataset_kwargs: dict[str, Any] | None) -> Dataset:
        return Dataset.from_list(load_shapes_eval_docs(shapes_eval_dir(dataset_kwargs)))

    def bind_settings(self, metadata: dict[str, Any]) -> dict[str, Any]:
        return {}  # exact CHAIR has no settings


def shapes_doc_to_visual(doc: dict[str, Any]) -> list[Image.Image]:
    return [
        benchmark_image(
            doc["image"], f"shapes_caption image {doc['question_id']}", "Rewrite the folder with `ue-dpo shapes-eval`."
        )
    ]


def shapes_doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    return CAPTION_PROMPT


def shapes_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, dict[str, Any]]:
    record = shapes_caption_item_result(results[0], doc["shapes"])
    return {metric: record for metric in SHAPES_CHAIR_METRICS}


def blind_spots_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, dict[str, Any]]:
    if "faint" not in doc:
        raise BenchmarkDataError(
            "shapes_blind_spots: the held-out manifest lists no faint shapes (`faint`), so it is "
            "not a blind-spot world's; evaluate a `synthetic.world: blind_spots` folder, or score "
            "a shapes folder with shapes_caption"
        )
    record = shapes_caption_item_result(results[0], doc["shapes"], doc["faint"])
    return {metric: record for metric in BLIND_SPOT_METRICS}


def _aggregation(metric: str):
    def aggregate(records: list[dict[str, Any]]) -> float | None:
        return shapes_chair_metrics(records)[metric]

    aggregate.__name__ = f"shapes_{metric}"
    return aggregate


shapes_chair_s = _aggregation("chair_s")
shapes_chair_s_all = _aggregation("chair_s_all")
shapes_chair_i = _aggregation("chair_i")
shapes_recall = _aggregation("recall")
shapes_mean_shapes_mentioned = _aggregation("mean_shapes_mentioned")
shapes_faint_recall = _aggregation("faint_recall")
shapes_faint_noun_accuracy = _aggregation("faint_noun_accuracy")
