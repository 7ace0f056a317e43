"""The public RLHF-V and RLAIF-V preference datasets as LLaMA-Factory ranking datasets.

Both hub datasets are parquet files with one `train` split and the image as `{"bytes", "path"}`:
- openbmb/RLHF-V-Dataset (5.7k pairs, one `RLHF-V-Dataset.parquet`): `text` is a JSON string holding
  `question`, `chosen` and `rejected`; `idx` is an int64.
- openbmb/RLAIF-V-Dataset (83k pairs in `RLAIF-V-Dataset_NNN.parquet` shards): `question`, `chosen` and
  `rejected` are columns; `idx` is a string.

`convert` writes `<name>.json` (sharegpt, one `<image>` at the start of the user turn, as LLaMA-Factory's
multimodal plugins expect), the images as files under `<name>_images/` (original bytes, named by content
hash, so images shared by several pairs are stored once), `<name>_skipped.jsonl` and the `<name>` entry of
`dataset_info.json`. Re-running with the same arguments rewrites the same bytes.
"""

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_PLACEHOLDER = "<image>"
BAD_SAMPLE_POLICIES = ("skip", "error")
_SHAREGPT_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
_EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp",
               "TIFF": ".tif"}

logger = logging.getLogger(__name__)


class BadSampleError(ValueError):
    """A source row that cannot become a training pair (its message names the row)."""


class SourceError(ValueError):
    """The source is missing or is not the dataset it was named as."""


@dataclass(frozen=True)
class PreferenceSource:
    name: str
    hub_id: str
    columns: tuple[str, ...]
    read_texts: Callable[[dict[str, Any]], tuple[Any, Any, Any]]  # question, chosen, rejected (unchecked)


def _rlhf_v_texts(row: dict[str, Any]) -> tuple[Any, Any, Any]:
    try:
        text = json.loads(row["text"])
    except (TypeError, json.JSONDecodeError) as error:
        raise BadSampleError(f"its `text` field is not JSON ({error})") from None
    if not isinstance(text, dict):
        raise BadSampleError("its `text` field is not a JSON object with question, chosen and rejected")
    return text.get("question"), text.get("chosen"), text.get("rejected")


def _rlaif_v_texts(row: dict[str, Any]) -> tuple[Any, Any, Any]:
    return row["question"], row["chosen"], row["rejected"]


SOURCES = {
    "rlhf_v": PreferenceSource("rlhf_v", "openbmb/RLHF-V-Dataset", ("image", "text", "idx"), _rlhf_v_texts),
    "rlaif_v": PreferenceSource(
        "rlaif_v", "openbmb/RLAIF-V-Dataset", ("image", "question", "chosen", "rejected", "idx"), _rlaif_v_texts,
    ),
}


@dataclass(frozen=True)
class ConversionReport:
    dataset_name: str
    pairs: int
    images: int
    skipped: int
    records_path: Path
    skipped_path: Path

    def summary(self) -> str:
        return (f"{self.dataset_name}: wrote {self.pairs} pairs ({self.images} distinct images) to "
                f"{self.records_path}; skipped {self.skipped} bad samples (listed in {self.skipped_path})")


def dataset_info_entry(name: str) -> dict[str, Any]:
    return {
        "file_name": f"{name}.json",
        "formatting": "sharegpt",
        "ranking": True,
        "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected", "images": "images"},
        "tags": dict(_SHAREGPT_TAGS),
    }


def convert(
    dataset_name: str,
    out_dir: Path,
    *,
    source: str | None = None,
    limit: int | None = None,
    on_bad_sample: str = "skip",
) -> ConversionReport:
    """Converts `dataset_name` (a key of SOURCES) from `source` (a hub id or a local folder of its parquet or
    arrow files; default: the public hub dataset) into the LLaMA-Factory dataset folder `out_dir`.

    `limit` stops after that many pairs are written (the first ones in source order); with
    `on_bad_sample: skip` bad rows are logged, counted and listed in `<name>_skipped.jsonl`, with `error` the
    first one stops the run before any record or dataset_info.json is written.
    """
    if dataset_name not in SOURCES:
        raise SourceError(f"unknown dataset {dataset_name!r}; choose one of: {', '.join(SOURCES)}")
    if on_bad_sample not in BAD_SAMPLE_POLICIES:
        raise ValueError(f"on_bad_sample={on_bad_sample!r}; use one of: {', '.join(BAD_SAMPLE_POLICIES)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive number of pairs, got {limit!r}")
    spec = SOURCES[dataset_name]
    out_dir = Path(out_dir)
    image_dir_name = f"{dataset_name}_images"

    records: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    written_images: set[str] = set()
    for position, row in enumerate(_source_rows(spec, source or spec.hub_id)):
        try:
            record, image_bytes, extension = _pair_record(spec, row)
        except BadSampleError as error:
            message = f"{dataset_name} sample at row {position} (idx {row.get('idx')!r}): {error}"
            if on_bad_sample == "error":
                raise BadSampleError(f"{message}. Fix or remove that row, or pass --on-bad-sample skip.") from None
            logger.warning("skipping %s", message)
            skipped.append({"row": position, "idx": row.get("idx"), "reason": str(error)})
            continue
        relative_image = _store_image(out_dir, image_dir_name, image_bytes, extension)
        written_images.add(relative_image)
        record["images"] = [relative_image]
        records.append(record)
        if len(records) == limit:
            break

    _remove_unreferenced_images(out_dir, image_dir_name, written_images)
    out_dir.mkdir(parents=True, exist_ok=True)
    records_path = out_dir / f"{dataset_name}.json"
    skipped_path = out_dir / f"{dataset_name}_skipped.jsonl"
    _write_atomically(records_path, json.dumps(records, ensure_ascii=False, indent=1))
    _write_atomically(skipped_path, "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in skipped))
    info_path = out_dir / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info[dataset_name] = dataset_info_entry(dataset_name)
    _write_atomically(info_path, json.dumps(info, indent=2))
    return ConversionReport(dataset_name, len(records), len(written_images), len(skipped), records_path, skipped_path)


def _source_rows(spec: PreferenceSource, source: str) -> Iterator[dict[str, Any]]:
    import datasets

    for row in _open_source(spec, source).cast_column("image", datasets.Image(decode=False)):
        missing = [column for column in spec.columns if column not in row]
        if missing:
            raise SourceError(
                f"{source} has no column(s) {', '.join(missing)} (it has: {', '.join(row)}); {spec.name} is read "
                f"in the schema of {spec.hub_id} (columns {', '.join(spec.columns)})"
            )
        yield row


def _open_source(spec: PreferenceSource, source: str):
    """The `train` split as a stream, so a `limit` reads only the shards it needs."""
    import datasets

    path = Path(source)
    if not path.exists():
        if path.is_absolute() or source.startswith(".") or source.count("/") != 1:
            raise SourceError(f"--source {source!r} is neither an existing folder nor a hub dataset id like "
                              f"{spec.hub_id}")
        return datasets.load_dataset(source, split="train", streaming=True)
    if not path.is_dir():
        raise SourceError(f"--source {source} is a file; pass the folder holding the {spec.hub_id} parquet or arrow "
                          "files (or a `save_to_disk` folder)")
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        saved = datasets.load_from_disk(str(path))
        return (saved["train"] if isinstance(saved, datasets.DatasetDict) else saved).to_iterable_dataset()
    for builder in ("parquet", "arrow"):
        files = sorted(str(file) for file in path.rglob(f"*.{builder}"))
        if files:
            return datasets.load_dataset(builder, data_files={"train": files}, split="train", streaming=True)
    raise SourceError(f"--source {path} holds no .parquet or .arrow files; download {spec.hub_id} there "
                      f"(e.g. `hf download {spec.hub_id} --repo-type dataset --local-dir {path}`)")


def _pair_record(spec: PreferenceSource, row: dict[str, Any]) -> tuple[dict[str, Any], bytes, str]:
    question, chosen, rejected = spec.read_texts(row)
    question = _text("question", question).replace(IMAGE_PLACEHOLDER, "").strip()
    if not question:
        raise BadSampleError("the question is empty")
    chosen, rejected = _text("chosen", chosen), _text("rejected", rejected)
    for field_name, response in (("chosen", chosen), ("rejected", rejected)):
        if not response.strip():
            raise BadSampleError(f"the {field_name} response is empty")
        if IMAGE_PLACEHOLDER in response:
            raise BadSampleError(f"the {field_name} response contains {IMAGE_PLACEHOLDER}, which LLaMA-Factory "
                                 "would take for an image slot")
    image_bytes = _image_bytes(row["image"])
    extension = _checked_image_extension(image_bytes)
    record = {
        "messages": [{"role": "user", "content": IMAGE_PLACEHOLDER + question}],
        "chosen": {"role": "assistant", "content": chosen},
        "rejected": {"role": "assistant", "content": rejected},
        "idx": row["idx"],
    }
    return record, image_bytes, extension


def _text(field_name: str, value: Any) -> str:
    if value is None:
        raise BadSampleError(f"it has no {field_name}")
    if not isinstance(value, str):
        raise BadSampleError(f"its {field_name} is a {type(value).__name__}, not text")
    return value


def _image_bytes(image: dict[str, Any] | None) -> bytes:
    if image is not None and image.get("bytes"):
        return image["bytes"]
    if image is not None and image.get("path") and Path(image["path"]).is_file():
        return Path(image["path"]).read_bytes()
    raise BadSampleError("it has no image")


def _checked_image_extension(image_bytes: bytes) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(image_bytes)) as image:
            image.load()
            image_format = image.format
    except UnidentifiedImageError:
        raise BadSampleError("its image bytes are in no format PIL can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:  # PIL's damaged-data errors
        raise BadSampleError(f"its image cannot be decoded ({type(error).__name__}: {error})") from None
    return _EXTENSIONS.get(image_format, f".{image_format.lower()}")


def _store_image(out_dir: Path, image_dir_name: str, image_bytes: bytes, extension: str) -> str:
    digest = hashlib.sha256(image_bytes).hexdigest()[:32]
    relative = f"{image_dir_name}/{digest[:2]}/{digest}{extension}"
    target = out_dir / relative
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(target, image_bytes)
    return relative


def _remove_unreferenced_images(out_dir: Path, image_dir_name: str, referenced: Iterable[str]) -> None:
    """Drops images a previous run with other arguments left behind (the folder is this dataset's own)."""
    keep = set(referenced)
    for file in (out_dir / image_dir_name).rglob("*"):
        if file.is_file() and file.relative_to(out_dir).as_posix() not in keep:
            file.unlink()


def _write_atomically(path: Path, content: str | bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    if isinstance(content, bytes):
        temporary.write_bytes(content)
    else:
        temporary.write_text(content, encoding="utf-8")
    os.replace(temporary, path)
