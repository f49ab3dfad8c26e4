"""Run-length encoding of masks in COCO's column-major convention.

Internally an RLE is a 1-D int64 array of run lengths, zeros first (a mask that starts
with a foreground pixel starts with a zero-length run), for an image of known size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pycocotools import mask as coco_mask
from torch import Tensor
from torch.nn import functional as F


@dataclass
class Encoded:
    """RLEs of B masks in the full image, and their XYXY boxes (inclusive, image frame)."""

    counts: list[np.ndarray]
    boxes: np.ndarray  # B x 4, int64; an empty mask's box is its crop's top-left corner


def encode_in_image(masks: Tensor, crop_box: list[int], image_size: tuple[int, int]) -> Encoded:
    """RLEs and boxes in the full image of B x h x w masks cut out at `crop_box`.

    Both come from the masks' vertical changes, found at once on their device, without a
    transposed copy; only the change positions are copied back.
    """
    return encode_changes(*_vertical_changes(masks), len(masks), crop_box, image_size)


def encode_changes(
    mask_index: np.ndarray,
    row: np.ndarray,
    column: np.ndarray,
    count: int,
    crop_box: list[int],
    image_size: tuple[int, int],
) -> Encoded:
    """RLEs and boxes in the full image of `count` masks cut out at `crop_box`, from their
    vertical changes: the (mask, row, column) of every pixel unlike the one above it, with
    background above the first row and below the last (row h is the change after it)."""
    height, width = image_size
    x0, y0 = crop_box[0], crop_box[1]
    if count == 0:
        return Encoded(counts=[], boxes=np.zeros((0, 4), dtype=np.int64))
    mask_index, row, column = _column_major(mask_index, row, column)
    boxes = _boxes(count, mask_index[0::2], column[0::2], row[0::2], row[1::2] - 1)
    positions = (x0 + column) * height + y0 + row
    # A run that reaches a column's last image row and goes on at the next column's first
    # ends and starts at the same position: drop both, it is one run.
    joined = np.flatnonzero((positions[1:] == positions[:-1]) & (mask_index[1:] == mask_index[:-1]))
    keep = np.ones(len(positions), dtype=bool)
    keep[joined] = keep[joined + 1] = False
    mask_index, positions = mask_index[keep], positions[keep]
    per_mask = np.split(positions, np.cumsum(np.bincount(mask_index, minlength=count))[:-1])
    counts = [_counts_from_changes(p, height * width) for p in per_mask]
    return Encoded(counts=counts, boxes=boxes + np.array([x0, y0, x0, y0]))


def _column_major(
    mask_index: np.ndarray, row: np.ndarray, column: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The changes sorted by mask, then column, then row: COCO's order. Each column's changes
    then alternate start, end, so even entries start runs and odd entries end them.

    One int64 key per change sorts several times faster than a three-key lexsort.
    """
    rows, columns = int(row.max(initial=0)) + 1, int(column.max(initial=0)) + 1
    key = np.sort((mask_index * columns + column) * rows + row)
    mask_index, cell = np.divmod(key, columns * rows)
    column, row = np.divmod(cell, rows)
    return mask_index, row, column


def _vertical_changes(masks: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mask, row, column) of every pixel that differs from the one above it, with a background
    row above and below each mask (row h is the change after the last row)."""
    padded = F.pad(masks, (0, 0, 1, 1))
    if masks.device.type != "cpu":
        return tuple((padded[:, 1:] != padded[:, :-1]).nonzero().cpu().numpy().T)
    return true_indices(row_changes(padded))


def row_changes(masks: Tensor) -> Tensor:
    """B x h x w booleans -> B x (h - 1) x w: True where a pixel differs from the one above.

    XOR of the bytes: on the CPU several times faster than comparing booleans.
    """
    as_bytes = masks.view(torch.uint8)
    return (as_bytes[:, 1:] ^ as_bytes[:, :-1]).view(torch.bool)


def true_indices(x: Tensor) -> tuple[np.ndarray, ...]:
    """Per dimension, the indices of the True entries of a boolean CPU tensor, in order.

    NumPy's flat search is several times faster than `Tensor.nonzero`.
    """
    return np.unravel_index(np.flatnonzero(x.contiguous().numpy()), x.shape)


def _boxes(
    count: int, mask_index: np.ndarray, column: np.ndarray, first: np.ndarray, last: np.ndarray
) -> np.ndarray:
    """XYXY boxes (crop frame) from each run's mask, column, first and last row."""
    boxes = np.zeros((count, 4), dtype=np.int64)
    if len(mask_index) == 0:
        return boxes
    present, group_starts = np.unique(mask_index, return_index=True)
    for axis, values, reduce in (
        (0, column, np.minimum),
        (1, first, np.minimum),
        (2, column, np.maximum),
        (3, last, np.maximum),
    ):
        boxes[present, axis] = reduce.reduceat(values, group_starts)
    return boxes


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


def to_output(counts: np.ndarray, size: tuple[int, int], output_mode: str) -> Any:
    """A record's "segmentation" in the generator's `output_mode`."""
    if output_mode == "coco_rle":
        return to_coco(counts, size)
    if output_mode == "uncompressed_rle":
        return to_uncompressed(counts, size)
    return decode(counts, size)


def encode_mask(mask: np.ndarray) -> Encoded:
    """RLE and box of one H x W boolean mask, on the CPU."""
    tensor = torch.from_numpy(np.ascontiguousarray(mask))[None]
    return encode_in_image(tensor, [0, 0, mask.shape[1], mask.shape[0]], mask.shape)
