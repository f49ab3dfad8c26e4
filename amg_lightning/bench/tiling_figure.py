"""Draws docs/images/tiling.png: tiles, their overlaps and cores, and objects merged across them.

    amg-bench tiling-figure docs/images/tiling.png

Each tile "sees" the part of every object inside it, grown or shrunk by a few pixels as a
real model's masks differ from tile to tile; `merge_tiles` (the generator's own merge) then
makes one mask per object. Left: the pieces, in their tile's colour; right: the merged masks.
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from amg_lightning.core import rle
from amg_lightning.core.tiling import TileGrid, merge_tiles

SIZE = (640, 960)  # H, W
TILE, OVERLAP = 384, 96
COLOURS = [
    (230, 80, 60),
    (60, 140, 230),
    (40, 170, 90),
    (220, 160, 30),
    (150, 80, 200),
    (0, 170, 170),
]
MERGED = [(120, 120, 120), (200, 120, 40), (40, 120, 200)]


def _objects() -> list[np.ndarray]:
    shapes = []
    for centre, axes, angle in (
        ((470, 320), (230, 150), 20),  # across the corner of four tiles, larger than a tile
        ((624, 120), (90, 55), 0),  # across a vertical seam
        ((336, 80), (24, 18), 0),  # inside an overlap: whole in two tiles
    ):
        canvas = np.zeros(SIZE, dtype=np.uint8)
        cv2.ellipse(canvas, centre, axes, angle, 0, 360, 1, -1)
        shapes.append(canvas.astype(bool))
    return shapes


def _pieces(objects: list[np.ndarray], grid: TileGrid) -> list[tuple[int, list[dict]]]:
    """Every tile's view of every object, off by up to 3 pixels, as tile records."""
    rng = np.random.default_rng(0)
    out = []
    for t in range(len(grid)):
        x0, y0, x1, y1 = grid.box(t)
        records = []
        for obj in objects:
            part = obj[y0:y1, x0:x1].astype(np.uint8)
            grow = int(rng.integers(-3, 4))
            kernel = np.ones((2 * abs(grow) + 1,) * 2, np.uint8)
            part = (cv2.dilate(part, kernel) if grow > 0 else cv2.erode(part, kernel)) > 0
            if part.sum() < 50:
                continue
            records.append(tile_record(part, [0.0, 0.0]))
        out.append((t, records))
    return out


def tile_record(part: np.ndarray, point: list[float]) -> dict:
    """A generator record (uncompressed RLE) for the crafted mask `part` of one tile."""
    ys, xs = np.nonzero(part)
    return {
        "segmentation": rle.to_uncompressed(rle.encode_mask(part).counts[0], part.shape),
        "area": int(part.sum()),
        # XYWH as the generator's records give it (width and height one short).
        "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())],
        "predicted_iou": 0.9,
        "stability_score": 0.95,
        "point_coords": [point],
        "crop_box": [0, 0, part.shape[1], part.shape[0]],
    }


def _frames(canvas: np.ndarray, grid: TileGrid) -> None:
    for t in range(len(grid)):
        x0, y0, x1, y1 = grid.box(t)
        cv2.rectangle(canvas, (x0 + 1, y0 + 1), (x1 - 2, y1 - 2), COLOURS[t], 2)


def _cores(canvas: np.ndarray, grid: TileGrid) -> None:
    """Core borders, dashed."""
    for t in range(len(grid)):
        cx0, cy0, cx1, cy1 = grid.core(t)
        for x in range(cx0, cx1, 12):
            for y in (cy0, cy1 - 1):
                cv2.line(canvas, (x, y), (min(x + 6, cx1 - 1), y), (60, 60, 60), 1)
        for y in range(cy0, cy1, 12):
            for x in (cx0, cx1 - 1):
                cv2.line(canvas, (x, y), (x, min(y + 6, cy1 - 1)), (60, 60, 60), 1)


def _fill(canvas: np.ndarray, mask: np.ndarray, colour: tuple, outline: tuple, offset=(0, 0)):
    region = canvas[offset[1] : offset[1] + mask.shape[0], offset[0] : offset[0] + mask.shape[1]]
    region[mask] = (region[mask] * 0.5 + np.array(colour) * 0.5).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(region, contours, -1, outline, 2)


def _caption(canvas: np.ndarray, lines: list[str]) -> np.ndarray:
    band = np.full((26 * len(lines) + 10, canvas.shape[1], 3), 255, dtype=np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(
            band, line, (10, 26 * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 1, cv2.LINE_AA
        )
    return np.concatenate([canvas, band])


def draw(path: str) -> None:
    grid = TileGrid.for_image(SIZE, TILE, OVERLAP)
    pieces = _pieces(_objects(), grid)
    merged = merge_tiles(grid, pieces, "coco_rle")
    cover = np.zeros(SIZE, dtype=int)
    for t in range(len(grid)):
        x0, y0, x1, y1 = grid.box(t)
        cover[y0:y1, x0:x1] += 1
    empty = np.full((*SIZE, 3), 250, dtype=np.uint8)
    empty[cover >= 2] = (222, 222, 222)  # overlaps
    before, after = empty.copy(), empty.copy()
    for t, records in pieces:
        x0, y0, x1, y1 = grid.box(t)
        for record in records:
            local = coco_mask.frPyObjects(record["segmentation"], y1 - y0, x1 - x0)
            _fill(before, coco_mask.decode(local).astype(bool), COLOURS[t], COLOURS[t], (x0, y0))
    _frames(before, grid)
    for i, record in enumerate(merged):
        mask = coco_mask.decode(record["segmentation"]).astype(bool)
        _fill(after, mask, MERGED[i % len(MERGED)], (0, 0, 0))
    _cores(after, grid)
    left = _caption(
        before,
        [
            f"{len(grid)} tiles of {TILE} px (frames), overlaps of >= {OVERLAP} px (grey):",
            f"{sum(len(r) for _, r in pieces)} pieces, one per tile that sees an object",
        ],
    )
    right = _caption(
        after,
        [
            f"merged: {len(merged)} masks, one per object; dashed: tile cores,",
            "the overlaps split in the middle; each pixel from its core's tile",
        ],
    )
    figure = np.concatenate([left, np.full((left.shape[0], 16, 3), 255, np.uint8), right], 1)
    small = cv2.resize(figure, (figure.shape[1] * 2 // 3, figure.shape[0] * 2 // 3), cv2.INTER_AREA)
    Image.fromarray(small).quantize(colors=64).save(path, optimize=True)
    print(f"{path}: {len(merged)} merged masks from {sum(len(r) for _, r in pieces)} pieces")


def main(argv: list[str] | None = None) -> None:
    """`amg-bench tiling-figure`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", nargs="?", default="docs/images/tiling.png")
    draw(parser.parse_args(argv).output)
