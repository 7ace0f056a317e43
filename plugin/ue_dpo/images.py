"""Decoding an image completely, or saying why it cannot be: training and evaluation refuse damaged files."""

import io
import threading
from typing import Any

from PIL import Image, ImageFile

_strict_decoding = threading.Lock()


def load_image_strictly(source: Any) -> Image.Image:
    """The fully decoded image at `source` (a path, bytes, a `{"bytes", "path"}` dict or a PIL image).

    Raises OSError for a missing, unidentifiable or truncated file even where `PIL.ImageFile.LOAD_TRUNCATED_IMAGES`
    is on: lmms-eval turns that module-wide switch on when imported, which would fill a truncated image with grey
    and score it silently. PIL reads the switch while decoding, so it is off for the duration of the decode.
    """
    if isinstance(source, dict):
        source = source["bytes"] if source.get("bytes") is not None else source["path"]
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    with _strict_decoding:
        lenient = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            image = source if isinstance(source, Image.Image) else Image.open(source)
            image.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = lenient
    return image


def unreadable_image_reason(source: Any) -> str | None:
    """Why `source` does not decode completely (the OSError's text), or None when it does."""
    try:
        load_image_strictly(source)
    except OSError as error:
        return str(error) or type(error).__name__
    return None


def describe_image_source(source: Any) -> str:
    """The image's path for messages, or what kind of embedded image it is."""
    if isinstance(source, str):
        return source
    if isinstance(source, dict) and source.get("path"):
        return str(source["path"])
    return f"an embedded {type(source).__name__} image"
