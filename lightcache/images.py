"""The first-frame image of image-to-video runs: read it safely, and check it against the preset.

Example:
    >>> import io
    >>> from PIL import Image
    >>> from lightcache.images import open_image
    >>> buf = io.BytesIO(); Image.new("RGB", (8, 6), "red").save(buf, format="PNG")
    >>> open_image(buf.getvalue()).size
    (8, 6)
    >>> open_image(b"not an image")
    Traceback (most recent call last):
    ...
    lightcache.errors.LightcacheError: The image could not be read: it is not a PNG, JPEG, WebP or other image file.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from .errors import LightcacheError

#: Largest image accepted, in pixels (a 16-megapixel photo); larger ones are refused before being decoded.
MAX_IMAGE_PIXELS = 16_000_000


def open_image(source: str | os.PathLike | bytes | Any, label: str = "The image") -> Any:
    """An RGB ``PIL.Image`` from a file path, raw bytes or a PIL image; one clear error for anything else."""
    from PIL import Image

    if isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if path.is_dir():
                raise LightcacheError(f"{label} '{path}' is a directory, not an image file.")
            if not path.is_file():
                raise LightcacheError(f"{label} '{path}' does not exist.")
            data = path.read_bytes()
        elif isinstance(source, (bytes, bytearray)):
            data = bytes(source)
        else:
            raise LightcacheError(f"{label} must be an image file, got {type(source).__name__}.")
        largest = f"the largest accepted is {MAX_IMAGE_PIXELS // 1_000_000} megapixels"
        try:
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise LightcacheError(f"{label} is {width}x{height}; {largest}.")
            image.load()
        except LightcacheError:
            raise
        except Image.DecompressionBombError:
            # PIL refuses an image over twice its own limit (about 179 megapixels) before its size can be read.
            raise LightcacheError(f"{label} is far too large; {largest}.") from None
        except Exception:  # noqa: BLE001 - PIL raises many types for a bad file; the user needs one sentence
            raise LightcacheError(
                f"{label} could not be read: it is not a PNG, JPEG, WebP or other image file."
            ) from None
    return image.convert("RGB")


def check_image_for_preset(preset, image: Any) -> None:
    """Refuse a missing image for an image-to-video preset, and any image for a text-to-video one."""
    if image is None and preset.image_input == "required":
        raise LightcacheError(
            f"Preset '{preset.name}' turns an image into a video: give it the first frame (--image PATH in the "
            "command line, the Image box in the app)."
        )
    if image is not None and not preset.takes_image:
        raise LightcacheError(f"Preset '{preset.name}' is text-to-video only; it takes no image.")
