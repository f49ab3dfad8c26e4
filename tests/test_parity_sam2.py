"""SAM 2 models give SAM2AutomaticMaskGenerator's records, record by record, on the CPU.

The tiny random SAM 2.1 is sharpened (conftest's sharp_sam2) so that masks differ per point
and scores spread; with the NMS thresholds opened every mask reaches the records, and the
tolerances are test_filters' (random logits put pixels within rounding of the cutoffs).
The reference is built as amg-bench builds it (bench.generate.sam2_reference: its feature
map sizes set to the 256-pixel tiny model's own).

min_mask_region_area: SAM 2 passes it to its CUDA extension, which fills holes and removes
islands in the low-res logits; without the extension (every CPU install) the reference warns
and skips that step, and has no other small-region step, so its records are those of
min_mask_region_area=0. Ours are the same, on every device (docs/sam2.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from amg_lightning import AutomaticMaskGenerator
from amg_lightning.bench.generate import sam2_reference
from amg_lightning.core.models import build_sam
from tests.helpers.images import read_photo
from tests.helpers.parity import assert_same_records

sam2_generator = pytest.importorskip("sam2.automatic_mask_generator")

OPEN = {
    "points_per_side": 6,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "box_nms_thresh": 1.0,
    "crop_nms_thresh": 1.0,
    "output_mode": "coco_rle",
}
TINY_SCORE_TOL = 1e-3
TINY_PIXEL_TOL = 2


def reference(model: torch.nn.Module, image, **settings) -> list[dict]:
    generator = sam2_reference(model, **settings)
    with pytest.warns(UserWarning) if settings.get("min_mask_region_area") else _nothing():
        return generator.generate(image)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"use_m2m": True},
        {"multimask_output": False},
        {"use_m2m": True, "multimask_output": False},
        {"crop_n_layers": 1, "points_per_side": 4},
    ],
    ids=["open", "m2m", "single-mask", "m2m-single-mask", "crop-layer"],
)
@pytest.mark.parametrize("postprocess", ["host", "device"])
def test_open_settings_match_the_reference(sharp_sam2, random_image, settings, postprocess):
    settings = {**OPEN, **settings}
    ours = AutomaticMaskGenerator(sharp_sam2, postprocess=postprocess, **settings)
    expected = reference(sharp_sam2, random_image, **settings)
    masks_per_point = 3 if settings.get("multimask_output", True) else 1
    assert len(expected) >= 4 * 4 * masks_per_point  # every filter open: most masks remain
    assert_same_records(
        ours.generate(random_image), expected, score_tol=TINY_SCORE_TOL, pixel_tol=TINY_PIXEL_TOL
    )


@pytest.mark.parametrize(
    "settings",
    [{}, {"use_m2m": True}, {"min_mask_region_area": 40}],
    ids=["defaults", "m2m", "small-regions"],
)
def test_defaults_match_the_reference(sharp_sam2, random_image, settings):
    """SAM2AutomaticMaskGenerator's defaults (pred_iou_thresh 0.8, not SAM's 0.88), on a
    12 x 12 grid. This group checks the defaults' values and code paths, not many records: it
    gives none. Random weights cannot give ten records at the defaults, however sharpened:
    every mask of the random model spans nearly the whole image, so box NMS (0.7) keeps at
    most one, and logit scales change scores, not shapes (mask logits x100 to x10000, IoU
    logits x10 to x300: at most one record). With NMS open too (box_nms_thresh 1.0) the
    sharpened model's masks of IoU above 0.8 (a quarter) and of stability above 0.95 (a
    twentieth) are other masks: none passes both. The open-settings test above has many
    records; with real weights, test_real_checkpoint_matches_the_reference."""
    settings = {"points_per_side": 12, "output_mode": "coco_rle", **settings}
    ours = AutomaticMaskGenerator(sharp_sam2, **settings)
    assert ours.settings.pred_iou_thresh == 0.8
    expected = reference(sharp_sam2, random_image, **settings)
    assert_same_records(
        ours.generate(random_image), expected, score_tol=TINY_SCORE_TOL, pixel_tol=TINY_PIXEL_TOL
    )


def test_sam2_settings_are_refused_for_sam1_models(tiny_sam):
    with pytest.raises(ValueError, match="use_m2m is a SAM 2 setting"):
        AutomaticMaskGenerator(tiny_sam, use_m2m=True)
    assert AutomaticMaskGenerator(tiny_sam).settings.pred_iou_thresh == 0.88


@pytest.mark.sam2_checkpoint
@pytest.mark.parametrize("settings", [{}, {"use_m2m": True}], ids=["defaults", "m2m"])
def test_real_checkpoint_matches_the_reference(settings):
    """sam2.1_hiera_t's real weights on one photo, under the exact rule."""
    value = os.environ.get("AMG_TEST_SAM2_CHECKPOINT")
    if not value:
        pytest.skip("AMG_TEST_SAM2_CHECKPOINT names no sam2.1_hiera_tiny.pt")
    model = build_sam("sam2.1_hiera_t", Path(value))
    image = read_photo("skimage:astronaut", None, max_side=512)
    settings = {"points_per_side": 16, "output_mode": "coco_rle", **settings}
    expected = sam2_generator.SAM2AutomaticMaskGenerator(model, **settings).generate(image)
    assert_same_records(AutomaticMaskGenerator(model, **settings).generate(image), expected)
