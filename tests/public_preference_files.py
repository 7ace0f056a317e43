"""Tiny local copies of openbmb/RLHF-V-Dataset and openbmb/RLAIF-V-Dataset in their published schemas: the same
columns and types (from the dataset cards), the image as `datasets.Image` (a `{bytes, path}` struct in
parquet), RLHF-V's pairs as a JSON string in `text`, RLAIF-V split over `RLAIF-V-Dataset_NNN.parquet` shards.
Each holds good rows and the defects the converter must catch."""

import io
import json
from pathlib import Path

from PIL import Image

RLHF_V_FEATURES = {"ds_name": "string", "image": "image", "text": "string", "origin_dataset": "string",
                   "origin_split": "string", "idx": "int64", "image_path": "string"}
RLAIF_V_FEATURES = {"ds_name": "string", "image": "image", "question": "string", "chosen": "string",
                    "rejected": "string", "origin_dataset": "string", "origin_split": "string", "idx": "string",
                    "image_path": "string"}


def encoded_image(color: str, image_format: str, size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=image_format)
    return buffer.getvalue()


RED_JPEG = encoded_image("red", "JPEG")
BLUE_PNG = encoded_image("blue", "PNG")
GREEN_JPEG = encoded_image("green", "JPEG")
TRUNCATED_JPEG = encoded_image("yellow", "JPEG", (64, 64))[:346]  # headers complete, scan data cut


def _features(columns: dict[str, str]):
    import datasets

    return datasets.Features({name: datasets.Image() if kind == "image" else datasets.Value(kind)
                              for name, kind in columns.items()})


def _write_parquet(rows: list[dict], columns: dict[str, str], path: Path) -> None:
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=_features(columns)).to_parquet(str(path))


def _image(data: bytes | None) -> dict | None:
    return None if data is None else {"bytes": data, "path": None}


def _rlhf_v_row(idx: int, image: bytes | None, question: str, chosen: str, rejected: str) -> dict:
    return {"ds_name": "RLHF-V", "image": _image(image), "origin_dataset": "vg", "origin_split": "detail",
            "idx": idx, "image_path": f"images/{idx}.jpg",
            "text": json.dumps({"question": question, "chosen": chosen, "rejected": rejected})}


# (row, idx, start of the reason) of each defective row, in source order (PIL words the decoding error)
RLHF_V_BAD_ROWS = [
    (2, 102, "its image bytes are in no format PIL can read"),
    (3, 103, "it has no image"),
    (4, 104, "the chosen response is empty"),
]
RLAIF_V_BAD_ROWS = [
    (1, "rlaif_shard0_1", "it has no image"),
    (3, "rlaif_shard1_1", "the question is empty"),
    (4, "rlaif_shard1_2", "its image cannot be decoded ("),
]


def write_rlhf_v(folder: Path) -> Path:
    """Six rows: three good pairs (two share the red image; one question carries LLaVA's `<image>\\n` prefix)
    and three bad ones."""
    rows = [
        _rlhf_v_row(100, RED_JPEG, "Describe the image.", "A red square.", "A red square next to a dog."),
        _rlhf_v_row(101, RED_JPEG, "What colour dominates?", "Red.", "Blue, with a cat."),
        _rlhf_v_row(102, b"definitely not an image", "What is shown?", "Nothing.", "A horse."),
        _rlhf_v_row(103, None, "What is shown?", "A field.", "A horse in a field."),
        _rlhf_v_row(104, BLUE_PNG, "What is shown?", "   ", "A blue whale."),
        _rlhf_v_row(105, BLUE_PNG, "<image>\nIs the picture blue?", "Yes, it is plain blue.", "No, it shows a car."),
    ]
    _write_parquet(rows, RLHF_V_FEATURES, folder / "RLHF-V-Dataset.parquet")
    return folder


def _rlaif_v_row(idx: str, image: bytes | None, question: str, chosen: str, rejected: str) -> dict:
    return {"ds_name": "RLAIF-V", "image": _image(image), "question": question, "chosen": chosen,
            "rejected": rejected, "origin_dataset": "OmniLMM", "origin_split": "{}", "idx": idx,
            "image_path": f"{idx}.jpg"}


def write_rlaif_v(folder: Path) -> Path:
    """Two shards, five rows: two good pairs and three bad ones."""
    _write_parquet([
        _rlaif_v_row("rlaif_shard0_0", GREEN_JPEG, "How many objects are there?", "One green square.",
                     "Three green squares and a ball."),
        _rlaif_v_row("rlaif_shard0_1", None, "What is this?", "A square.", "A circle."),
    ], RLAIF_V_FEATURES, folder / "RLAIF-V-Dataset_000.parquet")
    _write_parquet([
        _rlaif_v_row("rlaif_shard1_0", RED_JPEG, "Which colour is the square?", "It is red.", "It is green."),
        _rlaif_v_row("rlaif_shard1_1", RED_JPEG, " <image> ", "It is red.", "It is green."),
        _rlaif_v_row("rlaif_shard1_2", TRUNCATED_JPEG, "What is shown?", "Yellow.", "Purple."),
    ], RLAIF_V_FEATURES, folder / "RLAIF-V-Dataset_001.parquet")
    return folder
