"""Point grids and the crop pyramid."""

from __future__ import annotations

import math

import numpy as np


def point_grid(n_per_side: int) -> np.ndarray:
    """n*n points at the centres of an n x n tiling of [0, 1]^2, row by row, as (x, y)."""
    offset = 1 / (2 * n_per_side)
    centres = np.linspace(offset, 1 - offset, n_per_side)
    xs, ys = np.meshgrid(centres, centres)
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def layer_point_grids(n_per_side: int, n_layers: int, downscale: int) -> list[np.ndarray]:
    """One grid per crop layer; layer i has n_per_side / downscale**i points per side."""
    return [point_grid(int(n_per_side / downscale**i)) for i in range(n_layers + 1)]


def crop_boxes(
    image_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """XYXY crop boxes and their layer: the whole image, then 2^i x 2^i overlapping crops."""
    height, width = image_size
    boxes, layers = [[0, 0, width, height]], [0]
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * min(height, width) * (2 / per_side))
        crop_w = math.ceil((overlap * (per_side - 1) + width) / per_side)
        crop_h = math.ceil((overlap * (per_side - 1) + height) / per_side)
        for i in range(per_side):  # x outer, y inner: the reference's order
            for j in range(per_side):
                x0, y0 = int((crop_w - overlap) * i), int((crop_h - overlap) * j)
                boxes.append([x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)])
                layers.append(layer)
    return boxes, layers
