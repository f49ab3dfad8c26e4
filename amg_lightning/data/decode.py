"""Image bytes to an RGB uint8 array, whatever the file's format, mode and orientation."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")

# Pillow opens 16-bit grayscale as one of these integer modes; "I" is 32-bit but holds
# 16-bit values when it comes from a 16-bit PNG or TIFF.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_SIXTEEN_BIT_MAX = 65535

# Pixels an image may have: about 180 MP, twice Pillow's own warning threshold.
DEFAULT_MAX_IMAGE_PIXELS = 180_000_000


def decode_image(data: bytes, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode an image file's bytes to an HWC uint8 RGB array, upright as EXIF says.

    Raises ValueError when the bytes are not a readable image, or when the header says it
    has more than `max_image_pixels` pixels (a decompression bomb, or simply too large):
    then nothing is decoded.
    """
    try:
        with _pillow_check_off(), Image.open(io.BytesIO(data)) as image:
            # The header alone gives the size: nothing is decoded before this check.
            width, height = image.size
            if width * height > max_image_pixels:
                raise ImageTooLarge(
                    f"image too large: {width}x{height} is more than data.max_image_pixels = "
                    f"{max_image_pixels} pixels (raise it to accept the image)"
                )
            return _to_rgb(ImageOps.exif_transpose(image))
    except ImageTooLarge as error:
        raise ValueError(str(error)) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot decode image: {error}") from error


class ImageTooLarge(Exception):
    """An image whose header gives more pixels than allowed."""


@contextmanager
def _pillow_check_off() -> Iterator[None]:
    """Pillow's own decompression-bomb limit off while our limit applies; restored after, so a
    caller's setting of the global is kept."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _to_rgb(image: Image.Image) -> np.ndarray:
    """RGB uint8 pixels of any Pillow mode: alpha dropped, 16-bit scaled to 8-bit."""
    if image.mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(image).astype(np.int64).clip(0, _SIXTEEN_BIT_MAX)
        gray = ((wide * 255 + _SIXTEEN_BIT_MAX // 2) // _SIXTEEN_BIT_MAX).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.array(image.convert("RGB"))
