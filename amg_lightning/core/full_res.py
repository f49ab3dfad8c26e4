"""Full-resolution masks from low-resolution logits, resized only where a cutoff is crossed.

SAM's postprocessing resizes each low-resolution logit map bilinearly twice: to the unpadded
encoder input, then to the crop. The crop-sized logits are read at three cutoffs: the mask
threshold (the binary mask, its box and RLE) and the threshold plus and minus the stability
offset (the stability score). Every crop pixel is a convex combination of four input-sized
logits, so in a tile of crop pixels whose sources all lie above a cutoff (or all below it),
every pixel does too. Only the tiles where a cutoff lies between their sources' least and
greatest value are resized; the others are counted, and drawn for the RLE, whole.

Neither resize is made for the whole map. A resized tile's block of low-res sources is resized
to the input-sized logits the tile reads, then to the tile, each as F.interpolate's CPU kernel
does it: each axis's source indices and weights are computed as the kernel computes them, and
each blend is rounded as the kernel rounds it (one fused multiply-add). `CropResize.exact`
checks this once per geometry and device on a random probe against F.interpolate; where it
differs (another device or build), `CropResize.masks` resizes every pixel with F.interpolate.
The tiles work on the logits' device, with one read back per call (which tiles to resize).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from functools import cache

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from amg_lightning.core import rle
from amg_lightning.core.boxes import mask_boxes
from amg_lightning.core.decoder import upscale_to_crop
from amg_lightning.core.memory import full_res_bytes

# Crop pixels per tile side: smaller tiles follow mask edges more closely, larger ones cost
# less bookkeeping.
_TILE = 32  # `_count_tiles` needs TILE * TILE to be a multiple of 8 below 2048
# Tiles resized at once on the CPU. A step's temporaries (8 float tensors of TILE^2 per tile,
# 16 MiB) stay under glibc's trim threshold, so each step reuses the memory of the one before;
# at 2048 tiles they did not, and dog.jpg's full-resolution stage faulted 0.7 million fresh
# pages in (and took a third longer) under the default allocator. CUDA's allocator reuses any
# size, and small steps there would only add kernel launches.
_CPU_TILES_PER_STEP = 512
_DEVICE_TILES_PER_STEP = 32768
# When more than this share of the tiles needs resizing (logits near a cutoff everywhere, as
# random weights give them), whole masks are resized by F.interpolate and cut into tiles: a
# resized tile's pixel costs several gathers and blends, a dense one one kernel's arithmetic.
# The values are the same (`CropResize.exact`).
_MOST_RESIZED_TILES = 0.5
# Dense logits made at once for that, at most (within half the free memory on CUDA).
_DENSE_SLICE_BYTES = 2**30


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

    def to(self, device: torch.device) -> Axis:
        return Axis(*(getattr(self, f.name).to(device) for f in fields(self)))

    def shifted(self, start: Tensor) -> Axis:
        """Source indices counted from `start`."""
        return Axis(self.first - start, self.second - start, self.first_weight, self.second_weight)


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

    torch.addcmul's CPU kernel is that fused multiply-add (`CropResize.exact` checks it).
    """
    return torch.addcmul(b * b_weight, a, a_weight)


def _count_tiles(masks: Tensor) -> Tensor:
    """True pixels per B x TILE x TILE boolean mask, as int32.

    The bytes are summed eight at a time as int64 words: each byte lane counts at most
    TILE * TILE / 8 = 128 ones, so no lane carries into the next; the eight lanes are then
    added. An order of magnitude faster than summing the booleans one by one.
    """
    lanes = masks.contiguous().view(torch.int64).view(len(masks), -1).sum(dim=1)
    return lanes.view(torch.uint8).view(len(masks), 8).sum(dim=1, dtype=torch.int32)


def _resize_block(block: Tensor, rows: Axis, cols: Axis) -> Tensor:
    """Resizes each of B blocks (B x R x C) to B x R' x C' by per-block axes (B x R', B x C').

    Columns are blended first, as the kernel blends each source row along the width and then
    blends rows.
    """
    b, r, _ = block.shape
    shape = (b, r, cols.first.shape[1])
    across = _blend(
        block.gather(2, cols.first[:, None, :].expand(shape)),
        block.gather(2, cols.second[:, None, :].expand(shape)),
        cols.first_weight[:, None, :],
        cols.second_weight[:, None, :],
    )
    return _blend(
        _take_rows(across, rows.first),
        _take_rows(across, rows.second),
        rows.first_weight[:, :, None],
        rows.second_weight[:, :, None],
    )


def _take_rows(blocks: Tensor, index: Tensor) -> Tensor:
    """Rows `index` (B x R') of each of B blocks (B x R x C): B x R' x C.

    Copied a row at a time, in a third of the time indexing takes element by element.
    """
    b, r, c = blocks.shape
    flat = (torch.arange(b, device=index.device)[:, None] * r + index).flatten()
    return blocks.reshape(b * r, c).index_select(0, flat).view(b, -1, c)


@dataclass(frozen=True)
class Tiles:
    """One crop axis cut into tiles of `_TILE` pixels; the last tile repeats its last pixel.

    Each tile reads a span of S input-sized logits, and those a span of S' low-res ones
    (`low_reads`). Source indices are relative to the start of the span they index.
    """

    pixels: Tensor  # tiles x TILE: crop pixel index
    valid: Tensor  # tiles x TILE: False where a pixel repeats
    sources: Axis  # tiles x TILE: each pixel's sources in the input-sized span, and weights
    read_sources: Axis  # tiles x S: each read's sources in `low_reads`, and their weights
    low_reads: Tensor  # tiles x S': every low-res index the tile depends on (last one repeated)

    @classmethod
    def of(cls, first: Axis, second: Axis, size: int) -> Tiles:
        """Tiles of `size` crop pixels resized by `first` (low-res -> input), then `second`."""
        start = torch.arange(0, size, _TILE)[:, None]
        position = start + torch.arange(_TILE)
        pixels = position.clamp_max(size - 1)
        sources = second.take(pixels)
        low, high = sources.first[:, 0], sources.second[:, -1]
        reads = _every_index(low, high)
        read_sources = first.take(reads)
        low_reads = _every_index(read_sources.first[:, 0], read_sources.second[:, -1])
        return cls(
            pixels,
            position < size,
            sources.shifted(low[:, None]),
            read_sources.shifted(low_reads[:, :1]),
            low_reads,
        )

    @property
    def sizes(self) -> Tensor:
        """Pixels per tile."""
        return self.valid.sum(dim=1)

    def to(self, device: torch.device) -> Tiles:
        return Tiles(*(getattr(self, f.name).to(device) for f in fields(self)))


def _every_index(low: Tensor, high: Tensor) -> Tensor:
    """Per row, every index from `low` to `high`, padded by repeating `high`: rows x span."""
    span = int((high - low).max()) + 1
    return torch.minimum(low[:, None] + torch.arange(span), high[:, None])


class CropResize:
    """SAM's two resizes of one crop geometry: tile by tile where that is exact, else dense."""

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
        self.has_repeats = bool(crop_size[0] % _TILE or crop_size[1] % _TILE)
        self._on_device: dict[torch.device, tuple[Tiles, Tiles, Tensor]] = {}
        # The top-left rows x columns of the low-res map the crop depends on.
        self.low_res_shape = tuple(int(first.second[side - 1]) + 1 for side in input_size)

    def tiles_on(self, device: torch.device) -> tuple[Tiles, Tiles, Tensor]:
        """Row tiles, column tiles and tile areas on `device`, copied there once."""
        if device.type == "cpu":
            return self.rows, self.cols, self.tile_areas
        if device not in self._on_device:
            self._on_device[device] = (
                self.rows.to(device),
                self.cols.to(device),
                self.tile_areas.to(device),
            )
        return self._on_device[device]

    def embedding_extent(self, upscale_factor: int) -> tuple[int, int]:
        """The top-left rows x columns of the embedding grid whose logits the crop depends on,
        when each embedding pixel becomes `upscale_factor` low-res logits per side."""
        return tuple(-(-side // upscale_factor) for side in self.low_res_shape)

    def masks(self, low_res: Tensor, threshold: float, offset: float) -> TiledMasks | DenseMasks:
        """K x h x w low-res maps read at `threshold` and `threshold` -/+ `offset`."""
        if self.exact(low_res.device):
            return self.tiled_masks(low_res, threshold, offset)
        return self.dense_masks(low_res, threshold, offset)

    def dense_masks(self, low_res: Tensor, threshold: float, offset: float) -> DenseMasks:
        """The masks from every pixel of their crop-sized logits, resized by F.interpolate."""
        logits = upscale_to_crop(
            low_res[:, None], self.encoder_size, self.input_size, self.crop_size, self.low_size
        )
        return DenseMasks(logits[:, 0], threshold, offset)

    def tiled_masks(self, low_res: Tensor, threshold: float, offset: float) -> TiledMasks:
        """The masks with only the tiles that a cutoff crosses resized (the kernel's arithmetic)."""
        cutoffs = [threshold - offset, threshold, threshold + offset]
        _, _, tile_areas = self.tiles_on(low_res.device)
        above, decided = self._decide(low_res, cutoffs)
        counts = (above & decided[:, None]).mul(tile_areas).sum(dim=(2, 3), dtype=torch.int32)
        tiles = (~decided).nonzero()  # (mask, tile row, tile column) to resize
        binary = self._resize_tiles(low_res, tiles, cutoffs, counts)
        return TiledMasks(self, counts, above[:, 1] & decided, tiles, binary)

    def _decide(self, low_res: Tensor, cutoffs: list[float]) -> tuple[Tensor, Tensor]:
        """Which tiles lie wholly above each cutoff (K x 3 x tile rows x tile columns), and
        which lie wholly above or below every cutoff (K x tile rows x tile columns)."""
        lowest, highest = self._tile_bounds(low_res)
        # A resized pixel can pass its sources' extremes by a few float32 roundings of the
        # map's largest magnitude: a tile is decided only with this margin to spare.
        margin = 1e-5 * low_res.abs().amax(dim=(1, 2)).clamp_min(1.0)[:, None, None]
        above = torch.stack([lowest > cutoff + margin for cutoff in cutoffs], dim=1)
        below = torch.stack([highest < cutoff - margin for cutoff in cutoffs], dim=1)
        return above, (above | below).all(dim=1)

    def _resize_tiles(
        self, low_res: Tensor, tiles: Tensor, cutoffs: list[float], counts: Tensor
    ) -> Tensor:
        """Resizes the undecided tiles, adds their pixels above each cutoff to `counts`, and
        returns their masks at the threshold (the middle cutoff): B x TILE x TILE."""
        device = low_res.device
        binary = torch.empty(len(tiles), _TILE, _TILE, dtype=torch.bool, device=device)
        for part, values in self._tile_value_parts(low_res, tiles):
            self._drop_repeats(values, tiles[part])
            for c, cutoff in enumerate(cutoffs):
                # The threshold's masks are kept: written straight into `binary`.
                out = binary[part] if c == 1 else None
                above_cutoff = torch.gt(values, cutoff, out=out)
                counts[:, c].index_add_(0, tiles[part, 0], _count_tiles(above_cutoff))
        return binary

    def _tile_value_parts(self, low_res: Tensor, tiles: Tensor) -> Iterator[tuple[slice, Tensor]]:
        """The crop-sized logits of `tiles` (sorted by mask), a slice of them at a time: tile
        by tile, or, when most tiles need resizing, cut from masks resized whole."""
        count, tile_rows, tile_cols = len(low_res), len(self.rows.pixels), len(self.cols.pixels)
        if len(tiles) <= _MOST_RESIZED_TILES * count * tile_rows * tile_cols:
            step = _CPU_TILES_PER_STEP if low_res.device.type == "cpu" else _DEVICE_TILES_PER_STEP
            for start in range(0, len(tiles), step):
                part = slice(start, start + step)
                yield part, self.tile_values(low_res, tiles[part])
            return
        per_slice = (
            full_res_bytes(low_res.device, _DENSE_SLICE_BYTES) // self.dense_bytes_per_mask()
        )
        per_slice = max(1, per_slice)
        firsts = list(range(0, count, per_slice))
        # Where each slice's masks' tiles start (made on the device): one read back.
        starts = torch.arange(0, count + per_slice, per_slice, device=tiles.device)
        bounds = torch.searchsorted(tiles[:, 0], starts.clamp_max(count)).tolist()
        height, width = self.crop_size
        for k, first in enumerate(firsts):
            part = slice(bounds[k], bounds[k + 1])
            if part.start == part.stop:
                continue
            logits = self.dense_masks(low_res[first : first + per_slice], 0.0, 0.0).logits
            padded = F.pad(logits, (0, tile_cols * _TILE - width, 0, tile_rows * _TILE - height))
            grid = padded.view(len(logits), tile_rows, _TILE, tile_cols, _TILE)
            mask, i, j = tiles[part].T
            yield part, grid[mask - first, i, :, j]

    def _drop_repeats(self, values: Tensor, tiles: Tensor) -> None:
        """Sets the pixels that repeat the crop's last row or column to -inf, so that they
        count at no cutoff. Every tile is masked: finding the few in the last tile row or
        column first would be a read back (a synchronisation on CUDA)."""
        if not self.has_repeats:
            return
        rows, cols, _ = self.tiles_on(values.device)
        i, j = tiles[:, 1], tiles[:, 2]
        values.masked_fill_(~(rows.valid[i, :, None] & cols.valid[j, None, :]), -torch.inf)

    def _tile_bounds(self, low_res: Tensor) -> tuple[Tensor, Tensor]:
        """Least and greatest low-res logit each tile depends on: K x tile rows x tile columns.

        Input-sized logits are convex combinations of low-res ones, so these bound the tile.
        """
        rows, cols, _ = self.tiles_on(low_res.device)
        row_low, row_high = low_res[:, rows.low_reads].aminmax(dim=2)  # K x tile rows x w
        low = row_low[:, :, cols.low_reads].amin(dim=3)
        high = row_high[:, :, cols.low_reads].amax(dim=3)
        return low, high

    def tile_values(self, low_res: Tensor, tiles: Tensor) -> Tensor:
        """Crop-sized logits of the given (mask, tile row, tile column) tiles: B x TILE x TILE.

        Each tile's block of low-res sources is cut out, resized to the input-sized logits the
        tile reads, then to the tile.
        """
        rows, cols, _ = self.tiles_on(low_res.device)
        i, j = tiles[:, 1], tiles[:, 2]
        row_reads, col_reads = rows.low_reads[i], cols.low_reads[j]
        height, width = low_res.shape[1:]
        # Flat indices in take's order (the logical one, whatever the layout).
        flat = (tiles[:, 0, None] * height + row_reads) * width
        block = low_res.take(flat[:, :, None] + col_reads[:, None, :])  # B x row x column span
        mid = _resize_block(block, rows.read_sources.take(i), cols.read_sources.take(j))
        return _resize_block(mid, rows.sources.take(i), cols.sources.take(j))

    def binary_masks(self, low_res: Tensor, threshold: float) -> Tensor:
        """K x h x w low-res maps as crop-sized binary masks at `threshold`."""
        return self.masks(low_res, threshold, 0.0).binary()

    def bytes_per_mask(self, device: torch.device) -> int:
        """Memory one mask takes in `masks`: tiled, its low-res logits and their bounds;
        dense, its logits at the encoder's and the crop's size."""
        if self.exact(device):
            rows, cols = self.low_res_shape
            tile_rows, row_span = self.rows.low_reads.shape
            tile_cols, col_span = self.cols.low_reads.shape
            bounds = tile_rows * (row_span + 2) * cols + 2 * tile_rows * tile_cols * col_span
            return 4 * (rows * cols + bounds)
        return self.dense_bytes_per_mask()

    def dense_bytes_per_mask(self) -> int:
        """Memory one mask takes in `dense_masks`: its logits at the encoder's and crop's size."""
        return 4 * (self.crop_size[0] * self.crop_size[1] * 3 + self.encoder_size**2)

    @torch.no_grad()
    def exact(self, device: torch.device) -> bool:
        """Whether the tiled resize equals F.interpolate's on `device` (checked once per
        geometry and device); where it does not, masks are resized densely."""
        return _probe_matches(
            self.low_size, self.encoder_size, self.input_size, self.crop_size, str(device)
        )


class TiledMasks:
    """K masks read at three cutoffs, with only the undecided tiles resized."""

    def __init__(
        self,
        resize: CropResize,
        counts: Tensor,
        inside: Tensor,
        tiles: Tensor,
        binary: Tensor,
    ) -> None:
        self.resize = resize
        self.counts = counts  # K x 3: pixels above threshold - offset, threshold, + offset
        self.inside = inside  # K x tile rows x tile columns: decided tiles inside the mask
        self.tiles, self.binary_tiles = tiles, binary  # the resized tiles and their masks

    def stability(self) -> Tensor:
        """As `stability_score` of the full logits."""
        return self.counts[:, 2] / self.counts[:, 0]

    def binary(self) -> Tensor:
        """The K x h x w masks at the threshold: decided tiles whole, resized ones drawn in."""
        height, width = self.resize.crop_size
        count, tile_rows, tile_cols = self.inside.shape
        shape = (count, tile_rows, _TILE, tile_cols, _TILE)
        full = self.inside[:, :, None, :, None].expand(shape).clone()
        mask, i, j = self.tiles.T
        full[mask, i, :, j] = self.binary_tiles
        return full.view(count, tile_rows * _TILE, tile_cols * _TILE)[:, :height, :width]

    def boxes(self) -> Tensor:
        """Inclusive XYXY boxes (int64, crop frame) of the masks at the threshold, as the
        reference's batched_mask_to_box: from the decided tiles inside each mask, widened by
        the pixels of its resized tiles; [0, 0, 0, 0] for an empty mask."""
        height, width = self.resize.crop_size
        device = self.inside.device
        far = height + width  # beyond any pixel: no least row or column yet
        first_row = torch.arange(self.inside.shape[1], device=device) * _TILE
        first_col = torch.arange(self.inside.shape[2], device=device) * _TILE
        last_row = (first_row + _TILE - 1).clamp_max(height - 1)
        last_col = (first_col + _TILE - 1).clamp_max(width - 1)
        rows, cols = self.inside.any(dim=2), self.inside.any(dim=1)
        top = torch.where(rows, first_row, far).amin(dim=1)
        bottom = torch.where(rows, last_row, -1).amax(dim=1)
        left = torch.where(cols, first_col, far).amin(dim=1)
        right = torch.where(cols, last_col, -1).amax(dim=1)
        mask, i, j = self.tiles.T
        offsets = torch.arange(_TILE, device=device)
        tile_rows = i[:, None] * _TILE + offsets  # crop row of each tile row: T x TILE
        tile_cols = j[:, None] * _TILE + offsets
        in_row, in_col = self.binary_tiles.any(dim=2), self.binary_tiles.any(dim=1)
        top = top.scatter_reduce(0, mask, torch.where(in_row, tile_rows, far).amin(1), "amin")
        bottom = bottom.scatter_reduce(0, mask, torch.where(in_row, tile_rows, -1).amax(1), "amax")
        left = left.scatter_reduce(0, mask, torch.where(in_col, tile_cols, far).amin(1), "amin")
        right = right.scatter_reduce(0, mask, torch.where(in_col, tile_cols, -1).amax(1), "amax")
        boxes = torch.stack([left, top, right, bottom], dim=1)
        return boxes.masked_fill((bottom < 0)[:, None], 0)

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
        binary, (mask, i, j) = self.binary_tiles[kept], self.tiles[kept].T
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
        # Edge e is crop row min(e * TILE, h).
        edge_mask, edge, edge_column = rle.true_indices(first ^ last)
        # Inside resized tiles, below their first row. Pixels past the crop are background: a
        # column of them never changes, and a change into a row of them is dropped.
        tile, below_first, tile_column = rle.true_indices(rle.row_changes(binary))
        tile_row = i.numpy()[tile]
        in_crop = self.resize.rows.valid.numpy()[tile_row, below_first + 1]
        tile, tile_row = tile[in_crop], tile_row[in_crop]
        below_first, tile_column = below_first[in_crop], tile_column[in_crop]
        return (
            np.concatenate([edge_mask, mask.numpy()[tile]]),
            np.concatenate([np.minimum(edge * _TILE, height), tile_row * _TILE + 1 + below_first]),
            np.concatenate([edge_column, j.numpy()[tile] * _TILE + tile_column]),
        )


class DenseMasks:
    """K masks read at three cutoffs from every pixel of their crop-sized logits."""

    def __init__(self, logits: Tensor, threshold: float, offset: float) -> None:
        self.logits, self.threshold, self.offset = logits, threshold, offset

    def stability(self) -> Tensor:
        return stability_score(self.logits, self.threshold, self.offset)

    def binary(self) -> Tensor:
        return self.logits > self.threshold

    def boxes(self) -> Tensor:
        return mask_boxes(self.binary())

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
) -> CropResize:
    """The (cached) resize of one crop geometry."""
    return CropResize(low_size, encoder_size, input_size, crop_size)


@cache
def _probe_matches(
    low_size: int,
    encoder_size: int,
    input_size: tuple[int, int],
    crop_size: tuple[int, int],
    device: str,
) -> bool:
    generator = torch.Generator().manual_seed(0)
    probe = (torch.randn(1, low_size, low_size, generator=generator) * 8).to(device)
    expected = upscale_to_crop(probe[:, None], encoder_size, input_size, crop_size)[0, 0].cpu()
    resize = crop_resize(low_size, encoder_size, input_size, crop_size)
    rows, cols = len(resize.rows.pixels), len(resize.cols.pixels)
    tiles = torch.cartesian_prod(torch.tensor([0]), torch.arange(rows), torch.arange(cols))
    values = torch.empty_like(expected)
    row_pixels = resize.rows.pixels[tiles[:, 1], :, None]
    col_pixels = resize.cols.pixels[tiles[:, 2], None, :]
    values[row_pixels, col_pixels] = resize.tile_values(probe, tiles.to(device)).cpu()
    return torch.equal(values, expected)
