"""Removing small islands and holes from masks, one bounding box at a time.

Equal to connected components over the whole image (8-connectivity), but each mask is
processed inside its box grown by one pixel, so the cost follows the mask, not the image.
"""

from __future__ import annotations

import cv2
import numpy as np


def remove_small_regions(
    mask: np.ndarray, box: tuple[int, int, int, int], min_area: int
) -> tuple[np.ndarray, bool]:
    """Fills holes then removes islands smaller than `min_area`; returns (mask, changed).

    `box` is the mask's inclusive XYXY box. Outside the grown box every pixel is background,
    which all background components touching the box's rim join; when that outside area is
    itself at least `min_area` those components are never small, so the box is enough.
    """
    height, width = mask.shape
    x0, y0 = max(box[0] - 1, 0), max(box[1] - 1, 0)
    x1, y1 = min(box[2] + 2, width), min(box[3] + 2, height)
    splits_outside = (x0 == 0 and x1 == width) or (y0 == 0 and y1 == height)
    if splits_outside or height * width - (x1 - x0) * (y1 - y0) < min_area:
        x0, y0, x1, y1 = 0, 0, width, height
    window = mask[y0:y1, x0:x1]
    rim = np.zeros(window.shape, dtype=bool)
    rim[[0, -1], :] = rim[:, [0, -1]] = True
    rim &= _inside_image_rim(window.shape, (x0, y0, x1, y1), (height, width))
    filled, holes_changed = _fill_small_holes(window, min_area, rim)
    cleaned, islands_changed = _drop_small_islands(filled, min_area)
    if not (holes_changed or islands_changed):
        return mask, False
    out = mask.copy()
    out[y0:y1, x0:x1] = cleaned
    return out, True


def _inside_image_rim(shape: tuple[int, int], window: tuple, image: tuple[int, int]) -> np.ndarray:
    """Rim pixels of the window that border image pixels outside the window."""
    x0, y0, x1, y1 = window
    height, width = image
    inside = np.zeros(shape, dtype=bool)
    if y0 > 0:
        inside[0, :] = True
    if y1 < height:
        inside[-1, :] = True
    if x0 > 0:
        inside[:, 0] = True
    if x1 < width:
        inside[:, -1] = True
    return inside


def _fill_small_holes(mask: np.ndarray, min_area: int, rim: np.ndarray) -> tuple[np.ndarray, bool]:
    """Background components below `min_area` become foreground, unless they reach the rim."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats((~mask).astype(np.uint8), connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    small = np.flatnonzero(sizes < min_area) + 1
    if len(small) and rim.any():
        small = np.setdiff1d(small, labels[rim])
    if len(small) == 0:
        return mask, False
    return mask | np.isin(labels, small), True


def _drop_small_islands(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, bool]:
    """Foreground components below `min_area` are removed; the largest stays if all are small."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    if not np.any(sizes < min_area):
        return mask, False
    keep = np.flatnonzero(sizes >= min_area) + 1
    if len(keep) == 0:
        keep = np.array([np.argmax(sizes) + 1])
    return np.isin(labels, keep), True
