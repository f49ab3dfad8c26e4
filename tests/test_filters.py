"""Each step of the generator with many masks: what it removes and what it keeps.

The random tiny SAM gives masks spread over the whole image (NMS at the default threshold
leaves one), so the steps are driven here two ways: a "sharp" tiny model (its mask logits
scaled up, so stability scores spread from 0.5 to 0.95 and masks differ per point) with NMS
thresholds opened so 108 records reach the end, compared with the reference record by record;
and crafted masks and logits fed to one step at a time, with the survivors worked out by hand.
A crop layer's masks from the tiny model all reach an inner crop edge and are dropped there,
so the crop step (edge filter, coordinate offsets) and cross-crop NMS use crafted inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils import amg as ref

from amg_lightning import AutomaticMaskGenerator
from amg_lightning.core import rle
from amg_lightning.core.full_res import DenseMasks
from amg_lightning.core.masks import CropFrame, MaskData
from tests.helpers.parity import assert_same_records

OPEN = {
    "points_per_side": 6,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "box_nms_thresh": 1.0,  # IoU > 1 never happens: NMS keeps every duplicate
    "crop_nms_thresh": 1.0,
    "output_mode": "coco_rle",
}
# Random weights with logits scaled up put some pixels within float rounding of the mask
# threshold, and the two implementations sum in different orders: a mask may differ in a
# pixel or two (a few of a hundred masks), which moves a stability score by up to ~2e-4;
# both tolerances are far below the spread of the scores (0.5 to 0.95).
TINY_SCORE_TOL = 1e-3
TINY_PIXEL_TOL = 2


def key(record: dict) -> tuple:
    return (tuple(record["point_coords"][0]), record["segmentation"]["counts"])


def generate(model, image, **settings) -> list[dict]:
    return AutomaticMaskGenerator(model, **{**OPEN, **settings}).generate(image)


@pytest.mark.parametrize("postprocess", ["host", "device"])
def test_open_settings_keep_every_mask_and_match_the_reference(
    sharp_sam, random_image, postprocess
):
    ours = generate(sharp_sam, random_image, postprocess=postprocess)
    reference = SamAutomaticMaskGenerator(sharp_sam, **OPEN).generate(random_image)
    assert len(ours) == 6 * 6 * 3  # three masks per point, none removed
    assert len({r["segmentation"]["counts"] for r in ours}) == len(ours)
    assert_same_records(ours, reference, score_tol=TINY_SCORE_TOL, pixel_tol=TINY_PIXEL_TOL)


@pytest.mark.parametrize(
    "settings",
    [
        {"min_mask_region_area": 40},
        {"crop_n_layers": 1, "stability_score_thresh": 0.8, "pred_iou_thresh": 0.02},
    ],
    ids=["small-regions", "crop-layer-and-thresholds"],
)
@pytest.mark.parametrize("postprocess", ["host", "device"])
def test_each_setting_matches_the_reference_with_many_masks(
    sharp_sam, random_image, settings, postprocess
):
    ours = generate(sharp_sam, random_image, postprocess=postprocess, **settings)
    reference = SamAutomaticMaskGenerator(sharp_sam, **{**OPEN, **settings}).generate(random_image)
    assert len(reference) >= 20
    assert_same_records(ours, reference, score_tol=TINY_SCORE_TOL, pixel_tol=TINY_PIXEL_TOL)


def test_stability_threshold_removes_exactly_the_unstable_masks(sharp_sam, random_image):
    everything = generate(sharp_sam, random_image)
    kept = generate(sharp_sam, random_image, stability_score_thresh=0.9)
    expected = [r for r in everything if r["stability_score"] >= 0.9]
    assert 20 <= len(expected) <= len(everything) - 20
    assert sorted(map(key, kept)) == sorted(map(key, expected))


def test_predicted_iou_threshold_removes_exactly_the_low_scores(sharp_sam, random_image):
    everything = generate(sharp_sam, random_image)
    kept = generate(sharp_sam, random_image, pred_iou_thresh=0.02)
    expected = [r for r in everything if r["predicted_iou"] > 0.02]
    assert 20 <= len(expected) <= len(everything) - 20
    assert sorted(map(key, kept)) == sorted(map(key, expected))


def test_a_predicted_iou_exactly_at_the_threshold_is_dropped(sharp_sam, random_image):
    everything = generate(sharp_sam, random_image)
    scores = sorted(r["predicted_iou"] for r in everything if 0 < r["predicted_iou"] < 1)
    at = scores[len(scores) // 2]  # a float32 value, exactly representable as the threshold
    kept = generate(sharp_sam, random_image, pred_iou_thresh=at)
    assert 0 < len(kept) < len(everything)
    assert at not in {r["predicted_iou"] for r in kept}  # the reference keeps only iou > thresh
    assert sorted(map(key, kept)) == sorted(
        map(key, [r for r in everything if r["predicted_iou"] > at])
    )


def test_small_regions_change_masks_but_keep_their_points(sharp_sam, random_image):
    everything = generate(sharp_sam, random_image)
    cleaned = generate(sharp_sam, random_image, min_mask_region_area=40)
    by_point = {}
    for record in everything:
        by_point.setdefault(tuple(record["point_coords"][0]), []).append(record)
    changed = 0
    assert len(cleaned) == len(everything)  # NMS at 1.0 drops none of them
    for record in cleaned:
        before = by_point[tuple(record["point_coords"][0])]
        same = [b for b in before if b["predicted_iou"] == record["predicted_iou"]]
        assert len(same) == 1
        changed += same[0]["segmentation"]["counts"] != record["segmentation"]["counts"]
    assert changed >= 20


# Crafted masks, one step at a time -------------------------------------------------------

IMAGE_SIZE = (120, 160)  # height, width


def mask_set(masks: list[np.ndarray], crop_boxes: list[list[int]], iou: list[float]) -> MaskData:
    """MaskData of full-image boolean masks, as the per-crop steps leave it."""
    encoded = [rle.encode_mask(m) for m in masks]
    n = len(masks)
    return MaskData(
        rles=[e.counts[0] for e in encoded],
        boxes=torch.from_numpy(np.stack([e.boxes[0] for e in encoded])),
        iou_preds=torch.tensor(iou),
        stability=torch.linspace(0.9, 0.99, n),
        points=torch.arange(2 * n, dtype=torch.float64).reshape(n, 2),
        crop_boxes=torch.tensor(crop_boxes),
    )


def frame(generator: AutomaticMaskGenerator, crop_box: list[int]) -> CropFrame:
    return generator._frame(crop_box, IMAGE_SIZE)


def rectangle(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros(IMAGE_SIZE, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_cross_crop_nms_prefers_the_smaller_crop(tiny_sam):
    whole, crop = [0, 0, 160, 120], [0, 0, 90, 70]
    masks = [
        rectangle(10, 10, 40, 40),  # 0: whole image, duplicated by 1 from the crop
        rectangle(11, 10, 40, 41),  # 1: crop, same object: kept over 0 despite a lower score
        rectangle(100, 80, 150, 110),  # 2: whole image, alone: kept
        rectangle(50, 20, 80, 60),  # 3: crop, alone: kept
        rectangle(50, 21, 80, 60),  # 4: crop, duplicates 3 in the same crop: tie on crop area
    ]
    crops = [whole, crop, whole, crop, crop]
    generator = AutomaticMaskGenerator(tiny_sam, crop_n_layers=1, output_mode="coco_rle")
    records = generator._finish([mask_set(masks, crops, [0.99, 0.5, 0.9, 0.8, 0.7])], IMAGE_SIZE)
    kept = [r["point_coords"][0] for r in records]
    points = mask_set(masks, crops, [0] * 5).points.tolist()
    assert points[0] not in kept and points[1] in kept
    assert points[2] in kept
    assert (points[3] in kept) != (points[4] in kept)  # of 3 and 4, exactly one stays
    assert len(kept) == 3
    assert [r["crop_box"] for r in records if r["point_coords"][0] == points[1]] == [[0, 0, 90, 70]]


@pytest.mark.parametrize(("crop_nms", "box_nms", "kept"), [(0.3, 0.9, 1), (0.9, 0.3, 2)])
def test_cross_crop_nms_uses_its_own_threshold(tiny_sam, crop_nms, box_nms, kept):
    whole, crop = [0, 0, 160, 120], [0, 0, 90, 70]
    masks = [rectangle(10, 10, 40, 40), rectangle(20, 10, 50, 40)]  # box IoU 0.49
    generator = AutomaticMaskGenerator(
        tiny_sam,
        crop_n_layers=1,
        crop_nms_thresh=crop_nms,
        box_nms_thresh=box_nms,
        output_mode="coco_rle",
    )
    records = generator._finish([mask_set(masks, [whole, crop], [0.9, 0.8])], IMAGE_SIZE)
    assert len(records) == kept


def test_cross_crop_nms_is_skipped_without_crop_layers(tiny_sam):
    whole = [0, 0, 160, 120]
    masks = [rectangle(10, 10, 40, 40), rectangle(11, 10, 40, 41)]
    generator = AutomaticMaskGenerator(tiny_sam, output_mode="coco_rle")
    records = generator._finish([mask_set(masks, [whole, whole], [0.9, 0.8])], IMAGE_SIZE)
    assert len(records) == 2  # duplicates within a crop are removed earlier, per crop


def small_region_masks() -> list[np.ndarray]:
    holed = rectangle(10, 10, 60, 50)
    holed[20:23, 20:23] = False  # a 9-pixel hole
    islanded = rectangle(80, 10, 130, 50)
    islanded[70:72, 140:142] = True  # a 4-pixel island far away
    return [
        holed,  # 0: changed by filling; its filled twin 1 is preferred
        rectangle(10, 10, 60, 50),  # 1: unchanged
        islanded,  # 2: changed by dropping the island; alone, kept
        rectangle(20, 70, 70, 110),  # 3: unchanged, alone, kept
    ]


def test_small_region_nms_prefers_masks_that_were_not_changed(tiny_sam):
    masks = small_region_masks()
    whole = [0, 0, 160, 120]
    generator = AutomaticMaskGenerator(tiny_sam, min_mask_region_area=20, output_mode="coco_rle")
    records = generator._finish([mask_set(masks, [whole] * 4, [0.99, 0.5, 0.9, 0.8])], IMAGE_SIZE)
    # Unchanged masks first (1 and 3), then the changed mask 2; 0 lost to its filled twin 1.
    assert [r["point_coords"][0] for r in records] == [[2.0, 3.0], [6.0, 7.0], [4.0, 5.0]]
    island_free = rectangle(80, 10, 130, 50)
    assert records[2]["area"] == int(island_free.sum())
    assert records[2]["bbox"] == [80, 10, 49, 39]


def test_small_region_step_matches_the_reference(tiny_sam):
    masks = small_region_masks()
    whole = [0, 0, 160, 120]
    data = mask_set(masks, [whole] * 4, [0.99, 0.5, 0.9, 0.8])
    generator = AutomaticMaskGenerator(tiny_sam, min_mask_region_area=20, output_mode="coco_rle")
    ours = generator._finish([data], IMAGE_SIZE)
    reference = ref.MaskData(
        rles=[ref.mask_to_rle_pytorch(torch.from_numpy(m)[None])[0] for m in masks],
        boxes=data.boxes.float(),
        iou_preds=data.iou_preds,
        points=data.points,
        stability_score=data.stability,
        crop_boxes=data.crop_boxes.float(),
    )
    reference = SamAutomaticMaskGenerator.postprocess_small_regions(reference, 20, 0.7)
    assert [r["point_coords"][0] for r in ours] == reference["points"].tolist()
    expected = [ref.coco_encode_rle(r)["counts"] for r in reference["rles"]]
    assert [r["segmentation"]["counts"] for r in ours] == expected


def test_crop_step_offsets_points_and_drops_masks_cut_by_the_crop(tiny_sam):
    """Crop-frame logits: interior masks are kept and moved to the image frame; masks at an
    inner crop edge are dropped; masks at the image's own edge are kept."""
    crop_box = [60, 40, 160, 120]  # right and bottom edges are the image's
    logits = torch.full((4, 80, 100), -10.0)
    logits[0, 30:50, 30:60] = 10  # 0: interior: kept
    logits[1, 0:30, 30:60] = 10  # 1: touches the crop's top edge, inside the image: dropped
    logits[2, 50:80, 70:100] = 10  # 2: reaches the image's bottom-right corner: kept
    logits[3, 30:50, 0:10] = 10  # 3: touches the crop's left edge: dropped
    points = torch.tensor([[45.0, 40.0], [45.0, 15.0], [85.0, 65.0], [5.0, 40.0]])
    generator = AutomaticMaskGenerator(tiny_sam, output_mode="coco_rle")
    out = generator._filter_full_res(
        DenseMasks(logits, 0.0, 1.0), torch.ones(4), points, frame(generator, crop_box)
    )
    assert out.points.tolist() == [[105.0, 80.0], [145.0, 105.0]]
    assert out.boxes.tolist() == [[90, 70, 119, 89], [130, 90, 159, 119]]
    assert out.crop_boxes.tolist() == [crop_box, crop_box]
    expected = np.zeros(IMAGE_SIZE, dtype=bool)
    expected[70:90, 90:120] = True
    np.testing.assert_array_equal(rle.decode(out.rles[0], IMAGE_SIZE), expected)
    # The reference takes crop-frame boxes and moves them itself.
    edge = ref.is_box_near_crop_edge(
        ref.batched_mask_to_box(logits > 0), crop_box, [0, 0, 160, 120]
    )
    assert edge.tolist() == [False, True, False, True]


def test_crop_step_stability_threshold(tiny_sam):
    crop_box = [0, 0, 160, 120]
    logits = torch.full((3, 120, 160), -10.0)
    logits[:, 40:80, 40:80] = 10  # stable: 1.0
    logits[1, 40:80, 40:80] = 0.5  # inside only +-1 of the threshold: unstable, 0.0
    logits[2, 40:80, 80:120] = 0.5  # half stable: 0.5
    generator = AutomaticMaskGenerator(tiny_sam, stability_score_thresh=0.4, output_mode="coco_rle")
    points = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    out = generator._filter_full_res(
        DenseMasks(logits, 0.0, 1.0), torch.ones(3), points, frame(generator, crop_box)
    )
    assert out.points.tolist() == [[1.0, 1.0], [3.0, 3.0]]
    assert out.stability.tolist() == pytest.approx([1.0, 0.5])
    expected = ref.calculate_stability_score(logits, 0.0, 1.0)
    assert expected.tolist() == pytest.approx([1.0, 0.0, 0.5])
