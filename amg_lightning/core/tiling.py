"""Mask generation on huge images in overlapping tiles, one mask per object in image coordinates.

An image larger than `tile_size` in either side is cut into tiles of `tile_size` (or the
image's side, if smaller) spaced evenly so that neighbours overlap by at least `tile_overlap`
pixels. Each tile runs the usual generation, crop layers included. Its masks are kept as
run-length encodings inside the tile and worked on as column runs in image coordinates,
never as dense image-sized arrays, and merged:

- A mask is *cut* when its box comes within `EDGE_MARGIN` pixels of an inner edge of its
  tile (an edge that is not the image's), else *whole*.
- Two masks of neighbouring tiles *agree* when their IoU inside the tiles' overlap is at
  least `AGREEMENT_IOU` (tiles that only touch compare the pixel lines on either side).
- A cut mask that agrees with a whole mask lying in a tile that contains the cut mask's box
  is dropped: that tile holds the object whole.
- Whole masks that agree are one object seen twice: the one farthest from its tile's inner
  edges is kept.
- The *overview* pass generates the whole image once, shrunk to a long side of `tile_size`
  (or the encoder's input size, if larger), and scales its masks back up by nearest
  neighbour. An overview mask is kept when no tile holds its box whole (20 pixels from every
  inner edge), else dropped: that tile sees the object at full resolution.
- A cut mask that agrees with a kept overview mask inside its own tile (IoU of the cut mask
  and the overview mask's part in the tile at least `AGREEMENT_IOU`) is dropped: the
  overview mask holds the object whole, as a crop pyramid's larger crop does.
- The remaining cut masks that agree are pieces of one object, merged transitively (so an
  object larger than a tile becomes one mask). Each pixel of the merged mask comes from the
  piece of the tile whose *core* holds it; the cores split every overlap at its middle, so
  they partition the image. Where a tile found no piece, the pixels of the other pieces are
  kept.

An image that fits in one tile gets exactly the untiled result.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from amg_lightning.core import rle
from amg_lightning.core.image import PreparedCrops, resized_shape

if TYPE_CHECKING:
    from amg_lightning.core.generator import AutomaticMaskGenerator
    from amg_lightning.core.settings import AmgSettings

EDGE_MARGIN = 20  # pixels; the generator's own crop-edge filter uses the same distance
AGREEMENT_IOU = 0.5
OVERVIEW = -1  # the `tile` of the overview pass's masks

Box = tuple[int, int, int, int]  # XYXY, exclusive end

# A mask as column runs: an N x 3 int64 array of (x, y_start, y_stop), sorted by x then
# y_start, disjoint and never touching within a column. Its size follows the mask's
# columns, not the image's pixels.


def runs_from_counts(
    counts: np.ndarray, size: tuple[int, int], offset: tuple[int, int]
) -> np.ndarray:
    """Column runs, moved by `offset` (x, y), of an RLE (internal counts) of an H x W mask."""
    height = size[0]
    ends = np.cumsum(counts, dtype=np.int64)
    starts, stops = ends[0::2][: len(ends) // 2], ends[1::2]
    nonempty = stops > starts
    starts, stops = starts[nonempty], stops[nonempty]
    first, last = starts // height, (stops - 1) // height
    pieces = last - first + 1  # a run that wraps into the next column is split there
    owner = np.repeat(np.arange(len(starts)), pieces)
    column = first[owner] + np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    top = column * height
    runs = np.stack(
        [
            column + offset[0],
            np.maximum(starts[owner], top) - top + offset[1],
            np.minimum(stops[owner], top + height) - top + offset[1],
        ],
        axis=1,
    )
    return runs.astype(np.int64).reshape(-1, 3)


def runs_to_counts(runs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The RLE (internal counts, column-major) of column runs in an H x W image."""
    height, width = size
    start = runs[:, 0] * height + runs[:, 1]
    stop = runs[:, 0] * height + runs[:, 2]
    positions = np.stack([start, stop], axis=1).ravel()
    # A run ending at a column's last row and one starting at the next column's first are one.
    joined = np.flatnonzero(stop[:-1] == start[1:])
    keep = np.ones(len(positions), dtype=bool)
    keep[2 * joined + 1] = keep[2 * joined + 2] = False
    positions = positions[keep]
    total = height * width
    if len(positions) and positions[-1] == total:
        positions = positions[:-1]
    return np.diff(np.concatenate([[0], positions, [total]])).astype(np.int64)


def runs_area(runs: np.ndarray) -> int:
    return int((runs[:, 2] - runs[:, 1]).sum())


def runs_box(runs: np.ndarray) -> np.ndarray:
    """The inclusive XYXY box of non-empty runs."""
    return np.array([runs[:, 0].min(), runs[:, 1].min(), runs[:, 0].max(), runs[:, 2].max() - 1])


def union(parts: list[np.ndarray]) -> np.ndarray:
    """The runs covering every pixel of any of `parts`."""
    runs = np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.int64)
    if len(runs) == 0:
        return runs
    runs = runs[np.lexsort((runs[:, 1], runs[:, 0]))]
    # Positions on one line with a gap between columns: runs merge when they overlap or touch.
    stride = int(runs[:, 2].max()) + 1
    start = runs[:, 0] * stride + runs[:, 1]
    reach = np.maximum.accumulate(runs[:, 0] * stride + runs[:, 2])
    new = np.ones(len(runs), dtype=bool)
    new[1:] = start[1:] > reach[:-1]
    firsts = np.flatnonzero(new)
    lasts = np.append(firsts[1:] - 1, len(runs) - 1)
    column = runs[firsts, 0]
    return np.stack([column, runs[firsts, 1], reach[lasts] - column * stride], axis=1)


def clip(runs: np.ndarray, box: Box) -> np.ndarray:
    """The runs' pixels inside `box`."""
    x0, y0, x1, y1 = box
    start, stop = np.maximum(runs[:, 1], y0), np.minimum(runs[:, 2], y1)
    keep = (runs[:, 0] >= x0) & (runs[:, 0] < x1) & (stop > start)
    return np.stack([runs[keep, 0], start[keep], stop[keep]], axis=1)


def subtract(runs: np.ndarray, box: Box) -> np.ndarray:
    """The runs' pixels outside `box`."""
    x0, y0, x1, y1 = box
    inside = (runs[:, 0] >= x0) & (runs[:, 0] < x1)
    hit = runs[inside]
    above = np.stack([hit[:, 0], hit[:, 1], np.minimum(hit[:, 2], y0)], axis=1)
    below = np.stack([hit[:, 0], np.maximum(hit[:, 1], y1), hit[:, 2]], axis=1)
    pieces = np.concatenate([runs[~inside], above, below])
    pieces = pieces[pieces[:, 2] > pieces[:, 1]]
    return pieces[np.lexsort((pieces[:, 1], pieces[:, 0]))]


def upscale(runs: np.ndarray, size: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
    """Runs of an H x W mask scaled up to `image_size` by nearest neighbour: each pixel of the
    large image takes the small pixel under its centre, the inverse of a box (area) shrink."""
    columns, rows = _spans(size[1], image_size[1]), _spans(size[0], image_size[0])
    first, widths = columns[runs[:, 0]], np.diff(columns)[runs[:, 0]]
    owner = np.repeat(np.arange(len(runs)), widths)
    within = np.arange(widths.sum()) - np.repeat(np.cumsum(widths) - widths, widths)
    scaled = np.stack(
        [first[owner] + within, rows[runs[owner, 1]], rows[runs[owner, 2]]], axis=1
    ).reshape(-1, 3)
    return scaled[np.lexsort((scaled[:, 1], scaled[:, 0]))]


def _spans(small: int, large: int) -> np.ndarray:
    """Where each of `small` pixels' span starts along an axis `large` long, then `large`:
    large pixel X lies in small pixel floor((X + 0.5) * small / large)."""
    i = np.arange(small + 1, dtype=np.int64)
    return -((small - 2 * i * large) // (2 * small))  # ceil(i * large / small - 0.5)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    area_a, area_b = runs_area(a), runs_area(b)
    if area_a == 0 or area_b == 0:
        return 0.0
    joint = runs_area(union([a, b]))
    return (area_a + area_b - joint) / joint


@dataclass(frozen=True)
class TileGrid:
    """Tiles of an image: where each starts along x and y, and their size."""

    image_size: tuple[int, int]  # H, W
    x_starts: tuple[int, ...]
    y_starts: tuple[int, ...]
    tile_size: int

    @classmethod
    def for_image(cls, image_size: tuple[int, int], tile_size: int, overlap: int) -> TileGrid:
        height, width = image_size
        return cls(
            image_size,
            _starts(width, tile_size, overlap),
            _starts(height, tile_size, overlap),
            tile_size,
        )

    def __len__(self) -> int:
        return len(self.x_starts) * len(self.y_starts)

    def box(self, index: int) -> Box:
        """Tile `index` (row by row) as XYXY."""
        row, col = divmod(index, len(self.x_starts))
        height, width = self.image_size
        x0, y0 = self.x_starts[col], self.y_starts[row]
        return x0, y0, min(x0 + self.tile_size, width), min(y0 + self.tile_size, height)

    def core(self, index: int) -> Box:
        """The part of tile `index` nearer its middle than any other tile's: overlaps split
        at their middle, so the cores partition the image."""
        row, col = divmod(index, len(self.x_starts))
        height, width = self.image_size
        x0, x1 = _core_span(self.x_starts, col, min(self.tile_size, width), width)
        y0, y1 = _core_span(self.y_starts, row, min(self.tile_size, height), height)
        return x0, y0, x1, y1

    def inner_edge_gap(self, index: int, box: np.ndarray) -> int:
        """Pixels between an inclusive XYXY box and the nearest inner edge of tile `index`."""
        x0, y0, x1, y1 = self.box(index)
        height, width = self.image_size
        gaps = [
            box[0] - x0 if x0 > 0 else None,
            box[1] - y0 if y0 > 0 else None,
            x1 - 1 - box[2] if x1 < width else None,
            y1 - 1 - box[3] if y1 < height else None,
        ]
        return min((g for g in gaps if g is not None), default=max(height, width))

    def neighbours(self) -> list[tuple[int, int]]:
        """Pairs of tiles that overlap, or touch along a side."""
        height, width = self.image_size
        rows = _meeting(self.y_starts, min(self.tile_size, height))
        columns = _meeting(self.x_starts, min(self.tile_size, width))
        pairs = []
        for here in range(len(self)):
            row, col = divmod(here, len(self.x_starts))
            for other_row in (row, *rows[row]):
                for other_col in (col, *columns[col]):
                    there = other_row * len(self.x_starts) + other_col
                    if there > here and _comparison_windows(self.box(here), self.box(there)):
                        pairs.append((here, there))
        return pairs


def _meeting(starts: tuple[int, ...], span: int) -> list[list[int]]:
    """For each tile along one axis, the others whose span overlaps or touches its own."""
    return [
        [j for j, other in enumerate(starts) if j != i and abs(other - start) <= span]
        for i, start in enumerate(starts)
    ]


def _starts(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Evenly spaced tile starts; consecutive tiles overlap by at least `overlap`."""
    if length <= tile:
        return (0,)
    count = -(-(length - overlap) // (tile - overlap))
    return tuple(i * (length - tile) // (count - 1) for i in range(count))


def _core_span(starts: tuple[int, ...], i: int, tile: int, length: int) -> tuple[int, int]:
    low = 0 if i == 0 else (starts[i] + starts[i - 1] + tile) // 2
    high = length if i == len(starts) - 1 else (starts[i + 1] + starts[i] + tile) // 2
    return low, high


def _comparison_windows(a: Box, b: Box) -> tuple[Box, tuple[int, int]] | None:
    """Where masks of tiles `a` and `b` are compared: a window of `a` and the shift (dx, dy)
    that maps it onto `b`'s. Their overlap, unshifted; for tiles that only touch along a
    side, `a`'s last pixel line and `b`'s first. None for tiles that share no side or area."""
    window, shift = [], []
    for low_a, high_a, low_b, high_b in ((a[0], a[2], b[0], b[2]), (a[1], a[3], b[1], b[3])):
        low, high = max(low_a, low_b), min(high_a, high_b)
        if high > low:
            window.append((low, high))
            shift.append(0)
        elif high == low and high_a == low_b:
            window.append((high_a - 1, high_a))
            shift.append(1)
        elif high == low and high_b == low_a:
            window.append((low_a, low_a + 1))
            shift.append(-1)
        else:
            return None
    if shift[0] != 0 and shift[1] != 0:
        return None  # only a corner touches
    (x0, x1), (y0, y1) = window
    return (x0, y0, x1, y1), (shift[0], shift[1])


@dataclass
class TileMask:
    """One tile's mask (or a merged one) with its record's scores, kept compact between the
    tiles' generation and the merge: an RLE inside `frame` (its tile, or its own box)."""

    counts: np.ndarray  # int32 run lengths, column-major within `frame`
    frame: Box  # XYXY, image frame
    box: np.ndarray  # inclusive XYXY, image frame
    tile: int
    predicted_iou: float
    stability_score: float
    point: list[float]  # XY
    crop_box: list[int]  # XYXY

    @property
    def runs(self) -> np.ndarray:
        x0, y0, x1, y1 = self.frame
        return runs_from_counts(self.counts, (y1 - y0, x1 - x0), (x0, y0))

    @classmethod
    def from_runs(cls, runs: np.ndarray, **fields: Any) -> TileMask:
        x0, y0, x1, y1 = runs_box(runs).tolist()
        local = runs - np.array([x0, y0, y0])
        counts = runs_to_counts(local, (y1 + 1 - y0, x1 + 1 - x0)).astype(np.int32)
        return cls(counts, (x0, y0, x1 + 1, y1 + 1), runs_box(runs), **fields)


def tile_masks(records: list[dict[str, Any]], grid: TileGrid, tile: int) -> list[TileMask]:
    """Masks of one tile's records (uncompressed RLE in the tile), moved to the image."""
    frame = grid.box(tile)
    x0, y0 = frame[:2]
    out = []
    for record in records:
        if record["area"] == 0:
            continue
        bx, by, bw, bh = record["bbox"]
        cx, cy, cw, ch = record["crop_box"]
        px, py = record["point_coords"][0]
        out.append(
            TileMask(
                counts=np.asarray(record["segmentation"]["counts"], dtype=np.int32),
                frame=frame,
                box=np.array([bx + x0, by + y0, bx + bw + x0, by + bh + y0]),
                tile=tile,
                predicted_iou=record["predicted_iou"],
                stability_score=record["stability_score"],
                point=[px + x0, py + y0],
                crop_box=[cx + x0, cy + y0, cx + cw + x0, cy + ch + y0],
            )
        )
    return out


def merge_tile_masks(
    masks: list[TileMask], grid: TileGrid, overview: list[TileMask] | None = None
) -> list[TileMask]:
    """One mask per object from the masks of all tiles and of the overview pass, by the rule
    in the module docstring."""
    boxes = [m.box for m in masks]
    cut = [
        grid.inner_edge_gap(m.tile, box) < EDGE_MARGIN for m, box in zip(masks, boxes, strict=True)
    ]
    dropped: set[int] = set()
    cut_links = []
    for i, j in _agreeing_pairs(masks, boxes, grid):
        if cut[i] and cut[j]:
            cut_links.append((i, j))
        elif cut[i] != cut[j]:
            whole, piece = (j, i) if cut[i] else (i, j)
            if _contains(grid.box(masks[whole].tile), boxes[piece]):
                dropped.add(piece)
        else:
            gaps = [grid.inner_edge_gap(masks[k].tile, boxes[k]) for k in (i, j)]
            dropped.add(j if gaps[0] >= gaps[1] else i)
    spanning = [g for g in overview or [] if not _whole_in_a_tile(g.box, grid)]
    dropped |= {
        k
        for k in range(len(masks))
        if cut[k] and k not in dropped and _yields(masks[k], spanning, grid)
    }
    groups = _groups(len(masks), [(i, j) for i, j in cut_links if not {i, j} & dropped])
    merged = []
    for group in groups:
        if group[0] in dropped:
            continue
        merged.append(
            masks[group[0]] if len(group) == 1 else _stitch([masks[k] for k in group], grid)
        )
    return merged + spanning


def _whole_in_a_tile(box: np.ndarray, grid: TileGrid) -> bool:
    return any(grid.inner_edge_gap(t, box) >= EDGE_MARGIN for t in range(len(grid)))


def _yields(piece: TileMask, spanning: list[TileMask], grid: TileGrid) -> bool:
    """Whether a cut piece agrees with one of the `spanning` overview masks inside its tile."""
    tile = grid.box(piece.tile)
    runs = None
    for whole in spanning:
        if not _boxes_meet(piece.box, whole.box):
            continue
        runs = piece.runs if runs is None else runs
        if iou(runs, clip(whole.runs, tile)) >= AGREEMENT_IOU:
            return True
    return False


def _agreeing_pairs(
    masks: list[TileMask], boxes: list[np.ndarray], grid: TileGrid
) -> list[tuple[int, int]]:
    """Index pairs of masks of neighbouring tiles that agree inside the tiles' overlap."""
    by_tile: dict[int, list[int]] = {}
    for k, m in enumerate(masks):
        by_tile.setdefault(m.tile, []).append(k)
    pairs = []
    for a, b in grid.neighbours():
        window, (dx, dy) = _comparison_windows(grid.box(a), grid.box(b))
        shifted = (window[0] + dx, window[1] + dy, window[2] + dx, window[3] + dy)
        seen_a = _seen_in(masks, boxes, by_tile.get(a, []), window, (dx, dy))
        seen_b = _seen_in(masks, boxes, by_tile.get(b, []), shifted, (0, 0))
        for i, runs_i in seen_a.items():
            box_i = runs_box(runs_i)
            for j, runs_j in seen_b.items():
                box_j = runs_box(runs_j)
                if not _boxes_meet(box_i, box_j):
                    continue
                if iou(runs_i, runs_j) >= AGREEMENT_IOU:
                    pairs.append((i, j))
    return pairs


def _seen_in(
    masks: list[TileMask],
    boxes: list[np.ndarray],
    indices: list[int],
    window: Box,
    shift: tuple[int, int],
) -> dict[int, np.ndarray]:
    """The parts inside `window` of the masks at `indices`, moved by `shift`, if not empty."""
    out = {}
    for k in indices:
        box = boxes[k]
        if box[0] >= window[2] or box[2] < window[0] or box[1] >= window[3] or box[3] < window[1]:
            continue
        part = clip(masks[k].runs, window)
        if len(part):
            out[k] = part + np.array([shift[0], shift[1], shift[1]])
    return out


def _boxes_meet(a: np.ndarray, b: np.ndarray) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _contains(tile: Box, box: np.ndarray) -> bool:
    return tile[0] <= box[0] and tile[1] <= box[1] and box[2] < tile[2] and box[3] < tile[3]


def _groups(count: int, links: list[tuple[int, int]]) -> list[list[int]]:
    """Connected components of `links` over `count` items, each sorted, in order of first item."""
    parent = list(range(count))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for i, j in links:
        parent[root(i)] = root(j)
    members: dict[int, list[int]] = {}
    for k in range(count):
        members.setdefault(root(k), []).append(k)
    return sorted(members.values())


def _stitch(pieces: list[TileMask], grid: TileGrid) -> TileMask:
    """One mask from pieces of one object: each pixel from the piece whose tile's core holds
    it, or from every piece where no piece's tile's core does. Scores are area-weighted."""
    tiles = {p.tile for p in pieces}
    kept = []
    for piece in pieces:
        runs = piece.runs
        for other in tiles - {piece.tile}:
            runs = subtract(runs, grid.core(other))
        kept.append(runs)
    weights = np.array([max(runs_area(runs), 1) for runs in kept], dtype=float)
    largest = pieces[int(np.argmax(weights))]
    crop_boxes = np.array([p.crop_box for p in pieces])
    return TileMask.from_runs(
        union(kept),
        tile=largest.tile,
        predicted_iou=float(np.average([p.predicted_iou for p in pieces], weights=weights)),
        stability_score=float(np.average([p.stability_score for p in pieces], weights=weights)),
        point=largest.point,
        crop_box=[*crop_boxes[:, :2].min(0).tolist(), *crop_boxes[:, 2:].max(0).tolist()],
    )


def needs_tiling(images: list[np.ndarray], settings: AmgSettings) -> bool:
    """Whether any image is larger than `tile_size` in either side."""
    size = settings.tile_size
    return size is not None and any(max(image.shape[:2]) > size for image in images)


def generate_tiled(
    generator: AutomaticMaskGenerator,
    images: list[np.ndarray],
    prepared: list[PreparedCrops | None],
) -> list[list[dict[str, Any]]]:
    """Records for each image: tiled for images larger than a tile, else exactly untiled
    (from its `prepared` encoder inputs, if any; tiles make their own)."""
    settings = generator.settings
    untiled = _with_settings(generator, tile_size=None)
    small = [i for i, image in enumerate(images) if max(image.shape[:2]) <= settings.tile_size]
    records = untiled.generate_batch([images[i] for i in small], [prepared[i] for i in small])
    results = dict(zip(small, records, strict=True))
    per_tile = _with_settings(generator, tile_size=None, output_mode="uncompressed_rle")
    for i, image in enumerate(images):
        if i not in results:
            results[i] = _generate_one(per_tile, image, settings)
    return [results[i] for i in range(len(images))]


def _with_settings(generator: AutomaticMaskGenerator, **changes: Any) -> AutomaticMaskGenerator:
    """The same generator (model, decoder, cache shared) with some settings changed."""
    twin = copy.copy(generator)
    twin.settings = dataclasses.replace(generator.settings, **changes)
    return twin


def _generate_one(
    per_tile: AutomaticMaskGenerator, image: np.ndarray, settings: AmgSettings
) -> list[dict[str, Any]]:
    grid = TileGrid.for_image(image.shape[:2], settings.tile_size, settings.tile_overlap)
    overview = _overview(per_tile, image, settings)
    tiles = _tile_records(per_tile, image, grid, settings)
    return merge_tiles(grid, tiles, settings.output_mode, overview)


def _overview(
    per_tile: AutomaticMaskGenerator, image: np.ndarray, settings: AmgSettings
) -> list[TileMask]:
    """The overview pass: the whole image shrunk to a long side of `tile_size` (or the
    encoder's input size, if larger), generated as one image, its masks scaled back up."""
    side = max(settings.tile_size, per_tile.family.encoder_size)
    size = image.shape[:2]
    small = resized_shape(*size, side) if max(size) > side else size
    if small != size:  # a box filter: each small pixel the mean of the pixels it covers
        image = np.array(Image.fromarray(image).resize(small[::-1], Image.BOX))
    records = per_tile.generate(image)
    return [overview_mask(record, small, size) for record in records if record["area"]]


def overview_mask(
    record: dict[str, Any], size: tuple[int, int], image_size: tuple[int, int]
) -> TileMask:
    """A record of the image shrunk to `size` (uncompressed RLE) as a mask of the image."""
    counts = np.asarray(record["segmentation"]["counts"], dtype=np.int64)
    runs = upscale(runs_from_counts(counts, size, (0, 0)), size, image_size)
    columns, rows = _spans(size[1], image_size[1]), _spans(size[0], image_size[0])
    x, y, w, h = record["crop_box"]
    (px, py), scale = record["point_coords"][0], np.divide(image_size, size)
    return TileMask.from_runs(
        runs,
        tile=OVERVIEW,
        predicted_iou=record["predicted_iou"],
        stability_score=record["stability_score"],
        point=[float(px * scale[1]), float(py * scale[0])],
        crop_box=[int(columns[x]), int(rows[y]), int(columns[x + w]), int(rows[y + h])],
    )


def _tile_records(
    per_tile: AutomaticMaskGenerator, image: np.ndarray, grid: TileGrid, settings: AmgSettings
) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """(tile index, its records) for every tile; tiles share image-encoder batches as crops do."""
    step = settings.crops_per_batch
    for first in range(0, len(grid), step):
        indices = range(first, min(first + step, len(grid)))
        tiles = [_cut(image, grid.box(t)) for t in indices]
        yield from zip(indices, per_tile.generate_batch(tiles), strict=True)


def merge_tiles(
    grid: TileGrid,
    tile_records: Iterable[tuple[int, list[dict[str, Any]]]],
    output_mode: str,
    overview: list[TileMask] | None = None,
) -> list[dict[str, Any]]:
    """Image records from each tile's records (uncompressed RLE in the tile) and the overview
    pass's masks, one per object."""
    masks = [m for tile, records in tile_records for m in tile_masks(records, grid, tile)]
    merged = merge_tile_masks(masks, grid, overview)
    merged.sort(key=lambda m: -m.predicted_iou)
    return [_record(m, grid.image_size, output_mode) for m in merged]


def _cut(image: np.ndarray, box: Box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.ascontiguousarray(image[y0:y1, x0:x1])


def _record(mask: TileMask, image_size: tuple[int, int], output_mode: str) -> dict[str, Any]:
    runs = mask.runs
    counts = runs_to_counts(runs, image_size)
    x0, y0, x1, y1 = runs_box(runs).tolist()
    cx0, cy0, cx1, cy1 = mask.crop_box
    return {
        "segmentation": rle.to_output(counts, image_size, output_mode),
        "area": runs_area(runs),
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "predicted_iou": mask.predicted_iou,
        "point_coords": [mask.point],
        "stability_score": mask.stability_score,
        "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
    }
