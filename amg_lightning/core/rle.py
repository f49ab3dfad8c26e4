"""Run-length encoding of masks in COCO's column-major convention.

Internally an RLE is a 1-D int64 array of run lengths, zeros first (a mask that starts
with a foreground pixel starts with a zero-length run), for an image of known size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pycocotools import mask as coco_mask
from torch import Tensor
from torch.nn import functional as F


def encode_in_image(
    masks: Tensor, crop_box: list[int], image_size: tuple[int, int]
) -> list[np.ndarray]:
    """RLEs in the full image of B x h x w masks cut out at `crop_box` (zeros elsewhere).

    All masks are encoded at once on their device; only the change positions are copied back.
    """
    height, width = image_size
    x0, y0 = crop_box[0], crop_box[1]
    columns = masks.transpose(1, 2)  # B x w x h: column-major, as COCO counts
    if masks.shape[1] == height:
        # Columns follow each other directly in the image, so the crop is one long column.
        columns = columns.reshape(masks.shape[0], 1, -1)
    padded = F.pad(columns, (1, 1))  # a zero before and after each column
    changes = (padded[..., 1:] != padded[..., :-1]).nonzero().cpu().numpy()
    mask_index, column, row = changes[:, 0], changes[:, 1], changes[:, 2]
    positions = (x0 + column) * height + y0 + row
    per_mask = np.split(positions, np.cumsum(np.bincount(mask_index, minlength=len(masks)))[:-1])
    return [_counts_from_changes(p, height * width) for p in per_mask]


def _counts_from_changes(positions: np.ndarray, total: int) -> np.ndarray:
    """Run lengths from sorted change positions (alternating on, off) in [0, total]."""
    if len(positions) and positions[-1] == total:
        positions = positions[:-1]  # the last run ends at the last pixel: no trailing zeros
    return np.diff(np.concatenate([[0], positions, [total]])).astype(np.int64)


def decode(counts: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The H x W boolean mask of an RLE."""
    height, width = size
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(width, height).T


def area(counts: np.ndarray) -> int:
    return int(counts[1::2].sum())


def to_uncompressed(counts: np.ndarray, size: tuple[int, int]) -> dict[str, Any]:
    return {"size": [int(size[0]), int(size[1])], "counts": counts.tolist()}


def to_coco(counts: np.ndarray, size: tuple[int, int]) -> dict[str, Any]:
    """COCO's compressed RLE, with counts as a str so it serialises to JSON."""
    rle = coco_mask.frPyObjects(to_uncompressed(counts, size), size[0], size[1])
    return {"size": [int(size[0]), int(size[1])], "counts": rle["counts"].decode("ascii")}


def encode_mask(mask: np.ndarray) -> np.ndarray:
    """RLE of one H x W boolean mask on the CPU."""
    tensor = torch.from_numpy(np.ascontiguousarray(mask))[None]
    return encode_in_image(tensor, [0, 0, mask.shape[1], mask.shape[0]], mask.shape)[0]
