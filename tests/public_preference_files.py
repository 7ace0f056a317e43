"""Tiny local copies of openbmb/RLHF-V-Dataset, llamafactory/RLHF-V and openbmb/RLAIF-V-Dataset in their published
schemas: the same file names, columns and types (from the dataset cards), images as `datasets.Image` (a
`{bytes, path}` struct in parquet), openbmb's RLHF-V pairs as a JSON string in `text`, LLaMA-Factory's as sharegpt
turns with a list of images, RLAIF-V split over `RLAIF-V-Dataset_NNN.parquet` shards. Each holds good rows and the
defects the converter must catch; both RLHF-V copies hold the same pairs in the same order."""

import io
import json
from pathlib import Path

from PIL import Image

RLHF_V_FEATURES = {
    "ds_name": "string",
    "image": "image",
    "text": "string",
    "origin_dataset": "string",
    "origin_split": "string",
    "idx": "int64",
    "image_path": "string",
}
RLAIF_V_FEATURES = {
    "ds_name": "string",
    "image": "image",
    "question": "string",
    "chosen": "string",
    "rejected": "string",
    "origin_dataset": "string",
    "origin_split": "string",
    "idx": "string",
    "image_path": "string",
}


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

    return datasets.Features(
        {name: datasets.Image() if kind == "image" else datasets.Value(kind) for name, kind in columns.items()}
    )


def _write_parquet(rows: list[dict], features, path: Path) -> None:
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))


def _image(data: bytes | None) -> dict | None:
    return None if data is None else {"bytes": data, "path": None}


# (idx, image, question, chosen, rejected) of the RLHF-V fixture, in source order
RLHF_V_PAIRS = [
    (100, RED_JPEG, "Describe the image.", "A red square.", "A red square next to a dog."),
    (101, RED_JPEG, "What colour dominates?", "Red.", "Blue, with a cat."),
    (102, b"definitely not an image", "What is shown?", "Nothing.", "A horse."),
    (103, None, "What is shown?", "A field.", "A horse in a field."),
    (104, BLUE_PNG, "What is shown?", "   ", "A blue whale."),
    (105, BLUE_PNG, "<image>\nIs the picture blue?", "Yes, it is plain blue.", "No, it shows a car."),
]


def _rlhf_v_row(idx: int, image: bytes | None, question: str, chosen: str, rejected: str) -> dict:
    return {
        "ds_name": "RLHF-V",
        "image": _image(image),
        "origin_dataset": "vg",
        "origin_split": "detail",
        "idx": idx,
        "image_path": f"images/{idx}.jpg",
        "text": json.dumps({"question": question, "chosen": chosen, "rejected": rejected}),
    }


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
    """openbmb's copy, six rows: three good pairs (two share the red image; one question carries LLaVA's
    `<image>\\n` prefix) and three bad ones."""
    _write_parquet(
        [_rlhf_v_row(*pair) for pair in RLHF_V_PAIRS], _features(RLHF_V_FEATURES), folder / "RLHF-V-Dataset.parquet"
    )
    return folder


def _llamafactory_rlhf_v_features():
    import datasets

    turn = {"from": datasets.Value("string"), "value": datasets.Value("string")}
    return datasets.Features(
        {
            "conversations": datasets.List(turn),
            "chosen": turn,
            "rejected": turn,
            "images": datasets.List(datasets.Image()),
        }
    )


def write_llamafactory_rlhf_v(folder: Path) -> Path:
    """LLaMA-Factory's copy of the same six rows: the question behind its `<image>` placeholder, no image as an
    empty list."""
    rows = [
        {
            "conversations": [{"from": "human", "value": "<image>" + question.removeprefix("<image>\n")}],
            "chosen": {"from": "gpt", "value": chosen},
            "rejected": {"from": "gpt", "value": rejected},
            "images": [] if image is None else [_image(image)],
        }
        for _, image, question, chosen, rejected in RLHF_V_PAIRS
    ]
    _write_parquet(rows, _llamafactory_rlhf_v_features(), folder / "rlhf-v.parquet")
    return folder


def _rlaif_v_row(idx: str, image: bytes | None, question: str, chosen: str, rejected: str) -> dict:
    return {
        "ds_name": "RLAIF-V",
        "image": _image(image),
        "question": question,
        "chosen": chosen,
        "rejected": rejected,
        "origin_dataset": "OmniLMM",
        "origin_split": "{}",
        "idx": idx,
        "image_path": f"{idx}.jpg",
    }


def write_rlaif_v(folder: Path) -> Path:
    """Two shards, five rows: two good pairs and three bad ones."""
    _write_parquet(
        [
            _rlaif_v_row(
                "rlaif_shard0_0",
                GREEN_JPEG,
                "How many objects are there?",
                "One green square.",
                "Three green squares and a ball.",
            ),
            _rlaif_v_row("rlaif_shard0_1", None, "What is this?", "A square.", "A circle."),
        ],
        _features(RLAIF_V_FEATURES),
        folder / "RLAIF-V-Dataset_000.parquet",
    )
    _write_parquet(
        [
            _rlaif_v_row("rlaif_shard1_0", RED_JPEG, "Which colour is the square?", "It is red.", "It is green."),
            _rlaif_v_row("rlaif_shard1_1", RED_JPEG, " <image> ", "It is red.", "It is green."),
            _rlaif_v_row("rlaif_shard1_2", TRUNCATED_JPEG, "What is shown?", "Yellow.", "Purple."),
        ],
        _features(RLAIF_V_FEATURES),
        folder / "RLAIF-V-Dataset_001.parquet",
    )
    return folder
