"""Telling a local model folder from a Hugging Face hub id, where a name may be either."""

import os


def is_local_path(name: str) -> bool:
    """True unless `name` has the hub's `owner/name` shape (absolute, `.`/`~`-relative and other shapes are paths)."""
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") != 1
