"""The public RLHF-V and RLAIF-V preference datasets as LLaMA-Factory ranking datasets.

Every public copy is a set of parquet files with one `train` split, read in its own schema:
- openbmb/RLHF-V-Dataset (5.7k pairs, one `RLHF-V-Dataset.parquet`): `image` `{"bytes", "path"}`, `text` a JSON
  string holding `question`, `chosen` and `rejected`, `idx` an int64.
- llamafactory/RLHF-V (the copy LLaMA-Factory's own `dataset_info.json` names `rlhf_v`; one `rlhf-v.parquet`):
  sharegpt, `conversations` one `{"from": "human", "value"}` turn, `chosen` and `rejected` `{"from": "gpt", "value"}`,
  `images` a list of one image.
- openbmb/RLAIF-V-Dataset (83k pairs in `RLAIF-V-Dataset_NNN.parquet` shards): `image`, `question`, `chosen` and
  `rejected` columns; `idx` a string.

`convert` writes `<name>.json` (sharegpt; the user turn is `<image>\n` + the question, as RLHF-V's and RLAIF-V's
training code build it), the images as files under `<name>_images/` (original bytes, named by content hash, so
images shared by several pairs are stored once), `<name>_skipped.jsonl`, `<name>_source.json` (the hub revision and
the digests of the files read, the subset and the row counts) and the `<name>` entry of `dataset_info.json`.
Re-running with the same arguments rewrites the same bytes.
"""

import difflib
import hashlib
import io
import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

IMAGE_PLACEHOLDER = "<image>"
BAD_SAMPLE_POLICIES = ("skip", "error")
SUBSET_KINDS = ("all", "first", "random")
PROVENANCE_SUFFIX = "_source.json"
_SHAREGPT_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
_EXTENSIONS = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
}
_DIGEST_CHUNK = 1 << 20

logger = logging.getLogger(__name__)


class BadSampleError(ValueError):
    """A source row that cannot become a training pair (its message names the row)."""


class SourceError(ValueError):
    """The source is missing or is not the dataset it was named as."""


@dataclass(frozen=True)
class SourceSchema:
    """One public copy: its columns, and how one of its rows reads as (question, chosen, rejected, image)."""

    hub_id: str
    columns: tuple[str, ...]
    read_pair: Callable[[dict[str, Any]], tuple[Any, Any, Any, Any]]  # unchecked values

    def describe(self) -> str:
        return f"{self.hub_id} (columns {', '.join(self.columns)})"


@dataclass(frozen=True)
class PreferenceSource:
    name: str
    schemas: tuple[SourceSchema, ...]  # the first is the copy downloaded by default

    @property
    def hub_id(self) -> str:
        return self.schemas[0].hub_id


def _openbmb_rlhf_v_pair(row: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    try:
        text = json.loads(row["text"])
    except (TypeError, json.JSONDecodeError) as error:
        raise BadSampleError(f"its `text` field is not JSON ({error})") from None
    if not isinstance(text, dict):
        raise BadSampleError("its `text` field is not a JSON object with question, chosen and rejected")
    return text.get("question"), text.get("chosen"), text.get("rejected"), row["image"]


def _sharegpt_pair(row: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    turns, images = row["conversations"], row["images"]
    if (
        not isinstance(turns, list)
        or len(turns) != 1
        or not isinstance(turns[0], dict)
        or turns[0].get("from") != "human"
    ):
        raise BadSampleError("its `conversations` is not a single `human` turn")
    if images is not None and len(images) > 1:
        raise BadSampleError(f"it has {len(images)} images; a pair has one")
    return (
        turns[0].get("value"),
        _sharegpt_response(row, "chosen"),
        _sharegpt_response(row, "rejected"),
        images[0] if images else None,
    )


def _sharegpt_response(row: dict[str, Any], side: str) -> Any:
    turn = row[side]
    if not isinstance(turn, dict) or turn.get("from") != "gpt":
        raise BadSampleError(f"its `{side}` is not a `gpt` turn")
    return turn.get("value")


def _openbmb_rlaif_v_pair(row: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    return row["question"], row["chosen"], row["rejected"], row["image"]


SOURCES = {
    "rlhf_v": PreferenceSource(
        "rlhf_v",
        (
            SourceSchema("openbmb/RLHF-V-Dataset", ("image", "text", "idx"), _openbmb_rlhf_v_pair),
            SourceSchema("llamafactory/RLHF-V", ("conversations", "chosen", "rejected", "images"), _sharegpt_pair),
        ),
    ),
    "rlaif_v": PreferenceSource(
        "rlaif_v",
        (
            SourceSchema(
                "openbmb/RLAIF-V-Dataset", ("image", "question", "chosen", "rejected", "idx"), _openbmb_rlaif_v_pair
            ),
        ),
    ),
}


@dataclass(frozen=True)
class Subset:
    """Which source rows to convert, by their index in the source (bad rows inside the subset are skipped, so a
    subset is the same rows wherever it is converted): all of them, the first `rows`, or `rows` drawn at random
    with `seed`."""

    kind: str = "all"
    rows: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in SUBSET_KINDS:
            raise ValueError(f"subset kind {self.kind!r}; use one of: {', '.join(SUBSET_KINDS)}")
        if (self.kind == "all") != (self.rows is None):
            raise ValueError("a subset `first` or `random` needs its number of rows; `all` takes none")
        if self.rows is not None and (isinstance(self.rows, bool) or not isinstance(self.rows, int) or self.rows < 1):
            raise ValueError(f"a subset is a positive number of rows, got {self.rows!r}")
        if (self.kind == "random") != isinstance(self.seed, int):
            raise ValueError("a `random` subset needs an integer seed; the others take none")


def _random_subset_rows(total: int, rows: int, seed: int) -> set[int]:
    """The `rows` source indices that rank first by sha256 of "seed:index": the same on every machine and Python."""
    ranked = sorted(range(total), key=lambda index: hashlib.sha256(f"{seed}:{index}".encode()).digest())
    return set(ranked[:rows])


@dataclass(frozen=True)
class ConversionReport:
    dataset_name: str
    pairs: int
    images: int
    skipped: int
    records_path: Path
    skipped_path: Path
    provenance_path: Path

    def summary(self) -> str:
        return (
            f"{self.dataset_name}: wrote {self.pairs} pairs ({self.images} distinct images) to "
            f"{self.records_path}; skipped {self.skipped} bad samples (listed in {self.skipped_path}); "
            f"source recorded in {self.provenance_path}"
        )


def dataset_info_entry(name: str) -> dict[str, Any]:
    return {
        "file_name": f"{name}.json",
        "formatting": "sharegpt",
        "ranking": True,
        "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected", "images": "images"},
        "tags": dict(_SHAREGPT_TAGS),
    }


def read_provenance(dataset_dir: Path | str, name: str) -> dict[str, Any] | None:
    """What `convert` recorded about dataset `name` in `dataset_dir`; None for a dataset it did not write."""
    path = Path(dataset_dir) / f"{name}{PROVENANCE_SUFFIX}"
    return json.loads(path.read_text()) if path.is_file() else None


def convert(
    dataset_name: str,
    out_dir: Path,
    *,
    source: str | None = None,
    revision: str | None = None,
    subset: Subset = Subset(),
    on_bad_sample: str = "skip",
) -> ConversionReport:
    """Converts `dataset_name` (a key of SOURCES) from `source` (a hub id, downloaded at `revision`, or a local
    folder of its parquet or arrow files; default: its first public copy) into the LLaMA-Factory dataset folder
    `out_dir`.

    With `on_bad_sample: skip` bad rows are logged, counted and listed in `<name>_skipped.jsonl`, with `error` the
    first one stops the run before any record or dataset_info.json is written.
    """
    if dataset_name not in SOURCES:
        raise SourceError(f"unknown dataset {dataset_name!r}; choose one of: {', '.join(SOURCES)}")
    if on_bad_sample not in BAD_SAMPLE_POLICIES:
        raise ValueError(f"on_bad_sample={on_bad_sample!r}; use one of: {', '.join(BAD_SAMPLE_POLICIES)}")
    spec = SOURCES[dataset_name]
    source = source or spec.hub_id
    folder, hub = _local_copy(spec, source, revision)
    files = _data_files(spec, folder)
    out_dir = Path(out_dir)
    image_dir_name = f"{dataset_name}_images"

    selected = None
    if subset.kind == "random":
        total = sum(1 for _ in _source_rows(spec, source, folder, files)[1])
        if subset.rows > total:
            raise SourceError(f"--random {subset.rows} asks for more rows than {source} holds ({total})")
        selected = _random_subset_rows(total, subset.rows, subset.seed)
    schema, rows = _source_rows(spec, source, folder, files)
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    written_images: set[str] = set()
    rows_read = 0
    for position, row in enumerate(rows):
        if subset.kind == "first" and position == subset.rows:
            break
        rows_read += 1
        if selected is not None and position not in selected:
            continue
        try:
            record, image_bytes, extension = _pair_record(schema, row, position)
        except BadSampleError as error:
            message = f"{dataset_name} sample at row {position}{_idx_note(row)}: {error}"
            if on_bad_sample == "error":
                raise BadSampleError(f"{message}. Fix or remove that row, or pass --on-bad-sample skip.") from None
            logger.warning("skipping %s", message)
            skipped.append({"row": position, "idx": row.get("idx"), "reason": str(error)})
            continue
        relative_image = _store_image(out_dir, image_dir_name, image_bytes, extension)
        written_images.add(relative_image)
        record["images"] = [relative_image]
        records.append(record)
    if subset.kind == "first" and rows_read < subset.rows:
        raise SourceError(f"--first {subset.rows} asks for more rows than {source} holds ({rows_read})")

    _remove_unreferenced_images(out_dir, image_dir_name, written_images)
    out_dir.mkdir(parents=True, exist_ok=True)
    records_path = out_dir / f"{dataset_name}.json"
    skipped_path = out_dir / f"{dataset_name}_skipped.jsonl"
    provenance_path = out_dir / f"{dataset_name}{PROVENANCE_SUFFIX}"
    provenance = {
        "dataset": dataset_name,
        "source": source,
        "schema": schema.hub_id,
        "hub": hub,
        "files": {file.relative_to(folder).as_posix(): _sha256(file) for file in files},
        "subset": {key: value for key, value in asdict(subset).items() if value is not None},
        "rows_read": rows_read,
        "pairs": len(records),
        "skipped": len(skipped),
    }
    _write_atomically(records_path, json.dumps(records, ensure_ascii=False, indent=1))
    _write_atomically(skipped_path, "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in skipped))
    _write_atomically(provenance_path, json.dumps(provenance, indent=1))
    info_path = out_dir / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info[dataset_name] = dataset_info_entry(dataset_name)
    _write_atomically(info_path, json.dumps(info, indent=2))
    return ConversionReport(
        dataset_name, len(records), len(written_images), len(skipped), records_path, skipped_path, provenance_path
    )


def _idx_note(row: dict[str, Any]) -> str:
    return f" (idx {row['idx']!r})" if "idx" in row else ""


def _local_copy(spec: PreferenceSource, source: str, revision: str | None) -> tuple[Path, dict[str, str] | None]:
    """The folder to read, and for a hub id the revision asked for and the commit it resolved to."""
    path = Path(source)
    if path.exists():
        if revision is not None:
            raise SourceError(
                f"--revision {revision} applies to a hub download; the --source folder {source} is "
                "read as it is (its files' digests are recorded)"
            )
        if not path.is_dir():
            raise SourceError(
                f"--source {source} is a file; pass the folder holding the {spec.hub_id} parquet or "
                "arrow files (or a `save_to_disk` folder)"
            )
        return path, None
    if path.is_absolute() or source.startswith(".") or source.count("/") != 1:
        raise SourceError(f"--source {source!r} is neither an existing folder nor a hub dataset id like {spec.hub_id}")
    if Path(path.parts[0]).is_dir():  # `data/rlhf-v` in a folder that has data/: a folder, mistyped
        raise SourceError(_missing_folder(spec, path))
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    try:
        snapshot = Path(
            snapshot_download(source, repo_type="dataset", revision=revision, allow_patterns=["*.parquet", "*.arrow"])
        )
    except (OSError, HfHubHTTPError, HFValidationError) as error:
        raise SourceError(
            f"cannot download {source} at revision {revision or 'main'} ({type(error).__name__}: "
            f"{error}); check --source and --revision, or download it and pass the folder. Nor is "
            f"{source} a folder under {Path.cwd()}: if you meant one, check its spelling"
        ) from None
    # huggingface_hub's cache keeps each download under snapshots/<commit>
    return snapshot, {"repo": source, "revision": revision or "main", "commit": snapshot.name}


def _missing_folder(spec: PreferenceSource, path: Path) -> str:
    """The message for `--source parent/name` where parent/ is a local folder and name is not in it."""
    names = sorted(child.name for child in path.parent.iterdir() if child.is_dir())
    near = difflib.get_close_matches(path.name, names, n=3, cutoff=0.5)
    hint = f" (did you mean {' or '.join(str(path.parent / name) for name in near)}?)" if near else ""
    return (
        f"--source folder {path} does not exist in {Path.cwd()}{hint}; pass the folder holding the "
        f"{spec.hub_id} parquet or arrow files. ({path.parent}/ is a folder here, so {path} is not taken for a "
        "hub dataset id; to download one, run from another folder.)"
    )


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def _data_files(spec: PreferenceSource, folder: Path) -> list[Path]:
    if _is_saved_dataset(folder):
        return sorted(folder.rglob("*.arrow"))
    for extension in ("parquet", "arrow"):
        files = sorted(folder.rglob(f"*.{extension}"))
        if files:
            copies = defaultdict(list)
            for file in files:
                copies[file.name].append(file)
            repeated = {name: paths for name, paths in copies.items() if len(paths) > 1}
            if repeated:
                name, paths = next(iter(repeated.items()))
                raise SourceError(
                    f"{folder} holds {len(paths)} copies of {name} ({', '.join(str(path.parent) for path in paths)}), "
                    "e.g. several snapshots of a Hugging Face cache; pass the one folder to read "
                    "(`.../snapshots/<commit>`) as --source, or download a revision with --revision"
                )
            if extension == "parquet":
                for file in files:
                    _check_parquet(spec, file)
            return files
    raise SourceError(
        f"--source {folder} holds no .parquet or .arrow files; download {spec.hub_id} there "
        f"(e.g. `hf download {spec.hub_id} --repo-type dataset --local-dir {folder}`)"
    )


def _check_parquet(spec: PreferenceSource, file: Path) -> None:
    """Refuse a parquet file that is unreadable, has no columns or no rows (datasets and Arrow crash on them)."""
    import pyarrow
    import pyarrow.parquet

    fix = f"download {spec.hub_id} again, or remove the file from the folder"
    try:
        metadata = pyarrow.parquet.read_metadata(file)
    except (pyarrow.ArrowException, OSError) as error:
        raise SourceError(f"{file} is not a readable parquet file ({error}); {fix}") from None
    if metadata.num_columns == 0:
        raise SourceError(f"{file} is a parquet file with no columns; {fix}")
    if metadata.num_rows == 0:
        raise SourceError(
            f"{file} is a parquet file with no rows (columns "
            f"{', '.join(metadata.schema.to_arrow_schema().names)}); {fix}"
        )


def _source_rows(
    spec: PreferenceSource, source: str, folder: Path, files: list[Path]
) -> tuple[SourceSchema, Iterator[dict[str, Any]]]:
    """The schema of the source and its `train` rows in order, streamed, the images left as stored."""
    import datasets

    if _is_saved_dataset(folder):
        saved = datasets.load_from_disk(str(folder))
        stream = (saved["train"] if isinstance(saved, datasets.DatasetDict) else saved).to_iterable_dataset()
    else:
        builder = files[0].suffix.removeprefix(".")
        stream = datasets.load_dataset(
            builder, data_files={"train": [str(file) for file in files]}, split="train", streaming=True
        )
    stream = stream.decode(False)
    columns = stream.column_names or []
    for schema in spec.schemas:
        if set(schema.columns) <= set(columns):
            return schema, iter(stream)
    raise SourceError(
        f"{source} has columns {', '.join(columns) or '(none)'}, which are none of the schemas "
        f"{spec.name} is read in: " + "; ".join(schema.describe() for schema in spec.schemas)
    )


def _pair_record(schema: SourceSchema, row: dict[str, Any], position: int) -> tuple[dict[str, Any], bytes, str]:
    question, chosen, rejected, image = schema.read_pair(row)
    question = _text("question", question).replace(IMAGE_PLACEHOLDER, "").strip()
    if not question:
        raise BadSampleError("the question is empty")
    chosen, rejected = _text("chosen", chosen), _text("rejected", rejected)
    for field_name, response in (("chosen", chosen), ("rejected", rejected)):
        if not response.strip():
            raise BadSampleError(f"the {field_name} response is empty")
        if IMAGE_PLACEHOLDER in response:
            raise BadSampleError(
                f"the {field_name} response contains {IMAGE_PLACEHOLDER}, which LLaMA-Factory "
                "would take for an image slot"
            )
    image_bytes = _image_bytes(image)
    extension = _checked_image_extension(image_bytes)
    record = {
        # RLHF-V's and RLAIF-V's training code: "<image>\n" + question (LLaVA's preprocessing strips it first)
        "messages": [{"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n{question}"}],
        "chosen": {"role": "assistant", "content": chosen},
        "rejected": {"role": "assistant", "content": rejected},
        "row": position,
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_DIGEST_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomically(path: Path, content: str | bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    if isinstance(content, bytes):
        temporary.write_bytes(content)
    else:
        temporary.write_text(content, encoding="utf-8")
    os.replace(temporary, path)
