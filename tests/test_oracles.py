"""Checks against oracles that are not the code under test: drawing done here with cv2,
pycocotools for RLE, areas, boxes and IoU, NMS worked out by hand, and the synthetic scenes
checked by their properties."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask

from amg_lightning.core import rle
from amg_lightning.core.boxes import box_nms
from amg_lightning.core.full_res import stability_score
from amg_lightning.data.synthetic import SceneSpec, write_dataset
from amg_lightning.results.visualize import draw_masks, mask_colours


def coco_rle(mask: np.ndarray) -> dict:
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(encoded["size"]), "counts": encoded["counts"].decode()}


def test_picture_of_one_square_equals_a_hand_drawn_one():
    image = np.full((60, 80, 3), 100, dtype=np.uint8)
    mask = np.zeros((60, 80), dtype=bool)
    mask[10:30, 20:50] = True
    colour = mask_colours(1, seed=3)[0].astype(np.float32)
    expected = image.copy()
    expected[10:30, 20:50] = np.round(0.5 * 100 + 0.5 * colour).astype(np.uint8)
    # The outline: the square's own border pixels, one pixel wide, in the full colour.
    expected[10, 20:50] = expected[29, 20:50] = colour
    expected[10:30, 20] = expected[10:30, 49] = colour
    np.testing.assert_array_equal(draw_masks(image, [coco_rle(mask)], seed=3), expected)


def random_masks(count: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(5)
    low = rng.random((count, height // 6, width // 6))
    masks = np.stack([np.kron(m, np.ones((6, 6)))[:height, :width] > 0.6 for m in low])
    masks[0] = False
    masks[1] = True
    masks[2, -1, -1] = True  # a run that ends at the last pixel
    return masks


def test_rle_area_and_box_equal_pycocotools():
    masks = random_masks(12, 48, 60)
    for mask in masks:
        encoded = rle.encode_mask(mask)
        expected = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        ours = rle.to_coco(encoded.counts[0], mask.shape)
        assert ours["counts"] == expected["counts"].decode()
        assert rle.area(encoded.counts[0]) == int(coco_mask.area(expected))
        if mask.any():  # pycocotools's box is [x, y, w, h] with w, h counting pixels
            x, y, w, h = coco_mask.toBbox(expected)
            assert encoded.boxes[0].tolist() == [x, y, x + w - 1, y + h - 1]
        np.testing.assert_array_equal(rle.decode(encoded.counts[0], mask.shape), mask)


def test_stability_score_is_the_iou_of_two_thresholds_by_pycocotools():
    logits = torch.from_numpy(np.random.default_rng(2).normal(0, 3, (6, 40, 50))).float()
    scores = stability_score(logits, 0.0, 1.0)
    for logit, score in zip(logits, scores, strict=True):
        inner, outer = coco_rle((logit > 1).numpy()), coco_rle((logit > -1).numpy())
        iou = coco_mask.iou([inner], [outer], [0])[0, 0]
        assert score.item() == pytest.approx(iou, abs=1e-6)


# Boxes and scores by hand; IoU = intersection / union of the box areas.
NMS_BOXES = torch.tensor(
    [
        [0, 0, 10, 10],  # 0: score 0.9
        [1, 0, 11, 10],  # 1: 0.8, IoU with 0 = 90 / 110 = 0.82
        [20, 20, 30, 30],  # 2: 0.7, far from all but 4
        [5, 0, 15, 10],  # 3: 0.95, IoU with 0 = 50 / 150 = 0.33, with 1 = 60 / 140 = 0.43
        [21, 20, 31, 30],  # 4: 0.6, IoU with 2 = 90 / 110 = 0.82
    ],
    dtype=torch.float,
)
NMS_SCORES = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.6])


@pytest.mark.parametrize(
    ("threshold", "kept"),
    [(0.7, [3, 0, 2]), (0.85, [3, 0, 1, 2, 4]), (0.3, [3, 2]), (1.0, [3, 0, 1, 2, 4])],
)
def test_box_nms_on_a_case_worked_by_hand(threshold, kept):
    assert box_nms(NMS_BOXES, NMS_SCORES, threshold).tolist() == kept


def test_synthetic_scenes_have_the_promised_properties(tmp_path):
    """Masks are disjoint, each at least min_visible_area and one flat colour in the image;
    each annotation's area and box agree with its mask."""
    import cv2

    spec = SceneSpec()
    dataset = write_dataset(tmp_path, count=4, seed=2, per_shard=2)
    coco = json.loads(dataset.annotations.read_text())
    assert len(coco["images"]) == 4
    for image in coco["images"]:
        picture = cv2.cvtColor(
            cv2.imread(str(dataset.images_dir / image["file_name"])), cv2.COLOR_BGR2RGB
        )
        assert picture.shape == (image["height"], image["width"], 3)
        annotations = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert spec.min_shapes <= len(annotations) <= spec.max_shapes
        covered = np.zeros(picture.shape[:2], dtype=int)
        for annotation in annotations:
            mask = coco_mask.decode(annotation["segmentation"]).astype(bool)
            covered += mask
            assert mask.sum() == annotation["area"] >= spec.min_visible_area
            x, y, w, h = annotation["bbox"]
            ys, xs = np.nonzero(mask)
            assert [x, y, w, h] == [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]
            assert len(np.unique(picture[mask], axis=0)) == 1  # drawn in one flat colour
        assert covered.max() <= 1  # no pixel belongs to two instances
