"""The one definition of "the same masks as the reference", for the benchmark and the tests.

Records are `generate` outputs with `output_mode="coco_rle"`.

* **Exact modes** (`exact_parity`): every reference record has a twin among ours with the same
  RLE, bbox, area, crop_box and point_coords, and no record of ours is left over. The scores
  come out of float32 matrix products summed in another order than the reference's, so
  `predicted_iou` and `stability_score` may differ by float rounding: at most
  `SCORE_TOLERANCE` (1e-6, a few float32 ulps at scores near 1).
* **Fast modes** (`fast_parity`): each reference mask matched to our mask of highest IoU;
  the mean of those IoUs at least `FAST_MIN_MEAN_IOU` (0.99), and the mask counts differing by
  at most `FAST_MAX_COUNT_MISMATCH` (2%) of the reference's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

SCORE_TOLERANCE = 1e-6
FAST_MIN_MEAN_IOU = 0.99
FAST_MAX_COUNT_MISMATCH = 0.02


def _counts(segmentation: dict[str, Any]) -> Any:
    counts = segmentation["counts"]
    return counts.decode("ascii") if isinstance(counts, bytes) else counts


def _twin_key(record: dict[str, Any]) -> tuple:
    """What must be identical between a reference record and its twin."""
    return (
        _counts(record["segmentation"]),
        tuple(record["segmentation"]["size"]),
        tuple(record["bbox"]),
        record["area"],
        tuple(record["crop_box"]),
        tuple(tuple(p) for p in record["point_coords"]),
    )


@dataclass
class ExactParity:
    """How our records compare with the reference's, twin by twin."""

    n_reference: int
    n_ours: int
    n_twinned: int  # reference records with an identical twin of ours
    max_delta_predicted_iou: float  # over twins (0 when there are none)
    max_delta_stability_score: float

    @property
    def ok(self) -> bool:
        return (
            self.n_twinned == self.n_reference == self.n_ours
            and self.max_delta_predicted_iou <= SCORE_TOLERANCE
            and self.max_delta_stability_score <= SCORE_TOLERANCE
        )


def exact_parity(reference: list[dict[str, Any]], ours: list[dict[str, Any]]) -> ExactParity:
    """Twins by identical masks, boxes, areas, crops and points; score differences of twins."""
    unmatched: dict[tuple, list[dict[str, Any]]] = {}
    for record in ours:
        unmatched.setdefault(_twin_key(record), []).append(record)
    twinned, delta_iou, delta_stability = 0, 0.0, 0.0
    for record in reference:
        candidates = unmatched.get(_twin_key(record))
        if not candidates:
            continue
        # Twins with the same key differ at most in their scores: take the closest.
        twin = min(candidates, key=lambda o: abs(o["predicted_iou"] - record["predicted_iou"]))
        candidates.remove(twin)
        twinned += 1
        delta_iou = max(delta_iou, abs(twin["predicted_iou"] - record["predicted_iou"]))
        delta_stability = max(
            delta_stability, abs(twin["stability_score"] - record["stability_score"])
        )
    return ExactParity(len(reference), len(ours), twinned, delta_iou, delta_stability)


@dataclass
class FastParity:
    """Each reference mask matched to our mask of highest IoU."""

    n_reference: int
    n_ours: int
    mean_iou: float  # of the best matches; 1.0 when both are empty, 0.0 when only one is
    count_mismatch: float  # |n_ours - n_reference| / n_reference (0 when both are empty)

    @property
    def ok(self) -> bool:
        return self.mean_iou >= FAST_MIN_MEAN_IOU and self.count_mismatch <= FAST_MAX_COUNT_MISMATCH


def fast_parity(reference: list[dict[str, Any]], ours: list[dict[str, Any]]) -> FastParity:
    """Mean best-match IoU and relative count mismatch."""
    n_ref, n_ours = len(reference), len(ours)
    if n_ref == 0:
        return FastParity(0, n_ours, float(n_ours == 0), 0.0 if n_ours == 0 else float("inf"))
    if n_ours == 0:
        return FastParity(n_ref, 0, 0.0, 1.0)
    ious = np.asarray(
        coco_mask.iou(
            [r["segmentation"] for r in reference], [o["segmentation"] for o in ours], [0] * n_ours
        )
    ).reshape(n_ref, n_ours)
    return FastParity(n_ref, n_ours, float(ious.max(axis=1).mean()), abs(n_ours - n_ref) / n_ref)
