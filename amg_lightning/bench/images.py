"""Benchmark images: photo files (read as the tests read them) and synthetic scenes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from amg_lightning.data.decode import IMAGE_EXTENSIONS


@dataclass
class Image:
    name: str
    pixels: np.ndarray  # HWC uint8 RGB


def image_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(
                    p for p in path.iterdir() if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS
                )
            )
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"error: no such image file or folder: {path}")
    return files


def read_image(path: Path, long_side: int | None) -> np.ndarray:
    """An RGB uint8 photo, shrunk so its longer side is at most `long_side` (if given)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"error: cannot read image {path}")
    return shrink(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), long_side)


def shrink(image: np.ndarray, long_side: int | None) -> np.ndarray:
    """`image` shrunk so its longer side is at most `long_side` (unchanged if None)."""
    if long_side and max(image.shape[:2]) > long_side:
        scale = long_side / max(image.shape[:2])
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image)


def synthetic_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth blobs of colour with a few hard-edged shapes: regions a model can segment."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, size=(max(2, height // 250), max(2, width // 250), 3))
    image = cv2.resize(cells.astype(np.uint8), (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(12):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(width // 40 + 1, width // 6 + 2)),) * 2
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        cv2.ellipse(image, center, axes, 0, 0, 360, color, thickness=-1)
    return image


def load_images(
    paths: list[Path],
    max_images: int | None = None,
    long_side: int | None = None,
    synthetic_size: tuple[int, int] | None = None,
) -> list[Image]:
    files = image_files(paths)
    if max_images is not None:
        files = files[:max_images]
    images = [Image(p.name, read_image(p, long_side)) for p in files]
    if synthetic_size is not None:
        width, height = synthetic_size
        images.append(Image(f"synthetic-{width}x{height}", synthetic_image(width, height)))
    if not images:
        raise SystemExit("error: no images found")
    return images


def image_set_label(images: list[Image]) -> str:
    if len(images) <= 4:
        return ", ".join(f"{i.name} {i.pixels.shape[1]}x{i.pixels.shape[0]}" for i in images)
    sides = [max(i.pixels.shape[:2]) for i in images]
    return f"{len(images)} images, long side {min(sides)}-{max(sides)}"
