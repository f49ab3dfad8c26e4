"""Parity with SAM's reference generator on real photographs and the real MobileSAM weights.

The reference (mobile_sam's copy of SamAutomaticMaskGenerator) runs on the same model object.
Parity is `amg_lightning.bench.parity`'s, the benchmark's own: the exact mode gives every
reference record an identical twin. Few points per side keep each case to seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
from mobile_sam import SamAutomaticMaskGenerator

from amg_lightning import AutomaticMaskGenerator
from amg_lightning.bench.parity import FAST_MIN_MEAN_IOU, exact_parity, fast_parity
from tests.helpers.images import read_rgb

CASES = {
    "single crop": ("dog.jpg", {"points_per_side": 10}),
    "single crop, many objects": ("groceries.jpg", {"points_per_side": 8}),
    "crop pyramid": ("truck.jpg", {"points_per_side": 6, "crop_n_layers": 1}),
    "small regions removed": ("bears.jpg", {"points_per_side": 8, "min_mask_region_area": 400}),
}


def reference_and_ours(mobile_sam, image: np.ndarray, settings: dict, **ours_options):
    settings = {**settings, "output_mode": "coco_rle"}
    reference = SamAutomaticMaskGenerator(mobile_sam, **settings).generate(image)
    ours = AutomaticMaskGenerator(mobile_sam, **ours_options, **settings).generate(image)
    assert len(reference) >= 5, "too few masks for a meaningful comparison"
    return reference, ours


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_same_masks_as_reference(case, mobile_sam, images_dir):
    name, settings = CASES[case]
    image = read_rgb(images_dir / name, max_side=640)
    reference, ours = reference_and_ours(mobile_sam, image, settings)
    found = exact_parity(reference, ours)
    assert found.ok, found
    assert all(set(o) == set(reference[0]) for o in ours)


@pytest.mark.slow
def test_fast_mode_keeps_the_masks(mobile_sam, images_dir):
    image = read_rgb(images_dir / "dog.jpg", max_side=640)
    reference, fast = reference_and_ours(mobile_sam, image, {"points_per_side": 10}, fast=True)
    found = fast_parity(reference, fast)
    assert found.mean_iou >= FAST_MIN_MEAN_IOU, found
    # With a few dozen masks one mask is already over 2%: allow one here; the benchmark
    # checks the 2% at the default 32 x 32 points.
    assert abs(found.n_ours - found.n_reference) <= 1, found


@pytest.mark.slow
def test_batch_of_images_equals_one_at_a_time(mobile_sam, images_dir):
    images = [read_rgb(images_dir / n, max_side=400) for n in ("dog.jpg", "corgi.jpg")]
    generator = AutomaticMaskGenerator(mobile_sam, points_per_side=4, output_mode="coco_rle")
    batched = generator.generate_batch(images)
    for image, records in zip(images, batched, strict=True):
        single = generator.generate(image)
        assert [r["segmentation"] for r in records] == [s["segmentation"] for s in single]
    assert all(np.isfinite(r["predicted_iou"]) for records in batched for r in records)
