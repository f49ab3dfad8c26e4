"""Photos for the tests: AMG_TEST_IMAGES's files, or the photos that ship with scikit-image.

Files are read as the benchmark reads them (amg_lightning/bench/images.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from amg_lightning.bench.images import read_image, shrink

SKIMAGE_PREFIX = "skimage:"


def read_photo(photo: str, images: Path | None, max_side: int | None = None) -> np.ndarray:
    """The photo "skimage:NAME" (bundled with scikit-image, the demo extra) or "FILE" in `images`.

    Raises FileNotFoundError when FILE is asked for without a folder that holds it.
    """
    if photo.startswith(SKIMAGE_PREFIX):
        from skimage import data

        return shrink(getattr(data, photo[len(SKIMAGE_PREFIX) :])(), max_side)
    if images is None or not (images / photo).is_file():
        raise FileNotFoundError(f"{photo} is not in AMG_TEST_IMAGES ({images})")
    return read_image(images / photo, max_side)
