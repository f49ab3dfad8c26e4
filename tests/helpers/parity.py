"""Strict parity: the same records as the reference generator, in the same order."""

from __future__ import annotations

from typing import Any

from pycocotools import mask as coco_mask

# Exact fields: the mask itself and the integer boxes and areas derived from it.
EXACT_FIELDS = ("area", "bbox", "crop_box")
SCORE_FIELDS = ("predicted_iou", "stability_score")
# Point coordinates are float64 grid positions times the crop size plus its origin; the two
# implementations compute them in the same order, so only float64 rounding may differ.
POINT_TOL = 1e-9


def _counts(segmentation: dict[str, Any]) -> tuple[list[int], str]:
    counts = segmentation["counts"]
    return list(segmentation["size"]), counts.decode() if isinstance(counts, bytes) else counts


def _plain(value: Any) -> Any:
    """Tuples and lists compare alike (a JSON file holds lists)."""
    return list(value) if isinstance(value, tuple | list) else value


def _pixels_apart(ours: dict[str, Any], reference: dict[str, Any]) -> int:
    """How many pixels two COCO RLE masks of the same size differ in."""
    a, b = (coco_mask.decode({**m, "counts": _counts(m)[1].encode()}) for m in (ours, reference))
    return int((a != b).sum())


def record_differences(
    ours: dict[str, Any], reference: dict[str, Any], score_tol: float = 1e-6, pixel_tol: int = 0
) -> list[str]:
    """What differs between two COCO-RLE records (empty when they agree)."""
    problems = []
    if set(ours) != set(reference):
        problems.append(f"fields {sorted(ours)} != {sorted(reference)}")
    exact_fields = EXACT_FIELDS
    if _counts(ours["segmentation"]) != _counts(reference["segmentation"]):
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
    for name in SCORE_FIELDS:
        if abs(ours[name] - reference[name]) > score_tol:
            problems.append(f"{name} {ours[name]} != {reference[name]} (tolerance {score_tol})")
    (ox, oy), (rx, ry) = ours["point_coords"][0], reference["point_coords"][0]
    if len(ours["point_coords"]) != 1 or abs(ox - rx) > POINT_TOL or abs(oy - ry) > POINT_TOL:
        problems.append(f"point_coords {ours['point_coords']} != {reference['point_coords']}")
    return problems


def assert_same_records(
    ours: list[dict[str, Any]],
    reference: list[dict[str, Any]],
    score_tol: float = 1e-6,
    pixel_tol: int = 0,
) -> None:
    """Every reference record has its twin at the same index in `ours`: identical RLE, bbox,
    area and crop_box, point_coords within float64 rounding, scores within `score_tol`.

    Records must be in COCO-RLE output mode. The message lists every differing record.
    `pixel_tol` > 0 lets masks differ in that many pixels (random-weight models put logits
    within float rounding of the threshold); their bbox is then not compared.
    """
    problems = []
    if len(ours) != len(reference):
        problems.append(f"{len(ours)} records, the reference has {len(reference)}")
    for index, (mine, theirs) in enumerate(zip(ours, reference, strict=False)):
        differences = record_differences(mine, theirs, score_tol, pixel_tol)
        if differences:
            problems.append(f"record {index}: {'; '.join(differences)}")
    reference_masks = {_counts(r["segmentation"])[1] for r in reference}
    missing = [
        i for i, r in enumerate(ours) if _counts(r["segmentation"])[1] not in reference_masks
    ]
    if problems and missing:
        problems.append(f"our records {missing[:20]} have masks the reference does not have")
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems[:30])
