"""Each geometry and filter step of the generator against segment_anything's own functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.utils import amg as ref

from amg_lightning.core import rle
from amg_lightning.core.boxes import box_nms, near_crop_edge, xyxy_to_xywh
from amg_lightning.core.decoder import PointDecoder, upscale_to_crop
from amg_lightning.core.full_res import stability_score
from amg_lightning.core.grids import crop_boxes, layer_point_grids, point_grid
from amg_lightning.core.image import resize_longest_side, resized_shape
from amg_lightning.core.regions import remove_small_regions


def random_masks(count: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Blobby boolean masks with holes and islands, plus one empty and one full mask."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(count, 1, max(height // 8, 2), max(width // 8, 2), generator=gen)
    masks = torch.nn.functional.interpolate(low, (height, width), mode="bilinear")[:, 0] > 0.6
    masks[0] = False
    masks[1] = True
    return masks


@pytest.mark.parametrize("n", [1, 4, 32])
def test_point_grid_matches_reference(n):
    np.testing.assert_array_equal(point_grid(n), ref.build_point_grid(n))


def test_layer_point_grids_match_reference():
    ours = layer_point_grids(32, 2, 2)
    theirs = ref.build_all_layer_point_grids(32, 2, 2)
    assert [g.shape for g in ours] == [(1024, 2), (256, 2), (64, 2)]
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("size", [(534, 800), (1500, 2250), (600, 600), (37, 1000)])
@pytest.mark.parametrize("layers", [0, 1, 2])
def test_crop_boxes_match_reference(size, layers):
    assert crop_boxes(size, layers, 512 / 1500) == ref.generate_crop_boxes(size, layers, 512 / 1500)


@pytest.mark.parametrize("crop_box", [[0, 0, 56, 40], [10, 0, 40, 40], [7, 9, 31, 33]])
def test_boxes_of_cropped_masks_match_reference(crop_box):
    x0, y0, x1, y1 = crop_box
    masks = random_masks(12, y1 - y0, x1 - x0)
    masks[3, :, 2] = masks[4, 0, :] = masks[5, -1, :] = True  # a full column, first, last row
    expected = ref.uncrop_boxes_xyxy(ref.batched_mask_to_box(masks), crop_box)
    boxes = rle.encode_in_image(masks, crop_box, (40, 56)).boxes
    assert boxes.tolist() == expected.tolist()
    assert boxes[0].tolist() == [x0, y0, x0, y0]  # empty, as the reference has it


def test_rle_and_boxes_of_only_empty_masks():
    encoded = rle.encode_in_image(torch.zeros(2, 5, 7, dtype=torch.bool), [3, 2, 10, 7], (9, 12))
    assert [c.tolist() for c in encoded.counts] == [[9 * 12], [9 * 12]]
    assert encoded.boxes.tolist() == [[3, 2, 3, 2], [3, 2, 3, 2]]


def test_near_crop_edge_matches_reference():
    boxes = torch.tensor([[0, 0, 10, 10], [5, 5, 100, 60], [30, 30, 40, 40], [0, 50, 199, 99]])
    crop = [20, 0, 220, 100]
    ours = near_crop_edge(boxes + torch.tensor([20, 0, 20, 0]), crop, [0, 0, 400, 100])
    assert torch.equal(ours, ref.is_box_near_crop_edge(boxes, crop, [0, 0, 400, 100]))
    assert ours.tolist() == [False, True, False, True]  # box 0 is at the image edge too


def test_xyxy_to_xywh():
    assert xyxy_to_xywh(torch.tensor([[2, 3, 10, 20]])).tolist() == [[2, 3, 8, 17]]


def test_stability_score_matches_reference():
    logits = torch.randn(6, 30, 40) * 3
    expected = ref.calculate_stability_score(logits, 0.0, 1.0)
    torch.testing.assert_close(stability_score(logits, 0.0, 1.0), expected)


def test_box_nms_matches_reference_order():
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand(50, 2, generator=gen) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(50, 2, generator=gen) * 40], dim=1)
    scores = torch.rand(50, generator=gen)
    from torchvision.ops import batched_nms

    expected = batched_nms(boxes, scores, torch.zeros(50), 0.7)
    assert torch.equal(box_nms(boxes, scores, 0.7), expected)


@pytest.mark.parametrize(
    "crop_box", [[0, 0, 56, 40], [10, 0, 40, 40], [0, 5, 56, 30], [7, 9, 31, 33]]
)
def test_rle_of_cropped_masks_matches_reference_on_uncropped(crop_box):
    height, width = 40, 56
    x0, y0, x1, y1 = crop_box
    masks = random_masks(8, y1 - y0, x1 - x0, seed=x0 + y0)
    expected = ref.mask_to_rle_pytorch(ref.uncrop_masks(masks, crop_box, height, width))
    ours = rle.encode_in_image(masks, crop_box, (height, width)).counts
    assert [c.tolist() for c in ours] == [e["counts"] for e in expected]


def test_rle_round_trip_and_coco_form():
    from pycocotools import mask as coco_mask

    masks = random_masks(5, 33, 47, seed=3)
    for mask, counts in zip(
        masks, rle.encode_in_image(masks, [0, 0, 47, 33], (33, 47)).counts, strict=True
    ):
        np.testing.assert_array_equal(rle.decode(counts, (33, 47)), mask.numpy())
        assert rle.area(counts) == int(mask.sum())
        coco = rle.to_coco(counts, (33, 47))
        assert isinstance(coco["counts"], str)
        np.testing.assert_array_equal(coco_mask.decode(coco).astype(bool), mask.numpy())
        assert rle.to_uncompressed(counts, (33, 47))["counts"] == counts.tolist()


def mask_with_regions() -> np.ndarray:
    mask = np.zeros((60, 80), dtype=bool)
    mask[10:40, 10:50] = True
    mask[20:23, 20:23] = False  # small hole
    mask[50:52, 60:62] = True  # small island
    mask[0:30, 70:80] = True  # large island touching the image edge
    return mask


@pytest.mark.parametrize("min_area", [5, 10, 400, 100000])
def test_remove_small_regions_matches_reference(min_area):
    mask = mask_with_regions()
    box = rle.encode_mask(mask).boxes[0].tolist()
    filled, holes_changed = ref.remove_small_regions(mask, min_area, "holes")
    expected, islands_changed = ref.remove_small_regions(filled, min_area, "islands")
    ours, changed = remove_small_regions(mask, box, min_area)
    np.testing.assert_array_equal(ours, expected)
    assert changed == (holes_changed or islands_changed)


def test_remove_small_regions_keeps_background_that_only_looks_enclosed_in_the_box():
    # A background pocket open to the outside of the box is not a hole, whatever its size.
    mask = np.zeros((50, 50), dtype=bool)
    mask[10:30, 10:30] = True
    mask[15:25, 20:30] = False  # pocket opening onto the box's right edge
    box = rle.encode_mask(mask).boxes[0].tolist()
    filled, _ = ref.remove_small_regions(mask, 200, "holes")
    ours, _ = remove_small_regions(mask, box, 200)
    np.testing.assert_array_equal(ours, filled)


def test_resize_matches_sam_transform():
    from segment_anything.utils.transforms import ResizeLongestSide

    image = (np.random.default_rng(0).random((53, 91, 3)) * 255).astype(np.uint8)
    expected = ResizeLongestSide(64).apply_image(image)
    np.testing.assert_array_equal(resize_longest_side(image, 64), expected)
    assert resized_shape(53, 91, 64) == expected.shape[:2]


def test_decoder_matches_sam_mask_decoder(tiny_sam):
    """The reassociated decoder gives SAM's masks and IoU predictions up to float rounding."""
    torch.manual_seed(0)
    embedding = torch.randn(1, 32, 16, 16)
    points = torch.rand(10, 2, dtype=torch.float64) * 256
    labels = torch.ones(10, 1, dtype=torch.int)
    with torch.no_grad():
        sparse, dense = tiny_sam.prompt_encoder(
            points=(points[:, None], labels), boxes=None, masks=None
        )
        expected_masks, expected_iou = tiny_sam.mask_decoder(
            embedding, tiny_sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=True
        )
        decoder = PointDecoder(tiny_sam)
        ctx = decoder.prepare(embedding)
        tokens = decoder.decode_tokens(ctx, points)
        masks = decoder.upscale(ctx, tokens, torch.arange(10)).clone()
    torch.testing.assert_close(tokens.iou_preds, expected_iou, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(masks, expected_masks, atol=1e-4, rtol=1e-4)


def test_upscale_to_crop_matches_sam_postprocess(tiny_sam):
    low_res = torch.randn(3, 3, 64, 64)
    expected = tiny_sam.postprocess_masks(low_res, (170, 256), (200, 301))
    torch.testing.assert_close(upscale_to_crop(low_res, 256, (170, 256), (200, 301)), expected)


@pytest.mark.parametrize(
    ("input_size", "crop_size"),
    [
        ((256, 256), (256, 256)),
        ((171, 256), (534, 800)),
        ((256, 9), (1001, 37)),
        ((1, 256), (3, 700)),
    ],
)
def test_upscale_to_crop_matches_sam_postprocess_at_odd_sizes(tiny_sam, input_size, crop_size):
    """The cut before the first interpolation keeps every value bit-identical."""
    low_res = torch.randn(4, 1, 64, 64) * 4
    expected = tiny_sam.postprocess_masks(low_res, input_size, crop_size)
    assert torch.equal(upscale_to_crop(low_res, 256, input_size, crop_size), expected)


def test_decoder_buffers_reused_across_batches_change_nothing(tiny_sam):
    """Batches of other sizes through one decoder's workspace give a fresh decoder's results."""
    torch.manual_seed(1)
    embedding = torch.randn(1, 32, 16, 16)
    points = torch.rand(12, 2, dtype=torch.float64) * 256
    shared = PointDecoder(tiny_sam)
    ctx = shared.prepare(embedding)
    for batch in (points[:7], points[7:], points[:3]):
        fresh = PointDecoder(tiny_sam)
        fresh_ctx = fresh.prepare(embedding)
        expected = fresh.decode_tokens(fresh_ctx, batch)
        expected_masks = fresh.upscale(fresh_ctx, expected, torch.tensor([0, 2])).clone()
        tokens = shared.decode_tokens(ctx, batch)
        torch.testing.assert_close(tokens.iou_preds, expected.iou_preds, rtol=0, atol=0)
        masks = shared.upscale(ctx, tokens, torch.tensor([0, 2]))
        torch.testing.assert_close(masks, expected_masks, rtol=0, atol=0)


def test_bfloat16_upscaler_stays_close(tiny_sam):
    torch.manual_seed(2)
    embedding = torch.randn(1, 32, 16, 16)
    points = torch.rand(6, 2, dtype=torch.float64) * 256
    exact, fast = PointDecoder(tiny_sam), PointDecoder(tiny_sam, torch.bfloat16)
    ctx, fast_ctx = exact.prepare(embedding), fast.prepare(embedding)
    tokens, fast_tokens = exact.decode_tokens(ctx, points), fast.decode_tokens(fast_ctx, points)
    torch.testing.assert_close(fast_tokens.iou_preds, tokens.iou_preds)  # float32 transformer
    everything = torch.arange(6)
    masks = exact.upscale(ctx, tokens, everything).clone()
    fast_masks = fast.upscale(fast_ctx, fast_tokens, everything)
    assert fast_masks.dtype == torch.bfloat16
    torch.testing.assert_close(fast_masks.float(), masks, atol=0.1, rtol=0.05)


def test_mask_data_concatenates_and_selects_every_column():
    from amg_lightning.core.masks import MaskData

    def masks(n: int, start: int) -> MaskData:
        ids = torch.arange(start, start + n, dtype=torch.float)
        return MaskData(
            rles=[np.array([i]) for i in range(start, start + n)],
            boxes=ids[:, None].expand(n, 4),
            iou_preds=ids,
            stability=ids,
            points=ids[:, None].expand(n, 2),
            crop_boxes=ids[:, None].expand(n, 4),
        )

    both = MaskData.cat([masks(2, 0), MaskData(), masks(3, 2)])
    assert len(both) == 5 and both.boxes.shape == (5, 4)
    assert both.boxes.dtype == torch.float  # an empty part does not change a column's dtype
    picked = both.select(torch.tensor([4, 1]))
    assert [int(r[0]) for r in picked.rles] == [4, 1]
    for name in MaskData.tensor_columns():
        assert getattr(picked, name).reshape(2, -1)[:, 0].tolist() == [4.0, 1.0], name
    assert len(both.select(torch.zeros(5, dtype=torch.bool))) == 0
    assert len(MaskData.cat([])) == 0 and MaskData().points.shape == (0, 2)


def test_batches_sized_by_free_memory(tiny_sam):
    from amg_lightning.core.memory import (
        crops_per_pass,
        encoder_bytes_per_crop,
        free_bytes,
        full_res_bytes,
        prompts_per_batch,
    )

    cpu = torch.device("cpu")
    assert free_bytes(cpu) > 0
    # The tiny ViT: 2 heads over 16 x 16 tokens of width 32.
    assert encoder_bytes_per_crop(tiny_sam.image_encoder) == 4 * (3 * 2 * 256**2 + 20 * 32 * 256)
    assert crops_per_pass(tiny_sam.image_encoder, cpu, 4) == 4  # a few MB fit many times
    assert crops_per_pass(tiny_sam.image_encoder, cpu, 1) == 1
    assert prompts_per_batch(4096, 256, cpu, 64) == 64  # the CPU keeps points_per_batch
    # The CPU's full-resolution slices stay within glibc's reuse, whatever the setting allows.
    assert full_res_bytes(cpu, 2**30) == 32 * 2**20
    assert full_res_bytes(cpu, 2**20) == 2**20
