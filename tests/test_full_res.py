"""The full-resolution stage: tile-by-tile resizing gives exactly the dense F.interpolate path.

The tiled path reproduces F.interpolate's CPU arithmetic and skips tiles whose sources all lie
on one side of every cutoff. These tests compare it with the dense path pixel for pixel on
crafted maps (empty, full, one pixel, on the crop's edges, values exactly at a cutoff, odd
sizes) and on the real model's logits; check, per geometry, that the arithmetic matches as the
generator checks it before using tiles; and check the upscaler's cut to the crop's extent.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from amg_lightning.core import rle
from amg_lightning.core.decoder import PointDecoder
from amg_lightning.core.full_res import CropResize, TiledMasks, crop_resize

CPU = torch.device("cpu")
# (encoder input size, crop size): enlarging, shrinking, equal, odd, thin, one row.
GEOMETRIES = [
    ((683, 1024), (1500, 2250)),
    ((1024, 683), (1501, 1001)),
    ((684, 1024), (534, 800)),
    ((1024, 1024), (1024, 1024)),
    ((1024, 1024), (1031, 1033)),
    ((37, 1024), (41, 1111)),
    ((1, 1024), (1, 3000)),
]


@pytest.mark.parametrize(("input_size", "crop_size"), GEOMETRIES)
def test_tiled_resize_is_exact_on_the_cpu(input_size, crop_size):
    assert crop_resize(256, 1024, input_size, crop_size).exact(CPU)


def crafted_maps(shape: tuple[int, int]) -> torch.Tensor:
    """Low-res maps meant to trip a tiled resize: see each line."""
    h, w = shape
    generator = torch.Generator().manual_seed(1)
    maps = torch.full((10, h, w), -20.0)
    maps[1] = 20.0  # the whole crop
    maps[2, 0, 0] = 20.0  # one pixel in the top-left corner
    maps[3, h // 2, w // 2] = 0.5  # one pixel between the threshold and threshold + offset
    maps[4, -2:, -3:] = 8.0  # a block on the bottom-right edge of what the crop reads
    maps[5, :, : w // 3] = -1.0  # exactly at the lower cutoff ...
    maps[5, :, w // 3 : 2 * w // 3] = 0.0  # ... the threshold ...
    maps[5, :, 2 * w // 3 :] = 1.0  # ... and the upper cutoff
    maps[6] = torch.randn(h, w, generator=generator) * 3  # edges everywhere
    maps[7] = F.interpolate(  # smooth blobs
        torch.randn(1, 1, 6, 8, generator=generator) * 10, (h, w), mode="bilinear"
    )[0, 0]
    maps[8, :, w // 2 :] = 30.0  # a straight edge down the middle, inside above every cutoff
    maps[9, : h // 2] = 0.5  # a plateau inside the mask but below threshold + offset
    return maps


def assert_tiled_equals_dense(resize: CropResize, low_res: torch.Tensor, threshold, offset):
    tiled = resize.masks(low_res, threshold, offset)
    assert isinstance(tiled, TiledMasks)  # the generator's choice on the CPU
    dense = resize.dense_masks(low_res, threshold, offset)
    torch.testing.assert_close(tiled.stability(), dense.stability(), rtol=0, atol=0, equal_nan=True)
    # The device path's view of the same masks: whole binary masks and their boxes.
    assert torch.equal(tiled.binary(), dense.binary())
    assert torch.equal(tiled.boxes(), dense.boxes())
    everything = torch.arange(len(low_res))
    crop_box = [40, 30, 40 + resize.crop_size[1], 30 + resize.crop_size[0]]
    image_size = (resize.crop_size[0] + 50, resize.crop_size[1] + 60)
    ours = tiled.encode(everything, crop_box, image_size)
    expected = dense.encode(everything, crop_box, image_size)
    np.testing.assert_array_equal(ours.boxes, expected.boxes)
    for mine, theirs in zip(ours.counts, expected.counts, strict=True):
        np.testing.assert_array_equal(mine, theirs)
    return ours


@pytest.mark.parametrize(("input_size", "crop_size"), GEOMETRIES)
def test_tiled_masks_equal_dense_masks_on_crafted_maps(input_size, crop_size):
    resize = crop_resize(256, 1024, input_size, crop_size)
    low_res = crafted_maps(resize.low_res_shape)
    encoded = assert_tiled_equals_dense(resize, low_res, 0.0, 1.0)
    height, width = crop_size
    assert rle.area(encoded.counts[0]) == 0  # empty
    assert rle.area(encoded.counts[1]) == height * width  # full
    assert encoded.boxes[0].tolist() == [40, 30, 40, 30]  # an empty mask's box: the crop corner


@pytest.mark.parametrize(("threshold", "offset"), [(0.0, 0.0), (0.5, 2.0), (-3.0, 1.0)])
def test_tiled_masks_equal_dense_masks_at_other_cutoffs(threshold, offset):
    resize = crop_resize(256, 1024, (683, 1024), (1500, 2250))
    assert_tiled_equals_dense(resize, crafted_maps(resize.low_res_shape), threshold, offset)


def test_tiled_masks_read_a_view_of_a_larger_map():
    """A view into a larger map (not contiguous) gives the masks of its values."""
    resize = crop_resize(256, 1024, (684, 1024), (534, 800))
    rows, cols = resize.low_res_shape
    larger = torch.full((10, rows + 5, cols + 7), 99.0)
    larger[:, :rows, :cols] = crafted_maps((rows, cols))
    view = larger[:, :rows, :cols]
    assert not view.is_contiguous()
    assert_tiled_equals_dense(resize, view, 0.0, 1.0)


@pytest.mark.slow
def test_tiled_masks_equal_dense_masks_on_real_logits(mobile_sam, random_image):
    """The real decoder's low-res logits, resized for a crop twice the encoder's size."""
    decoder = PointDecoder(mobile_sam)
    image = torch.as_tensor(random_image).permute(2, 0, 1)[None].float()
    image = F.interpolate(image, (768, 1024), mode="bilinear")
    with torch.no_grad():
        ctx = decoder.prepare(mobile_sam.image_encoder(mobile_sam.preprocess(image)))
    points = torch.rand(16, 2, generator=torch.Generator().manual_seed(0)) * 1000
    tokens = decoder.decode_tokens(ctx, points)
    resize = crop_resize(256, 1024, (768, 1024), (1500, 2000))
    extent = resize.embedding_extent(decoder.upscale_factor)
    low_res = decoder.upscale(ctx, tokens, torch.arange(16), extent).flatten(0, 1).clone()
    assert_tiled_equals_dense(resize, low_res, mobile_sam.mask_threshold, 1.0)


@pytest.mark.parametrize(("rows", "cols"), [(11, 16), (16, 7), (1, 1), (16, 16)])
def test_upscaler_extent_is_the_top_left_of_the_full_map(tiny_sam, random_image, rows, cols):
    """The tiny model's embedding grid is 16 x 16."""
    decoder = PointDecoder(tiny_sam)
    image = torch.as_tensor(random_image).permute(2, 0, 1)[None].float()
    image = F.interpolate(image, (tiny_sam.image_encoder.img_size,) * 2, mode="bilinear")
    with torch.no_grad():
        ctx = decoder.prepare(tiny_sam.image_encoder(tiny_sam.preprocess(image)))
    tokens = decoder.decode_tokens(ctx, torch.tensor([[30.0, 40.0], [100.0, 20.0]]))
    prompts = torch.tensor([1, 0])
    full = decoder.upscale(ctx, tokens, prompts).clone()
    part = decoder.upscale(ctx, tokens, prompts, (rows, cols))
    assert part.shape[-2:] == (4 * rows, 4 * cols)
    # Matrix products of other heights may round differently, within float32 rounding.
    torch.testing.assert_close(part, full[..., : 4 * rows, : 4 * cols], rtol=1e-5, atol=1e-6)
