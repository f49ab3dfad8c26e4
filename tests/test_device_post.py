"""The device post-processing's steps (core/device_post.py) against the reference's own
helpers and the host path, on crafted masks: boxes, filters, and run lengths in the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mobile_sam import SamAutomaticMaskGenerator
from mobile_sam.utils import amg as ref
from pycocotools import mask as coco_mask
from torch.nn import functional as F

from amg_lightning import AutomaticMaskGenerator
from amg_lightning.core import device_post, rle
from amg_lightning.core.boxes import box_nms, mask_boxes
from amg_lightning.core.decoder import PointDecoder
from amg_lightning.core.masks import CropFrame
from tests.helpers.images import read_photo

IMAGE_SIZE = (50, 70)  # height, width
# Crops that span the image's height (runs go on across columns) and that do not.
CROPS = {
    "whole image": (0, 0, 70, 50),
    "full height, right part": (30, 0, 70, 50),
    "inner": (10, 5, 45, 40),
    "bottom right": (35, 20, 70, 50),
}


def random_masks(crop: tuple[int, int, int, int], seed: int) -> torch.Tensor:
    """Blobby masks in the crop, with an empty one, a full one, and ones touching each edge."""
    x0, y0, x1, y1 = crop
    generator = torch.Generator().manual_seed(seed)
    masks = torch.rand(8, y1 - y0, x1 - x0, generator=generator) > 0.6
    masks[0] = False
    masks[1] = True
    masks[2, -1, :] = True  # the last row: runs end at the crop's bottom
    masks[3, 0, :] = True
    return masks


def frame_of(crop: tuple[int, int, int, int]) -> CropFrame:
    return CropFrame(crop, IMAGE_SIZE, (64, 64))


@pytest.mark.parametrize("crop", list(CROPS.values()), ids=list(CROPS))
def test_run_lengths_are_cocos_in_the_image(crop):
    masks = random_masks(crop, seed=sum(crop))
    lengths, per_mask = device_post.run_lengths(masks, frame_of(crop))
    uncropped = ref.uncrop_masks(masks, list(crop), *IMAGE_SIZE)
    expected = ref.mask_to_rle_pytorch(uncropped)
    starts = np.cumsum([0, *per_mask.tolist()])
    for k, rle_ref in enumerate(expected):
        counts = lengths[starts[k] : starts[k + 1]].numpy()
        counts = counts[:-1] if counts[-1] == 0 else counts  # as to_host cuts them
        assert counts.tolist() == rle_ref["counts"]
        # The COCO string pycocotools writes from the reference's mask, byte for byte.
        fortran = np.asfortranarray(uncropped[k].numpy().astype(np.uint8))
        assert rle.to_coco(counts, IMAGE_SIZE)["counts"] == coco_mask.encode(fortran)[
            "counts"
        ].decode("ascii")


def test_mask_boxes_are_the_references():
    masks = random_masks(CROPS["inner"], seed=3)
    masks[4] = False
    masks[4, 7, 11] = True  # a single pixel
    assert mask_boxes(masks).tolist() == ref.batched_mask_to_box(masks).tolist()


def test_true_indices_keep_order():
    flags = torch.tensor([False, True, True, False, True, False])
    assert device_post.true_indices(flags, 3).tolist() == [1, 2, 4]


@pytest.mark.parametrize("stability_thresh", [0.0, 0.4])
def test_filter_step_keeps_what_the_host_step_keeps(tiny_sam, stability_thresh):
    """Crafted logits: interior, cut by an inner crop edge, at the image's edge, unstable;
    the device step keeps the same masks with the same columns and RLEs as the host step."""
    crop_box = (60, 40, 160, 120)  # right and bottom edges are the image's
    logits = torch.full((5, 80, 100), -10.0)
    logits[0, 30:50, 30:60] = 10  # interior: kept
    logits[1, 0:30, 30:60] = 10  # touches the crop's top edge, inside the image: dropped
    logits[2, 50:80, 70:100] = 10  # reaches the image's bottom-right corner: kept
    logits[3, 30:50, 0:10] = 10  # touches the crop's left edge: dropped
    logits[4, 30:50, 30:60] = 0.5  # unstable: dropped by a stability threshold
    points = torch.tensor([[45.0, 40.0], [45.0, 15.0], [85.0, 65.0], [5.0, 40.0], [1.0, 2.0]])
    iou_preds = torch.linspace(0.9, 0.99, 5)
    frame = CropFrame(crop_box, (120, 160), (64, 80))
    generator = AutomaticMaskGenerator(tiny_sam, stability_score_thresh=stability_thresh)
    resize = generator.family.resize(generator.decoder, frame)
    # The same shapes in the low-res frame, which both steps resize to the crop.
    low_res = F.interpolate(logits[:, None], resize.low_res_shape, mode="nearest")[:, 0]
    masks = resize.masks(low_res, 0.0, 1.0)
    host = generator._filter_full_res(masks, iou_preds, points.double(), frame)
    boxes = torch.tensor([crop_box, frame.image_box])
    on_device = device_post.compact(
        [
            device_post.filter_masks(
                masks, low_res, stability_thresh, iou_preds, points.double(), boxes
            )
        ]
    )
    (ours,) = device_post.to_host([device_post.Survivors(on_device, frame, resize, 0.0)])
    assert len(host) == (2 if stability_thresh else 3)
    assert [c.tolist() for c in ours.rles] == [c.tolist() for c in host.rles]
    for column in ("boxes", "iou_preds", "stability", "points", "crop_boxes"):
        assert torch.equal(getattr(ours, column), getattr(host, column)), column


def test_point_embeddings_are_the_prompt_encoders(mobile_sam):
    """The decoder embeds points without boolean indexing; bit for bit the prompt encoder's."""
    decoder = PointDecoder(mobile_sam)
    points = torch.rand(37, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    points *= 1024
    labels = torch.ones(len(points), 1, dtype=torch.int)
    prompts = (points[:, None], labels)
    expected, _ = mobile_sam.prompt_encoder(points=prompts, boxes=None, masks=None)
    assert torch.equal(decoder._point_embeddings(points), expected)


def assert_reference_postprocessing(sam, image: np.ndarray, settings: dict, crop: int) -> None:
    """The reference's own post-processing of one crop (through its per-crop NMS) and ours
    on the same mask decoder outputs (captured from the reference's run) are bit-equal:
    IoU filter, upscaling, stability, binarising, boxes, crop-edge filter, NMS and RLE."""
    reference = SamAutomaticMaskGenerator(sam, **settings)
    crops, layers = ref.generate_crop_boxes(
        image.shape[:2], reference.crop_n_layers, reference.crop_overlap_ratio
    )
    box, layer = crops[crop], layers[crop]
    captured = []
    forward = sam.mask_decoder.forward

    def capture(*args, **kwargs):
        captured.append(forward(*args, **kwargs))
        return captured[-1]

    sam.mask_decoder.forward = capture
    try:
        expected = reference._process_crop(image, box, layer, image.shape[:2])
    finally:
        del sam.mask_decoder.forward
    device = sam.pixel_mean.device
    ours = AutomaticMaskGenerator(sam, postprocess="device", **settings)
    frame = ours._frame(box, image.shape[:2])
    crop_h, crop_w = frame.crop_size
    points = torch.as_tensor(ours.point_grids[layer] * [crop_w, crop_h], device=device)
    boxes = torch.tensor([frame.box, frame.image_box], device=device)
    resize = ours.family.resize(ours.decoder, frame)
    step = ours.settings.points_per_batch  # the reference's batches
    parts = []
    for k, (low_res, iou_preds) in enumerate(captured):
        batch = slice(k * step, (k + 1) * step)
        upscale = lambda prompts, extent, low_res=low_res: low_res[prompts]  # noqa: E731
        masks = ours.masks_on_device(iou_preds, upscale, points[batch], resize, boxes)
        parts += [masks] if masks is not None else []
    masks = device_post.DeviceMasks.cat(parts)
    keep = box_nms(masks.boxes, masks.iou_preds, ours.settings.box_nms_thresh)
    survivors = device_post.Survivors(masks.select(keep), frame, resize, sam.mask_threshold)
    (got,) = device_post.to_host([survivors])
    assert len(got) == len(expected["rles"]) >= 3
    assert [c.tolist() for c in got.rles] == [r["counts"] for r in expected["rles"]]
    assert torch.equal(got.boxes, expected["boxes"].cpu().long())
    assert torch.equal(got.iou_preds, expected["iou_preds"].cpu())
    assert torch.equal(got.stability, expected["stability_score"].cpu())
    assert torch.equal(got.points, expected["points"].cpu().double())


@pytest.mark.parametrize(("crop_n_layers", "crop"), [(0, 0), (1, 2)], ids=["image", "sub-crop"])
def test_postprocessing_is_the_references_on_its_decoder_outputs(mobile_sam, crop_n_layers, crop):
    image = read_photo("skimage:astronaut", None, max_side=256)
    settings = {"points_per_side": 8, "crop_n_layers": crop_n_layers}
    assert_reference_postprocessing(mobile_sam, image, settings, crop)
