"""Image bytes to an RGB uint8 array, whatever the file's format, mode and orientation."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")

# Pillow opens 16-bit grayscale as one of these integer modes; "I" is 32-bit but holds
# 16-bit values when it comes from a 16-bit PNG or TIFF.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_SIXTEEN_BIT_MAX = 65535


def decode_image(data: bytes) -> np.ndarray:
    """Decode an image file's bytes to an HWC uint8 RGB array, upright as EXIF says.

    Raises ValueError when the bytes are not a readable image.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            upright = ImageOps.exif_transpose(image)
            return _to_rgb(upright)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot decode image: {error}") from error


def _to_rgb(image: Image.Image) -> np.ndarray:
    """RGB uint8 pixels of any Pillow mode: alpha dropped, 16-bit scaled to 8-bit."""
    if image.mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(image).astype(np.int64).clip(0, _SIXTEEN_BIT_MAX)
        gray = ((wide * 255 + _SIXTEEN_BIT_MAX // 2) // _SIXTEEN_BIT_MAX).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.array(image.convert("RGB"))
