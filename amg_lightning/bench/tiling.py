"""Tiled against untiled generation on a huge synthetic scene with exact masks.

    amg-bench tiling --checkpoint mobile_sam.pt --points-per-side 8

The scene holds several hundred small shapes (20-80 pixels across) and some large ones
(300-1500 pixels by default) centred on the seams between tiles, none overlapping another.
All runs use the same settings: untiled, tiled (merged), a single tile, and every tile on its
own with its masks moved into the image but not merged (naive tiling). Reported per run:
recall of small and large objects at IoU 0.5 and 0.8 (each object matched by its best mask,
so an object cut in two counts as missed unless one mask covers it), masks per object found,
wall time and peak RSS (each run in its own process; the larger of RSS sampled every 2 ms
and the kernel's ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue as queue_module
import resource
import threading
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from amg_lightning.core import rle
from amg_lightning.core.tiling import (
    TileGrid,
    TileMask,
    runs_from_counts,
    runs_to_counts,
    tile_masks,
)


@dataclass
class Shape:
    """One object: its inclusive-exclusive XYXY box and its mask inside that box."""

    box: tuple[int, int, int, int]
    mask: np.ndarray
    large: bool

    def coco(self, image_size: tuple[int, int]) -> dict[str, Any]:
        """The object's COCO RLE in the whole image, made without an image-sized array."""
        counts = rle.encode_mask(self.mask).counts[0]
        runs = runs_from_counts(counts, self.mask.shape, self.box[:2])
        return rle.to_coco(runs_to_counts(runs, image_size), image_size)


@dataclass
class SyntheticScene:
    image: np.ndarray
    shapes: list[Shape]


def _shape_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """An ellipse, a rotated rectangle or a star-free polygon filling a size x size box."""
    canvas = np.zeros((size, size), dtype=np.uint8)
    centre, half = (size // 2, size // 2), size // 2 - 1
    kind = rng.integers(3)
    if kind == 0:
        axes = (half, max(2, int(half * rng.uniform(0.5, 1.0))))
        cv2.ellipse(canvas, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif kind == 1:
        rect = (centre, (2 * half * 0.7, 2 * half * rng.uniform(0.4, 0.7)), rng.uniform(0, 90))
        cv2.fillPoly(canvas, [cv2.boxPoints(rect).astype(np.int32)], 1)
    else:
        angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(5, 9)))
        radii = half * rng.uniform(0.7, 1.0, len(angles))
        points = np.stack([np.cos(angles) * radii, np.sin(angles) * radii], 1) + centre
        cv2.fillPoly(canvas, [points.astype(np.int32)], 1)
    return canvas.astype(bool)


def make_scene(
    height: int,
    width: int,
    small: int,
    large: int,
    tile_size: int,
    tile_overlap: int,
    seed: int = 0,
    large_sizes: tuple[int, int] = (300, 1500),
) -> SyntheticScene:
    """A textured background with `large` big shapes (`large_sizes` pixels across, inclusive)
    on tile seams, then `small` small ones, placed where they overlap nothing (with a 6-pixel
    gap)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(60, 196, size=(8, 12, 3), dtype=np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    image = (image.astype(np.int16) + rng.integers(-6, 7, image.shape)).clip(0, 255)
    image = image.astype(np.uint8)
    grid = TileGrid.for_image((height, width), tile_size, tile_overlap)
    seams_x = [grid.core(i)[2] for i in range(len(grid.x_starts) - 1)]
    seams_y = [grid.core(i * len(grid.x_starts))[3] for i in range(len(grid.y_starts) - 1)]
    shapes: list[Shape] = []
    for want, large_one in ((large, True), (small, False)):
        placed, tries = 0, 0
        while placed < want and tries < want * 200:
            tries += 1
            size = int(
                rng.integers(large_sizes[0], large_sizes[1] + 1)
                if large_one
                else rng.integers(20, 81)
            )
            if large_one and size >= min(height, width):
                continue
            if large_one:  # centred on a vertical or horizontal seam, or on a corner
                cx = rng.choice(seams_x) if seams_x and rng.random() < 0.7 else None
                cy = rng.choice(seams_y) if seams_y and (cx is None or rng.random() < 0.4) else None
                cx = int(rng.integers(size // 2, width - size // 2)) if cx is None else int(cx)
                cy = int(rng.integers(size // 2, height - size // 2)) if cy is None else int(cy)
                x0, y0 = cx - size // 2, cy - size // 2
            else:
                x0, y0 = int(rng.integers(0, width - size)), int(rng.integers(0, height - size))
            box = (x0, y0, x0 + size, y0 + size)
            if min(box[:2]) < 0 or box[2] > width or box[3] > height:
                continue
            if any(_boxes_near(box, s.box, 6) for s in shapes):
                continue
            mask = _shape_mask(rng, size)
            colour = rng.integers(0, 256, 3)
            colour[rng.integers(3)] = rng.choice([15, 240])  # saturated: stands out
            patch = image[y0 : y0 + size, x0 : x0 + size]
            patch[mask] = colour.astype(np.uint8)
            shapes.append(Shape(box, mask, large_one))
            placed += 1
    return SyntheticScene(image, shapes)


def _boxes_near(a: tuple, b: tuple, gap: int) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def recall(
    scene: SyntheticScene, records: list[dict[str, Any]], thresholds: tuple[float, ...]
) -> dict[str, Any]:
    """Per size class: the share of objects whose best mask reaches each IoU threshold, the
    mean number of masks that overlap a found object at IoU 0.5 or more (1.0: once each), and
    how many objects are matched by masks from different crop boxes (different tiles)."""
    size = scene.image.shape[:2]
    truths = [s.coco(size) for s in scene.shapes]
    found = [r["segmentation"] for r in records]
    found_crops = [r["crop_box"] for r in records]
    ious = (
        coco_mask.iou(found, truths, [0] * len(truths))
        if found and truths
        else np.zeros((len(found), len(truths)))
    )
    ious = np.asarray(ious).reshape(len(found), len(truths))
    best = ious.max(0) if len(found) else np.zeros(len(truths))
    out: dict[str, Any] = {}
    for name, large in (("small", False), ("large", True)):
        chosen = np.array([s.large == large for s in scene.shapes])
        if not chosen.any():
            continue
        out[name] = {
            "objects": int(chosen.sum()),
            **{f"recall@{t}": round(float((best[chosen] >= t).mean()), 3) for t in thresholds},
            # Objects matched by masks of different crop boxes: tiles that both kept one.
            "repeated_across_tiles": int(
                sum(
                    len({tuple(found_crops[i]) for i in np.flatnonzero(ious[:, j] >= 0.5)}) > 1
                    for j in np.flatnonzero(chosen)
                )
            ),
            "masks_per_found_object": round(
                float((ious[:, chosen] >= 0.5).sum(0)[best[chosen] >= 0.5].mean())
                if (best[chosen] >= 0.5).any()
                else 0.0,
                2,
            ),
        }
    return out


def _run(arguments: dict[str, Any], image: np.ndarray, queue: multiprocessing.Queue) -> None:
    """One generation in a fresh process: records, seconds and peak RSS (MiB)."""
    import torch

    from amg_lightning.core.generator import AutomaticMaskGenerator
    from amg_lightning.core.models import build_sam
    from amg_lightning.utils.allocator import keep_freed_memory

    torch.set_num_threads(arguments.pop("threads"))
    keep_freed_memory()
    sam = build_sam(arguments.pop("model_type"), arguments.pop("checkpoint"))
    grid = arguments.pop("tiles", None)  # a TileGrid: each tile generated on its own
    mode = "coco_rle" if grid is None else "uncompressed_rle"
    generator = AutomaticMaskGenerator(sam, output_mode=mode, **arguments)
    before = _rss_mib()
    peak = [before]

    def sample() -> None:  # the kernel's ru_maxrss is updated lazily and misses short peaks
        while True:
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.002)

    threading.Thread(target=sample, daemon=True).start()
    started = time.perf_counter()
    if grid is None:
        records = generator.generate(image)
    else:
        records = [
            _image_record(mask, grid.image_size)
            for t in range(len(grid))
            for mask in tile_masks(generator.generate(_tile(image, grid.box(t))), grid, t)
        ]
    seconds = time.perf_counter() - started
    time.sleep(0.01)
    kernel_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((records, seconds, max(peak[0], kernel_peak), before))


def _tile(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return image[y0:y1, x0:x1].copy()


def _image_record(mask: TileMask, image_size: tuple[int, int]) -> dict[str, Any]:
    """What recall reads of a tile's mask moved into the image, unmerged."""
    x0, y0, x1, y1 = mask.crop_box
    counts = runs_to_counts(mask.runs, image_size)
    return {"segmentation": rle.to_coco(counts, image_size), "crop_box": [x0, y0, x1 - x0, y1 - y0]}


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_in_child(arguments: dict[str, Any], image: np.ndarray) -> tuple[list, float, float, float]:
    """`_run` in a forked process, so each peak RSS is that run's alone."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_run, args=(dict(arguments), image, queue))
    process.start()
    while True:  # a child that dies (an import error, out of memory) puts nothing
        try:
            result = queue.get(timeout=1)
            break
        except queue_module.Empty:
            if not process.is_alive():
                message = f"the run's process ended with exit status {process.exitcode}"
                raise RuntimeError(message) from None
    process.join()
    return result


def main(argv: list[str] | None = None) -> None:
    """`amg-bench tiling`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="weights of --model-type (none for tiny)")
    parser.add_argument("--model-type", default="vit_t")
    parser.add_argument("--height", type=int, default=4000)
    parser.add_argument("--width", type=int, default=6000)
    parser.add_argument("--small", type=int, default=400)
    parser.add_argument("--large", type=int, default=12)
    parser.add_argument("--large-min", type=int, default=300, help="large objects' least size")
    parser.add_argument("--large-max", type=int, default=1500, help="and greatest (pixels)")
    parser.add_argument("--seed", type=int, default=0, help="the scene's")
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--tile-overlap", type=int, default=256)
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--crops-per-batch", type=int, default=4, help="also tiles per pass")
    parser.add_argument(
        "--runs", default="untiled,tiled,one_tile,each_tile", help="which, comma-separated"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", help="append the result as one json line to this file")
    args = parser.parse_args(argv)
    scene = make_scene(
        args.height,
        args.width,
        args.small,
        args.large,
        args.tile_size,
        args.tile_overlap,
        args.seed,
        (args.large_min, args.large_max),
    )
    common = {
        "model_type": args.model_type,
        "checkpoint": args.checkpoint,
        "threads": args.threads,
        "points_per_side": args.points_per_side,
        "crops_per_batch": args.crops_per_batch,
    }
    tile = scene.image[: args.tile_size, : args.tile_size].copy()
    grid = TileGrid.for_image(scene.image.shape[:2], args.tile_size, args.tile_overlap)
    result: dict[str, Any] = {
        "image": f"{args.width}x{args.height}",
        "objects": {"small": args.small, "large": args.large},
        "placed": len(scene.shapes),
        "settings": {k: v for k, v in vars(args).items() if k not in ("checkpoint", "output")},
    }
    runs = {
        "untiled": (common, scene.image),
        "tiled": (
            {**common, "tile_size": args.tile_size, "tile_overlap": args.tile_overlap},
            scene.image,
        ),
        "one_tile": (common, tile),
        # Every tile generated on its own, its masks moved into the image and not merged:
        # naive tiling; the peak is the largest single tile's.
        "each_tile": ({**common, "tiles": grid}, scene.image),
    }
    found = {}
    for name in args.runs.split(","):
        arguments, image = runs[name]
        records, seconds, peak, before = run_in_child(arguments, image)
        entry = {"seconds": round(seconds, 1), "masks": len(records), "peak_rss_mib": round(peak)}
        result[name] = {**entry, "rss_growth_mib": round(peak - before)}
        found[name] = records
        print(name, json.dumps(result[name]), flush=True)
    # Scored after every child has run: torch is first used here, never before a fork.
    for name in {"untiled", "tiled", "each_tile"} & set(found):
        result[name]["recall"] = recall(scene, found[name], (0.5, 0.8))
    if args.output:
        with open(args.output, "a") as handle:
            handle.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=2))
