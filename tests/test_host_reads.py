"""The device post-processing reads back a bounded number of values per decode batch, crop and
image, however many masks come out (on CUDA each read is a synchronisation; counted on the
CPU with tests/helpers/host_reads.py)."""

from __future__ import annotations

import math

import pytest

from amg_lightning import AutomaticMaskGenerator
from amg_lightning.core.grids import crop_boxes
from tests.helpers.host_reads import count_host_reads

# Per decode batch: how many masks pass the IoU filter, which tiles to resize (once per slice
# of full-resolution work: one slice holds upscale_budget_mb of masks), where each slice of
# whole-mask resizes starts (only when over half the tiles need resizing, as with these
# random weights), and how many pass the rest. Per crop: its NMS, which of the survivors'
# tiles to resize (and where whole-mask slices start), and their change positions. Per
# image: cross-crop NMS and its kept indices, the packed copy, and the record columns read
# into Python (5, then 1 for the cross-crop order).
PER_BATCH, PER_CROP, PER_IMAGE = 4, 4, 9
SETTINGS = {
    "points_per_side": 8,
    "points_per_batch": 16,
    "pred_iou_thresh": 0.0,
    "box_nms_thresh": 1.0,  # every mask reaches the records: their number is the point
    "crop_nms_thresh": 1.0,
    "output_mode": "coco_rle",
    "postprocess": "device",
}


def reads_and_records(model, image, **settings) -> tuple[int, int, int, int]:
    """(host reads, records, decode batches, crops) of one generation, after a warm-up run (which
    builds the crop geometry's resize tables once, on the host)."""
    generator = AutomaticMaskGenerator(model, **{**SETTINGS, **settings})
    generator.generate(image)
    with count_host_reads() as reads:
        records = generator.generate(image)
    s = generator.settings
    _, layers = crop_boxes(image.shape[:2], s.crop_n_layers, s.crop_overlap_ratio)
    points = [len(generator.point_grids[layer]) for layer in layers]
    batches = sum(math.ceil(n / s.points_per_batch) for n in points)
    return reads.total, len(records), batches, len(layers)


def test_host_reads_do_not_grow_with_the_masks(sharp_sam, random_image):
    few_reads, few, batches, _ = reads_and_records(
        sharp_sam, random_image, stability_score_thresh=0.95
    )
    many_reads, many, _, _ = reads_and_records(sharp_sam, random_image, stability_score_thresh=0.0)
    assert many - few >= 50
    assert (many_reads - few_reads) / (many - few) <= 0.05
    assert many_reads <= PER_BATCH * batches + PER_CROP + PER_IMAGE


@pytest.mark.parametrize("stability", [0.8, 0.0])
def test_host_reads_are_bounded_with_a_crop_pyramid(sharp_sam, random_image, stability):
    reads, records, batches, crops = reads_and_records(
        sharp_sam, random_image, crop_n_layers=1, stability_score_thresh=stability
    )
    assert records > 0 and crops == 5
    assert reads <= PER_BATCH * batches + PER_CROP * crops + PER_IMAGE
