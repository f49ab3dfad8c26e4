"""The one definition of "the same masks as the reference", for the benchmark and the tests.

Records are `generate` outputs with `output_mode="coco_rle"`.

* **Exact modes** (`exact_parity`, `exact_differences`): every reference record has its twin at
  the same index among ours, with the same RLE, bbox, area and crop_box, point_coords within
  float64 rounding, and no record of ours is left over, up to float rounding. The logits come
  out of float32 matrix products summed in another order than the reference's, so a pixel
  whose logit lies within rounding of a cutoff may fall on the other side of it: a mask may
  differ in up to `ROUNDING_PIXELS` (2) such pixels (its box is then not compared, its area
  moves by as many), and its stability score, a ratio of pixel counts at threshold -/+ offset,
  by as many pixels' share (each at most 1 / area). Beyond that the scores may differ by
  `SCORE_TOLERANCE` (1e-5): `predicted_iou` moves by up to about 20 float32 ulps at scores
  near 1 (about 1e-6). Seen on real photos: horses.jpg, one pixel of a 176 132-pixel mask;
  letters.jpg, a stability score by one pixel of a 15 381-pixel mask (6.3e-5).
* **Fast modes** (`fast_parity`): each reference mask matched to our mask of highest IoU;
  the mean of those IoUs at least `FAST_MIN_MEAN_IOU` (0.99), and the mask counts differing by
  at most `FAST_MAX_COUNT_MISMATCH` (2%) of the reference's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

SCORE_TOLERANCE = 1e-5
ROUNDING_PIXELS = 2
FAST_MIN_MEAN_IOU = 0.99
FAST_MAX_COUNT_MISMATCH = 0.02


def _twin_key(record: dict[str, Any]) -> tuple:
    """What must be identical between a reference record and its twin."""
    return (
        _size_and_counts(record["segmentation"])[1],
        tuple(record["segmentation"]["size"]),
        tuple(record["bbox"]),
        record["area"],
        tuple(record["crop_box"]),
        tuple(tuple(p) for p in record["point_coords"]),
    )


# Exact fields: the mask itself and the integer boxes and areas derived from it.
EXACT_FIELDS = ("area", "bbox", "crop_box")
SCORE_FIELDS = ("predicted_iou", "stability_score")
# Point coordinates are float64 grid positions times the crop size plus its origin; the two
# implementations compute them in the same order, so only float64 rounding may differ.
POINT_TOL = 1e-9


def _size_and_counts(segmentation: dict[str, Any]) -> tuple[list[int], str]:
    counts = segmentation["counts"]
    return list(segmentation["size"]), counts.decode() if isinstance(counts, bytes) else counts


def _plain(value: Any) -> Any:
    """Tuples and lists compare alike (a JSON file holds lists)."""
    return list(value) if isinstance(value, tuple | list) else value


def _pixels_apart(ours: dict[str, Any], reference: dict[str, Any]) -> int:
    """How many pixels two COCO RLE masks of the same size differ in."""
    a, b = (
        coco_mask.decode({**m, "counts": _size_and_counts(m)[1].encode()})
        for m in (ours, reference)
    )
    return int((a != b).sum())


def record_differences(
    ours: dict[str, Any],
    reference: dict[str, Any],
    score_tol: float = SCORE_TOLERANCE,
    pixel_tol: int = ROUNDING_PIXELS,
) -> list[str]:
    """What differs between two COCO-RLE records beyond `pixel_tol` pixels at a cutoff and
    `score_tol` (empty when they agree)."""
    problems = []
    if set(ours) != set(reference):
        problems.append(f"fields {sorted(ours)} != {sorted(reference)}")
    exact_fields = EXACT_FIELDS
    if _size_and_counts(ours["segmentation"]) != _size_and_counts(reference["segmentation"]):
        apart = _pixels_apart(ours["segmentation"], reference["segmentation"])
        if apart > pixel_tol:
            problems.append(f"segmentation differs in {apart} pixels")
        # One flipped pixel may move a box edge anywhere; the area moves by at most `apart`.
        exact_fields = ("crop_box",)
        if abs(ours["area"] - reference["area"]) > pixel_tol:
            problems.append(f"area {ours['area']} != {reference['area']}")
    for name in exact_fields:
        if _plain(ours[name]) != _plain(reference[name]):
            problems.append(f"{name} {ours[name]} != {reference[name]}")
    # A pixel flipped at threshold -/+ offset moves the stability score by at most 1 / area.
    tolerances = {
        "predicted_iou": score_tol,
        "stability_score": score_tol + pixel_tol / max(1, reference["area"]),
    }
    for name in SCORE_FIELDS:
        if abs(ours[name] - reference[name]) > tolerances[name]:
            problems.append(
                f"{name} {ours[name]} != {reference[name]} (tolerance {tolerances[name]:.1e})"
            )
    (ox, oy), (rx, ry) = ours["point_coords"][0], reference["point_coords"][0]
    if len(ours["point_coords"]) != 1 or abs(ox - rx) > POINT_TOL or abs(oy - ry) > POINT_TOL:
        problems.append(f"point_coords {ours['point_coords']} != {reference['point_coords']}")
    return problems


def exact_differences(
    ours: list[dict[str, Any]],
    reference: list[dict[str, Any]],
    score_tol: float = SCORE_TOLERANCE,
    pixel_tol: int = ROUNDING_PIXELS,
) -> list[str]:
    """Every way `ours` differs from the reference, record by record in order (empty: parity).

    Masks may differ in `pixel_tol` pixels, those at a cutoff (random-weight models put many
    logits within float rounding of the threshold: their tests allow more); their bbox is
    then not compared.
    """
    problems = []
    if len(ours) != len(reference):
        problems.append(f"{len(ours)} records, the reference has {len(reference)}")
    for index, (mine, theirs) in enumerate(zip(ours, reference, strict=False)):
        differences = record_differences(mine, theirs, score_tol, pixel_tol)
        if differences:
            problems.append(f"record {index}: {'; '.join(differences)}")
    reference_masks = {_size_and_counts(r["segmentation"])[1] for r in reference}
    missing = [
        i
        for i, r in enumerate(ours)
        if _size_and_counts(r["segmentation"])[1] not in reference_masks
    ]
    if problems and missing:
        problems.append(f"our records {missing[:20]} have masks the reference does not have")
    return problems


@dataclass
class ExactParity:
    """How our records compare with the reference's, twin by twin."""

    n_reference: int
    n_ours: int
    n_twinned: int  # reference records with an identical twin of ours
    max_delta_predicted_iou: float  # over twins (0 when there are none)
    max_delta_stability_score: float
    differences: list[str]  # exact_differences: empty when every record has its twin in place

    @property
    def ok(self) -> bool:
        return not self.differences


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
    return ExactParity(
        len(reference),
        len(ours),
        twinned,
        delta_iou,
        delta_stability,
        exact_differences(ours, reference),
    )


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
