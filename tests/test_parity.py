"""Parity with SAM's reference generator on real photographs and the real MobileSAM weights.

The reference (mobile_sam's copy of SamAutomaticMaskGenerator) runs on the same model object.
Few points per side keep each case to seconds on two CPU cores.
"""

from __future__ import annotations

import numpy as np
import pytest
from mobile_sam import SamAutomaticMaskGenerator
from pycocotools import mask as coco_mask

from amg_lightning import AutomaticMaskGenerator
from tests.helpers.images import read_rgb

CASES = {
    "single crop": ("dog.jpg", {"points_per_side": 10}),
    "single crop, many objects": ("groceries.jpg", {"points_per_side": 8}),
    "crop pyramid": ("truck.jpg", {"points_per_side": 6, "crop_n_layers": 1}),
    "small regions removed": ("bears.jpg", {"points_per_side": 8, "min_mask_region_area": 400}),
}


def compare(reference: list[dict], ours: list[dict]) -> dict[str, float]:
    """Each reference mask matched to our mask of highest IoU."""
    ious = coco_mask.iou(
        [r["segmentation"] for r in reference], [o["segmentation"] for o in ours], [0] * len(ours)
    )
    best = ious.argmax(axis=1)
    pairs = [(r, ours[j]) for r, j in zip(reference, best, strict=True)]
    return {
        "mean_iou": float(ious.max(axis=1).mean()),
        "count_mismatch": abs(len(ours) - len(reference)) / len(reference),
        "iou_pred_diff": max(abs(r["predicted_iou"] - o["predicted_iou"]) for r, o in pairs),
        "stability_diff": max(abs(r["stability_score"] - o["stability_score"]) for r, o in pairs),
        "unique_matches": len(set(best.tolist())) / len(reference),
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_same_masks_as_reference(case, mobile_sam, images_dir):
    name, settings = CASES[case]
    image = read_rgb(images_dir / name, max_side=640)
    settings = {**settings, "output_mode": "coco_rle"}
    reference = SamAutomaticMaskGenerator(mobile_sam, **settings).generate(image)
    ours = AutomaticMaskGenerator(mobile_sam, **settings).generate(image)
    assert len(reference) >= 5, "too few masks for a meaningful comparison"
    scores = compare(reference, ours)
    assert scores["count_mismatch"] <= 0.02, scores
    assert scores["mean_iou"] >= 0.99, scores
    assert scores["unique_matches"] == 1.0, scores
    assert scores["iou_pred_diff"] <= 1e-3, scores
    assert scores["stability_diff"] <= 1e-3, scores
    for r, o in zip(reference, ours, strict=False):
        assert set(o) == set(r)
    assert {tuple(o["crop_box"]) for o in ours} == {tuple(r["crop_box"]) for r in reference}


@pytest.mark.slow
def test_batch_of_images_equals_one_at_a_time(mobile_sam, images_dir):
    images = [read_rgb(images_dir / n, max_side=400) for n in ("dog.jpg", "corgi.jpg")]
    generator = AutomaticMaskGenerator(mobile_sam, points_per_side=4, output_mode="coco_rle")
    batched = generator.generate_batch(images)
    for image, records in zip(images, batched, strict=True):
        single = generator.generate(image)
        assert [r["segmentation"] for r in records] == [s["segmentation"] for s in single]
    assert all(np.isfinite(r["predicted_iou"]) for records in batched for r in records)
