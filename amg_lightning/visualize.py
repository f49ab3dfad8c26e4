"""Masks drawn over their image: a seeded colour per mask, blended in, and outlined."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils


def mask_colours(count: int, seed: int = 0) -> np.ndarray:
    """`count` random RGB colours as a (count, 3) uint8 array; the same for the same seed."""
    return np.random.default_rng(seed).integers(0, 256, size=(count, 3), dtype=np.uint8)


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """A bool (h, w) mask from a COCO RLE, compressed (counts str) or uncompressed (list)."""
    height, width = rle["size"]
    if isinstance(rle["counts"], list):
        rle = mask_utils.frPyObjects(dict(rle), height, width)
    return mask_utils.decode(rle).astype(bool)


def draw_masks(
    image: np.ndarray, masks_rles: Sequence[Mapping[str, Any]], seed: int = 0, alpha: float = 0.5
) -> np.ndarray:
    """A copy of the RGB uint8 `image` with each mask tinted in its colour and outlined in it.

    Mask i gets colour i of `mask_colours(len(masks_rles), seed)`.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 (h, w, 3), got {image.dtype} {image.shape}")
    masks = [decode_rle(rle) for rle in masks_rles]
    for mask in masks:
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask of size {mask.shape} does not fit image {image.shape[:2]}")
    colours = mask_colours(len(masks), seed)
    # Largest first, so small masks stay visible on top of the large ones they lie in.
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    canvas = image.astype(np.float32)
    for i in order:
        canvas[masks[i]] = (1 - alpha) * canvas[masks[i]] + alpha * colours[i]
    drawn = canvas.round().astype(np.uint8)
    # One pixel vanishes when a large photo is shown shrunk; thicken with the image size.
    thickness = max(1, max(image.shape[:2]) // 500)
    # Outlines last, at full strength, so no later tint washes them out.
    for i in order:
        contours, _ = cv2.findContours(
            masks[i].astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE
        )
        cv2.drawContours(drawn, contours, -1, colours[i].tolist(), thickness=thickness)
    return drawn
