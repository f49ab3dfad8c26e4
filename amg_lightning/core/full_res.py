"""Full-resolution masks from low-resolution logits, resized only where a cutoff is crossed.

SAM's postprocessing resizes each low-resolution logit map bilinearly twice: to the unpadded
encoder input, then to the crop. The crop-sized logits are read at three cutoffs: the mask
threshold (the binary mask, its box and RLE) and the threshold plus and minus the stability
offset (the stability score). Every crop pixel is a convex combination of four input-sized
logits, so in a tile of crop pixels whose sources all lie above a cutoff (or all below it),
every pixel does too. Only the tiles where a cutoff lies between their sources' least and
greatest value are resized; the others are counted, and drawn for the RLE, whole.

The first resize is F.interpolate's own. Inside the resized tiles the second one is too: each
axis's source indices and weights are computed as its CPU kernel computes them, and each blend
is rounded as that kernel rounds it (one fused multiply-add). `TiledResize.exact` checks this
once per geometry and device on a random probe against F.interpolate; where it differs
(another device or build), callers use `DenseMasks`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from amg_lightning.core import rle
from amg_lightning.core.decoder import upscale_to_input

# Crop pixels per tile side: smaller tiles follow mask edges more closely, larger ones cost
# less bookkeeping.
_TILE = 32
# Tiles resized at once (bounds the temporaries: 8 float tensors of TILE^2 per tile).
_TILES_PER_STEP = 2048


@dataclass(frozen=True)
class Axis:
    """One axis of a bilinear resize (align_corners=False): per output index, two sources."""

    first: Tensor  # int64: the lower source index
    second: Tensor  # int64: the upper source index (equal to `first` at the input's end)
    first_weight: Tensor  # float32
    second_weight: Tensor  # float32

    def take(self, index: Tensor) -> Axis:
        return Axis(
            self.first[index],
            self.second[index],
            self.first_weight[index],
            self.second_weight[index],
        )


def bilinear_axis(n_in: int, n_out: int) -> Axis:
    """Sources and weights of F.interpolate(size=...) along one axis, as its kernel computes them.

    The kernel's source coordinate `scale * (i + 0.5) - 0.5` is one fused multiply-add in
    float32; the product is exact in float64, so computing there and rounding once matches it.
    """
    scale = torch.tensor(n_in, dtype=torch.float32) / n_out
    index = torch.arange(n_out, dtype=torch.float64)
    source = (scale.double() * (index + 0.5) - 0.5).float().clamp_min(0.0)
    first = source.floor().long().clamp_max(n_in - 1)
    second_weight = (source - first.float()).clamp(0.0, 1.0)
    second = torch.where(first < n_in - 1, first + 1, first)
    return Axis(first, second, 1.0 - second_weight, second_weight)


def _blend(a: Tensor, b: Tensor, a_weight: Tensor, b_weight: Tensor) -> Tensor:
    """a * a_weight + b * b_weight rounded as the kernel rounds it: fma(a, a_weight, b * b_weight).

    torch.addcmul's CPU kernel is that fused multiply-add (`TiledResize.exact` checks it).
    """
    return torch.addcmul(b * b_weight, a, a_weight)


@dataclass(frozen=True)
class Tiles:
    """One crop axis cut into tiles of `_TILE` pixels; the last tile repeats its last pixel."""

    pixels: Tensor  # tiles x TILE: crop pixel index
    valid: Tensor  # tiles x TILE: False where a pixel repeats
    sources: Axis  # tiles x TILE: each pixel's input-sized sources and weights
    reads: Tensor  # tiles x S: every input-sized index the tile reads (the last one repeated)
    low_reads: Tensor  # tiles x S': every low-res index those read

    @classmethod
    def of(cls, first: Axis, second: Axis, size: int) -> Tiles:
        """Tiles of `size` crop pixels resized by `first` (low-res -> input), then `second`."""
        start = torch.arange(0, size, _TILE)[:, None]
        position = start + torch.arange(_TILE)
        pixels = position.clamp_max(size - 1)
        sources = second.take(pixels)
        low, high = sources.first[:, 0], sources.second[:, -1]
        return cls(
            pixels,
            position < size,
            sources,
            _every_index(low, high),
            _every_index(first.first[low], first.second[high]),
        )

    @property
    def sizes(self) -> Tensor:
        """Pixels per tile."""
        return self.valid.sum(dim=1)


def _every_index(low: Tensor, high: Tensor) -> Tensor:
    """Per row, every index from `low` to `high`, padded by repeating `high`: rows x span."""
    span = int((high - low).max()) + 1
    return torch.minimum(low[:, None] + torch.arange(span), high[:, None])


class TiledResize:
    """SAM's two resizes of one crop geometry, the second one tile by tile."""

    def __init__(
        self,
        low_size: int,
        encoder_size: int,
        input_size: tuple[int, int],
        crop_size: tuple[int, int],
    ) -> None:
        self.low_size, self.encoder_size = low_size, encoder_size
        self.input_size, self.crop_size = input_size, crop_size
        first = bilinear_axis(low_size, encoder_size)
        rows = bilinear_axis(input_size[0], crop_size[0])
        cols = bilinear_axis(input_size[1], crop_size[1])
        self.rows = Tiles.of(first, rows, crop_size[0])
        self.cols = Tiles.of(first, cols, crop_size[1])
        self.tile_areas = self.rows.sizes[:, None] * self.cols.sizes[None, :]

    @property
    def low_res_shape(self) -> tuple[int, int]:
        """The top-left rows x columns of the low-res map the crop depends on."""
        first_resize = bilinear_axis(self.low_size, self.encoder_size)
        return tuple(int(first_resize.second[side - 1]) + 1 for side in self.input_size)

    def masks(self, low_res: Tensor, threshold: float, offset: float) -> TiledMasks:
        """K x h x w low-res maps read at `threshold` and `threshold` -/+ `offset`."""
        mid = upscale_to_input(low_res[:, None], self.encoder_size, self.input_size, self.low_size)
        cutoffs = torch.tensor([threshold - offset, threshold, threshold + offset])
        above, decided = self._decide(low_res, cutoffs)
        counts = (above & decided[:, None]).mul(self.tile_areas).sum(dim=(2, 3), dtype=torch.int32)
        tiles = (~decided).nonzero()  # (mask, tile row, tile column) to resize
        binary = self._resize_tiles(mid[:, 0], tiles, cutoffs, counts)
        return TiledMasks(self, counts, above[:, 1] & decided, tiles, binary)

    def _decide(self, low_res: Tensor, cutoffs: Tensor) -> tuple[Tensor, Tensor]:
        """Which tiles lie wholly above each cutoff (K x 3 x tile rows x tile columns), and
        which lie wholly above or below every cutoff (K x tile rows x tile columns)."""
        lowest, highest = self._tile_bounds(low_res)
        # A resized pixel can pass its sources' extremes by a few float32 roundings of the
        # map's largest magnitude: a tile is decided only with this margin to spare.
        margin = 1e-5 * low_res.abs().amax(dim=(1, 2)).clamp_min(1.0)[:, None, None, None]
        above = lowest[:, None] > cutoffs[:, None, None] + margin
        below = highest[:, None] < cutoffs[:, None, None] - margin
        return above, (above | below).all(dim=1)

    def _resize_tiles(self, mid: Tensor, tiles: Tensor, cutoffs: Tensor, counts: Tensor) -> Tensor:
        """Resizes the undecided tiles, adds their pixels above each cutoff to `counts`, and
        returns their masks at the threshold (the middle cutoff): B x TILE x TILE."""
        binary = [torch.zeros(0, _TILE, _TILE, dtype=torch.bool)]
        for start in range(0, len(tiles), _TILES_PER_STEP):
            part = tiles[start : start + _TILES_PER_STEP]
            values = self.tile_values(mid, part)
            # Repeated pixels past the crop's edge count at no cutoff.
            valid = self.rows.valid[part[:, 1], :, None] & self.cols.valid[part[:, 2], None, :]
            values.masked_fill_(~valid, -torch.inf)
            for c, cutoff in enumerate(cutoffs.tolist()):
                above_cutoff = values > cutoff
                hits = above_cutoff.sum(dim=(1, 2), dtype=torch.int32)
                counts[:, c].index_add_(0, part[:, 0], hits)
                if c == 1:
                    binary.append(above_cutoff)
        return torch.cat(binary)

    def _tile_bounds(self, low_res: Tensor) -> tuple[Tensor, Tensor]:
        """Least and greatest low-res logit each tile depends on: K x tile rows x tile columns.

        Input-sized logits are convex combinations of low-res ones, so these bound the tile.
        """
        row_low, row_high = low_res[:, self.rows.low_reads].aminmax(dim=2)  # K x tile rows x w
        low = row_low[:, :, self.cols.low_reads].amin(dim=3)
        high = row_high[:, :, self.cols.low_reads].amax(dim=3)
        return low, high

    def tile_values(self, mid: Tensor, tiles: Tensor) -> Tensor:
        """Crop-sized logits of the given (mask, tile row, tile column) tiles: B x TILE x TILE.

        Each tile's block of sources is cut out first. Columns are blended first: the kernel
        blends each source row along the width, then blends rows.
        """
        rows, cols = self.rows, self.cols
        i, j = tiles[:, 1], tiles[:, 2]
        row_reads, col_reads = rows.reads[i], cols.reads[j]
        # `mid` may be a view into a larger map (F.interpolate's padded output): index its
        # storage by mid's strides rather than copy it.
        mask_stride, row_stride, col_stride = mid.stride()
        storage = mid.as_strided((len(mid) * mask_stride,), (1,))
        flat = tiles[:, 0, None] * mask_stride + row_reads * row_stride  # B x S rows
        block = storage.take(flat[:, :, None] + col_reads[:, None, :] * col_stride)  # B x S x S'
        shape = (len(tiles), row_reads.shape[1], _TILE)
        left = (cols.sources.first[j] - col_reads[:, :1])[:, None, :].expand(shape)
        right = (cols.sources.second[j] - col_reads[:, :1])[:, None, :].expand(shape)
        across = _blend(
            block.gather(2, left),
            block.gather(2, right),
            cols.sources.first_weight[j][:, None, :],
            cols.sources.second_weight[j][:, None, :],
        )  # B x S x TILE
        shape = (len(tiles), _TILE, _TILE)
        top = (rows.sources.first[i] - row_reads[:, :1])[:, :, None].expand(shape)
        bottom = (rows.sources.second[i] - row_reads[:, :1])[:, :, None].expand(shape)
        return _blend(
            across.gather(1, top),
            across.gather(1, bottom),
            rows.sources.first_weight[i][:, :, None],
            rows.sources.second_weight[i][:, :, None],
        )

    @property
    def bytes_per_mask(self) -> int:
        """Memory one mask takes here: its input-sized logits and their tile bounds."""
        return 4 * 3 * self.input_size[0] * self.input_size[1]

    def pays(self, device: torch.device) -> bool:
        """Whether to resize tile by tile here: the crop has more pixels than the input-sized
        map (else the dense crop-sized stage costs less than the tile bookkeeping), and the
        tiled resize is exact on `device`."""
        larger = self.crop_size[0] * self.crop_size[1] > self.input_size[0] * self.input_size[1]
        return larger and self.exact(device)

    @torch.no_grad()
    def exact(self, device: torch.device) -> bool:
        """Whether the tiled resize equals F.interpolate's on `device` (checked once).

        Only the CPU kernel's arithmetic is reproduced; other devices use `DenseMasks`.
        """
        return device.type == "cpu" and _probe_matches(
            self.low_size, self.encoder_size, self.input_size, self.crop_size
        )


class TiledMasks:
    """K masks read at three cutoffs, with only the undecided tiles resized."""

    def __init__(
        self,
        resize: TiledResize,
        counts: Tensor,
        inside: Tensor,
        tiles: Tensor,
        binary: Tensor,
    ) -> None:
        self.resize = resize
        self.counts = counts  # K x 3: pixels above threshold - offset, threshold, + offset
        self.inside = inside  # K x tile rows x tile columns: decided tiles inside the mask
        self.tiles, self.binary = tiles, binary  # the resized tiles and their masks

    def stability(self) -> Tensor:
        """As `stability_score` of the full logits."""
        return self.counts[:, 2] / self.counts[:, 0]

    def encode(self, keep: Tensor, crop_box: list[int], image_size: tuple[int, int]) -> rle.Encoded:
        """RLEs and boxes, in the image, of the binary masks at indices `keep`."""
        changes = self._vertical_changes(keep)
        return rle.encode_changes(*changes, len(keep), crop_box, image_size)

    def _vertical_changes(self, keep: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As `rle.encode_in_image` finds them, from tile edges and resized tiles only: inside
        a decided tile no pixel differs from the one above it."""
        height, width = self.resize.crop_size
        count, tile_rows = len(keep), self.inside.shape[1]
        slot = torch.full((len(self.inside),), -1, dtype=torch.long)
        slot[keep] = torch.arange(count)
        kept = slot[self.tiles[:, 0]] >= 0
        binary, (mask, i, j) = self.binary[kept], self.tiles[kept].T
        mask = slot[mask]
        # The first and last pixel row of every tile row, then the changes between them.
        first = self.inside[keep][..., None].expand(-1, -1, -1, _TILE).clone()
        last = first.clone()
        first[mask, i, j] = binary[:, 0]
        last_row = torch.where(i == tile_rows - 1, height - 1 - (tile_rows - 1) * _TILE, _TILE - 1)
        last[mask, i, j] = binary[torch.arange(len(binary)), last_row]
        background = torch.zeros(count, 1, width, dtype=torch.bool)
        first = torch.cat([first.flatten(2)[..., :width], background], dim=1)
        last = torch.cat([background, last.flatten(2)[..., :width]], dim=1)
        edge_mask, edge, edge_column = _nonzero(first ^ last)  # edge e: row min(e * TILE, h)
        # Inside resized tiles, below their first row; pixels past the crop change nothing.
        inner = binary[:, 1:] ^ binary[:, :-1]
        inner &= self.resize.rows.valid[i, 1:, None] & self.resize.cols.valid[j, None, :]
        tile, below_first, tile_column = _nonzero(inner)
        inner_row = i.numpy()[tile] * _TILE + 1 + below_first
        return (
            np.concatenate([edge_mask, mask.numpy()[tile]]),
            np.concatenate([np.minimum(edge * _TILE, height), inner_row]),
            np.concatenate([edge_column, j.numpy()[tile] * _TILE + tile_column]),
        )


def _nonzero(x: Tensor) -> tuple[np.ndarray, ...]:
    """Indices of the True entries of a 3-D boolean tensor (NumPy's flat search is fastest)."""
    flat = np.flatnonzero(x.contiguous().numpy())
    return np.unravel_index(flat, x.shape)


class DenseMasks:
    """K masks read at three cutoffs from every pixel of their crop-sized logits."""

    def __init__(self, logits: Tensor, threshold: float, offset: float) -> None:
        self.logits, self.threshold, self.offset = logits, threshold, offset

    def stability(self) -> Tensor:
        return stability_score(self.logits, self.threshold, self.offset)

    def encode(self, keep: Tensor, crop_box: list[int], image_size: tuple[int, int]) -> rle.Encoded:
        return rle.encode_in_image((self.logits > self.threshold)[keep], crop_box, image_size)


def stability_score(logits: Tensor, threshold: float, offset: float) -> Tensor:
    """IoU of the masks binarised at threshold + offset and threshold - offset.

    The first is always inside the second, so the IoU is a ratio of pixel counts. Rows are
    counted in int16 first: a far faster reduction of booleans than one int64 sum.
    """
    inner = (logits > threshold + offset).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    outer = (logits > threshold - offset).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    return inner / outer


@cache
def crop_resize(
    low_size: int, encoder_size: int, input_size: tuple[int, int], crop_size: tuple[int, int]
) -> TiledResize:
    """The (cached) resize of one crop geometry."""
    return TiledResize(low_size, encoder_size, input_size, crop_size)


@cache
def _probe_matches(
    low_size: int,
    encoder_size: int,
    input_size: tuple[int, int],
    crop_size: tuple[int, int],
) -> bool:
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(1, low_size, low_size, generator=generator) * 8
    expected = F.interpolate(
        upscale_to_input(probe[:, None], encoder_size, input_size), crop_size, mode="bilinear"
    )[:, 0]
    resize = crop_resize(low_size, encoder_size, input_size, crop_size)
    mid = upscale_to_input(probe[:, None], encoder_size, input_size)[:, 0]
    rows, cols = len(resize.rows.pixels), len(resize.cols.pixels)
    tiles = torch.cartesian_prod(torch.tensor([0]), torch.arange(rows), torch.arange(cols))
    values = torch.empty_like(expected)
    row_pixels = resize.rows.pixels[tiles[:, 1], :, None]
    col_pixels = resize.cols.pixels[tiles[:, 2], None, :]
    values[tiles[:, 0, None, None], row_pixels, col_pixels] = resize.tile_values(mid, tiles)
    return torch.equal(values, expected)
