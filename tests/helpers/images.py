"""Photos for the tests: AMG_TEST_IMAGES's files, or the photos that ship with scikit-image."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

SKIMAGE_PREFIX = "skimage:"


def shrink(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """`image` shrunk so its longer side is at most `max_side` (unchanged if None)."""
    if not max_side or max(image.shape[:2]) <= max_side:
        return image
    scale = max_side / max(image.shape[:2])
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def read_rgb(path: Path, max_side: int | None = None) -> np.ndarray:
    """An RGB uint8 photo, optionally shrunk so its longer side is at most `max_side`."""
    return shrink(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), max_side)


def read_photo(photo: str, images: Path | None, max_side: int | None = None) -> np.ndarray:
    """The photo "skimage:NAME" (bundled with scikit-image, the demo extra) or "FILE" in `images`.

    Raises FileNotFoundError when FILE is asked for without a folder that holds it.
    """
    if photo.startswith(SKIMAGE_PREFIX):
        from skimage import data

        image = getattr(data, photo[len(SKIMAGE_PREFIX) :])()
        return shrink(np.ascontiguousarray(image), max_side)
    if images is None or not (images / photo).is_file():
        raise FileNotFoundError(f"{photo} is not in AMG_TEST_IMAGES ({images})")
    return read_rgb(images / photo, max_side)
