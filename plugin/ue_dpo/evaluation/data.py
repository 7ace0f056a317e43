"""Where the benchmark tasks find their files, and the settings they read.

Each task reads a local directory of the official files, named by a key of the task YAML's
`dataset_kwargs` (a YAML that `include:`s ours can set it) or by an environment variable; with
neither, it fetches the public files into the cache directory, unless the Hugging Face offline
variables say not to. Settings (judge model, spaCy model, ...) come from the YAML's `metadata`,
else from an environment variable, else a default.

Cache directory: `UE_DPO_CACHE_DIR`, else `$XDG_CACHE_HOME/ue_dpo`, else `~/.cache/ue_dpo`.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from ue_dpo.images import describe_image_source, load_image_strictly

CACHE_DIR_ENV = "UE_DPO_CACHE_DIR"
OFFLINE_ENV_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE = {"1", "true", "yes", "on"}


class BenchmarkDataError(FileNotFoundError):
    """A benchmark file that is not there, with where to get it."""


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "ue_dpo"


def offline_variable() -> str | None:
    """The first Hugging Face offline variable that is set to true, if any."""
    return next((name for name in OFFLINE_ENV_VARS if os.environ.get(name, "").strip().lower() in _TRUE), None)


def configured_dir(dataset_kwargs: Mapping[str, Any] | None, key: str, env: str) -> Path | None:
    """`dataset_kwargs[key]`, else the environment variable `env`, as a path; None when neither is set."""
    value = (dataset_kwargs or {}).get(key) or os.environ.get(env, "").strip()
    return Path(value).expanduser() if value else None


def setting(metadata: Mapping[str, Any] | None, key: str, env: str, default: Any = None) -> Any:
    """`metadata[key]`, else the environment variable `env`, else `default`."""
    if metadata and metadata.get(key) is not None:
        return metadata[key]
    value = os.environ.get(env, "").strip()
    return value if value else default


def require_file(path: Path, what: str, source: str) -> Path:
    if not path.is_file():
        raise BenchmarkDataError(f"{what}: {path} does not exist. {source}")
    return path


def benchmark_image(source: Any, what: str, where_to_get_it: str) -> Image.Image:
    """The benchmark image at `source` decoded completely, as RGB; a missing, damaged or truncated file stops the
    run (lmms-eval's PIL setting would otherwise score a truncated image with its missing part grey)."""
    try:
        image = load_image_strictly(source)
    except OSError as error:
        raise BenchmarkDataError(
            f"{what} ({describe_image_source(source)}) cannot be read: {error}. Replace it with "
            f"a complete copy. {where_to_get_it}"
        ) from error
    return image.convert("RGB")


def download_file(url: str, destination: Path, *, how_to_go_offline: str) -> Path:
    """`url` saved at `destination` (kept if already there); refused when an offline variable is set."""
    if destination.is_file():
        return destination
    offline = offline_variable()
    if offline:
        raise BenchmarkDataError(
            f"{destination.name} is not available locally and {offline} is set, so it is not "
            f"downloaded from {url}. {how_to_go_offline}"
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as handle:
            shutil.copyfileobj(response, handle, length=1 << 20)
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        raise BenchmarkDataError(f"Downloading {url} failed ({error}). {how_to_go_offline}") from None
    partial.replace(destination)
    return destination
