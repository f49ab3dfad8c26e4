"""Image bytes to an RGB uint8 array, whatever the file's format, mode and orientation."""

from __future__ import annotations

import io
import warnings

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
    # Pillow's decompression-bomb check reads its header only; its limit (a global) becomes
    # ours, and the warning it gives below twice the limit an error.
    Image.MAX_IMAGE_PIXELS = max_image_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                upright = ImageOps.exif_transpose(image)
                return _to_rgb(upright)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ValueError(
            f"image too large: more than data.max_image_pixels = {max_image_pixels} pixels "
            "(raise it to accept the image)"
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot decode image: {error}") from error


def _to_rgb(image: Image.Image) -> np.ndarray:
    """RGB uint8 pixels of any Pillow mode: alpha dropped, 16-bit scaled to 8-bit."""
    if image.mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(image).astype(np.int64).clip(0, _SIXTEEN_BIT_MAX)
        gray = ((wide * 255 + _SIXTEEN_BIT_MAX // 2) // _SIXTEEN_BIT_MAX).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.array(image.convert("RGB"))
