"""Parity with SAM's reference generator, run live on real photographs and the real weights.

The reference (mobile_sam's copy of SamAutomaticMaskGenerator) runs on the same model object,
at few points per side on shrunk photos so each case takes seconds on two CPU cores; the
defaults at full resolution are checked against stored records in test_parity_strict.py.
Photos come from AMG_TEST_IMAGES, else from scikit-image's bundled photos.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from mobile_sam import SamAutomaticMaskGenerator

from amg_lightning import AutomaticMaskGenerator
from tests.helpers.images import read_photo
from tests.helpers.parity import assert_same_records

# case: (photo in AMG_TEST_IMAGES, scikit-image photo without it, settings)
CASES = {
    "single crop": ("dog.jpg", "skimage:astronaut", {"points_per_side": 10}),
    "single crop, many objects": ("groceries.jpg", "skimage:coffee", {"points_per_side": 8}),
    "crop pyramid": ("truck.jpg", "skimage:rocket", {"points_per_side": 6, "crop_n_layers": 1}),
    "small regions removed": (
        "bears.jpg",
        "skimage:chelsea",
        {"points_per_side": 8, "min_mask_region_area": 400},
    ),
}


def reference_and_ours(mobile_sam, image: np.ndarray, settings: dict, **ours_options):
    settings = {**settings, "output_mode": "coco_rle"}
    reference = SamAutomaticMaskGenerator(mobile_sam, **settings).generate(image)
    ours = AutomaticMaskGenerator(mobile_sam, **ours_options, **settings).generate(image)
    assert len(reference) >= 5, "too few masks for a meaningful comparison"
    return reference, ours


def case_photo(images_dir: Path | None, shared: str, fallback: str, max_side: int) -> np.ndarray:
    return read_photo(shared if images_dir else fallback, images_dir, max_side=max_side)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_same_records_as_reference(case, mobile_sam, images_dir):
    shared, fallback, settings = CASES[case]
    image = case_photo(images_dir, shared, fallback, max_side=640)
    reference, ours = reference_and_ours(mobile_sam, image, settings)
    assert_same_records(ours, reference)
    on_device = AutomaticMaskGenerator(
        mobile_sam, postprocess="device", output_mode="coco_rle", **settings
    ).generate(image)
    assert_same_records(on_device, reference)


@pytest.mark.slow
def test_same_records_as_reference_on_a_photo_larger_than_the_encoder(mobile_sam, images_dir):
    """Crops larger than the encoder's input take the tiled full-resolution path."""
    image = case_photo(images_dir, "lighthouse.jpg", "skimage:astronaut", max_side=None)
    if min(image.shape[:2]) <= 1024:  # scikit-image's photos are small: enlarge one
        image = cv2.resize(image, (1700, 1700), interpolation=cv2.INTER_CUBIC)
    reference, ours = reference_and_ours(mobile_sam, image, {"points_per_side": 6})
    assert_same_records(ours, reference)


@pytest.mark.slow
def test_batch_of_images_equals_one_at_a_time(mobile_sam, images_dir):
    images = [
        case_photo(images_dir, "dog.jpg", "skimage:astronaut", max_side=400),
        case_photo(images_dir, "corgi.jpg", "skimage:chelsea", max_side=400),
    ]
    generator = AutomaticMaskGenerator(mobile_sam, points_per_side=4, output_mode="coco_rle")
    batched = generator.generate_batch(images)
    for image, records in zip(images, batched, strict=True):
        assert_same_records(records, generator.generate(image), score_tol=0.0)
    assert sum(len(records) for records in batched) > 0
