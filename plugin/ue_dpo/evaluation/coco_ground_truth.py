"""Object-HalBench ground truth of a set of COCO images, cached so a run does not re-parse 1 GB of annotations.

The cache is `<cache dir>/object_halbench/coco_ground_truth/<key>.json`, the key being a digest of the
annotation files' resolved paths, sizes and modification times and of the image ids; delete the
folder to rebuild it (e.g. after changing the NLTK data the caption parser uses).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ue_dpo.benchmarks.object_halbench import COCO_CAPTION_FILES, COCO_INSTANCE_FILES, load_coco_ground_truth
from ue_dpo.benchmarks.registry import OBJECT_HALBENCH
from ue_dpo.evaluation.data import BenchmarkDataError, cache_dir

COCO_ANNOTATIONS_DIR_ENV = OBJECT_HALBENCH.data_env("coco_dir")  # UE_DPO_COCO_ANNOTATIONS_DIR
COCO_ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2014.zip"
COCO_ANNOTATION_FILES = (*COCO_INSTANCE_FILES, *COCO_CAPTION_FILES)
COCO_SOURCE = (
    f"They are in {COCO_ANNOTATIONS_URL}; unpack it and point {COCO_ANNOTATIONS_DIR_ENV} (or dataset_kwargs "
    f"coco_dir, or `ue-dpo score --coco-dir`) at its annotations/ folder."
)
GROUND_TRUTH_CACHE_FORMAT = 1


def _annotation_stamp(coco_dir: Path) -> list[list[Any]]:
    missing = [name for name in COCO_ANNOTATION_FILES if not (coco_dir / name).is_file()]
    if missing:
        raise BenchmarkDataError(
            f"COCO annotation file(s) {', '.join(missing)} not found in {coco_dir}; Object-HalBench "
            f"needs all of {', '.join(COCO_ANNOTATION_FILES)}. {COCO_SOURCE}"
        )
    stamp = []
    for name in COCO_ANNOTATION_FILES:
        path = (coco_dir / name).resolve()
        status = path.stat()
        stamp.append([str(path), status.st_size, status.st_mtime_ns])
    return stamp


def ground_truth_cache_dir() -> Path:
    return cache_dir() / "object_halbench" / "coco_ground_truth"


def cached_coco_ground_truth(coco_dir: str | Path, image_ids: Iterable[int]) -> dict[int, frozenset[str]]:
    """`load_coco_ground_truth(coco_dir, image_ids)`, read from `ground_truth_cache_dir()` when the
    annotation files (path, size, mtime) and the image ids are those it was computed from."""
    ids = sorted({int(image_id) for image_id in image_ids})
    stamp = _annotation_stamp(Path(coco_dir).expanduser())
    key_source = json.dumps({"format": GROUND_TRUTH_CACHE_FORMAT, "files": stamp, "image_ids": ids}, sort_keys=True)
    cache_file = ground_truth_cache_dir() / f"{hashlib.sha256(key_source.encode()).hexdigest()}.json"
    if cache_file.is_file():
        stored = json.loads(cache_file.read_text(encoding="utf-8"))
        return {int(image_id): frozenset(classes) for image_id, classes in stored["ground_truth"].items()}
    ground_truth = load_coco_ground_truth(coco_dir, ids)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    partial = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.part")
    content = {
        "files": stamp,
        "ground_truth": {str(image_id): sorted(classes) for image_id, classes in ground_truth.items()},
    }
    partial.write_text(json.dumps(content), encoding="utf-8")
    partial.replace(cache_file)
    return ground_truth
