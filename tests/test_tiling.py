"""Tiling huge images: the tile grid, run arithmetic, the merge rule on crafted tile masks,
the generator's hook on the tiny model, memory, the pixel limit, and the real checkpoint."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image
from pycocotools import mask as coco_mask

from amg_lightning import AmgSettings, AutomaticMaskGenerator
from amg_lightning.bench import tiling as tiling_bench
from amg_lightning.bench.tiling_figure import tile_record
from amg_lightning.core import rle
from amg_lightning.core.tiling import (
    TileGrid,
    clip,
    merge_tiles,
    overview_mask,
    runs_from_counts,
    runs_to_counts,
    subtract,
    union,
)
from amg_lightning.data.decode import decode_image
from amg_lightning.run.config import ConfigError, check_config, generator_settings
from tests.helpers.predict import run_predict

ROOT = Path(__file__).resolve().parents[1]
LOOSE = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def _runs(mask: np.ndarray) -> np.ndarray:
    return runs_from_counts(rle.encode_mask(mask).counts[0], mask.shape, (0, 0))


def _dense(runs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return rle.decode(runs_to_counts(runs, size), size)


@pytest.mark.parametrize(
    ("size", "tile", "overlap"),
    [((300, 400), 160, 40), ((1000, 2900), 1024, 256), ((100, 700), 128, 0), ((90, 90), 128, 8)],
)
def test_tiles_cover_the_image_with_the_overlap_and_cores_partition_it(size, tile, overlap):
    grid = TileGrid.for_image(size, tile, overlap)
    covered = np.zeros(size, dtype=int)
    cores = np.zeros(size, dtype=int)
    for i in range(len(grid)):
        x0, y0, x1, y1 = grid.box(i)
        assert x1 - x0 == min(tile, size[1]) and y1 - y0 == min(tile, size[0])
        covered[y0:y1, x0:x1] += 1
        cx0, cy0, cx1, cy1 = grid.core(i)
        cores[cy0:cy1, cx0:cx1] += 1
    assert covered.min() >= 1 and (cores == 1).all()
    for starts in (grid.x_starts, grid.y_starts):
        assert all(tile - (b - a) >= overlap for a, b in itertools.pairwise(starts))


def test_run_arithmetic_matches_dense_masks():
    rng = np.random.default_rng(0)
    for _ in range(50):
        height, width = rng.integers(1, 40, 2)
        a, b = (rng.random((height, width)) < rng.random() for _ in range(2))
        size = (int(height), int(width))
        assert np.array_equal(runs_to_counts(_runs(a), size), rle.encode_mask(a).counts[0])
        assert np.array_equal(_dense(union([_runs(a), _runs(b)]), size), a | b)
        box = (2, 1, int(width) - 3, int(height) - 2)
        inside = np.zeros(size, dtype=bool)
        inside[box[1] : box[3], box[0] : box[2]] = True
        assert np.array_equal(_dense(clip(_runs(a), box), size), a & inside)
        assert np.array_equal(_dense(subtract(_runs(a), box), size), a & ~inside)
        # A mask moved into a larger image by the tile's offset.
        big = np.zeros((size[0] + 5, size[1] + 7), dtype=bool)
        big[5:, 7:] = a
        moved = runs_from_counts(rle.encode_mask(a).counts[0], size, (7, 5))
        assert np.array_equal(_dense(moved, big.shape), big)


def _tile_records(
    objects: list[np.ndarray], grid: TileGrid, grow: dict[int, int] | None = None
) -> list[tuple[int, list[dict]]]:
    """What a perfect per-tile generator returns: each object's part in each tile, as an
    uncompressed RLE in the tile; `grow` dilates the parts seen by some tiles (pixels)."""
    out = []
    for t in range(len(grid)):
        x0, y0, x1, y1 = grid.box(t)
        records = []
        for obj in objects:
            part = obj[y0:y1, x0:x1]
            if (grow or {}).get(t):
                size = 2 * grow[t] + 1
                part = cv2.dilate(part.astype(np.uint8), np.ones((size, size), np.uint8)) > 0
            if not part.any():
                continue
            ys, xs = np.nonzero(part)
            records.append(tile_record(part, [float(xs[0]), float(ys[0])]))
        out.append((t, records))
    return out


def _merged(objects, grid, grow=None) -> list[np.ndarray]:
    records = merge_tiles(grid, _tile_records(objects, grid, grow), "coco_rle")
    for record in records:
        assert record["segmentation"]["size"] == list(grid.image_size)
    return [coco_mask.decode(r["segmentation"]).astype(bool) for r in records]


def _ellipse(size, centre, axes) -> np.ndarray:
    canvas = np.zeros(size, dtype=np.uint8)
    cv2.ellipse(canvas, centre, axes, 0, 0, 360, 1, -1)
    return canvas.astype(bool)


SIZE = (300, 400)  # tiles of 160 overlapping by at least 40: x starts 0, 120, 240
GRID = TileGrid.for_image(SIZE, 160, 40)


@pytest.mark.parametrize(
    ("name", "centre", "axes"),
    [
        ("across a vertical seam", (200, 60), (50, 30)),
        ("across the corner of four tiles", (200, 150), (55, 50)),
        ("larger than a tile", (200, 150), (190, 120)),
        ("in the overlap, cut by tile 1's left edge", (120, 40), (12, 12)),
    ],
)
def test_an_object_cut_by_tile_borders_comes_out_as_one_mask(name, centre, axes):
    obj = _ellipse(SIZE, centre, axes)
    masks = _merged([obj], GRID)
    assert len(masks) == 1, name
    np.testing.assert_array_equal(masks[0], obj)


def test_an_object_whole_in_several_tiles_comes_out_once():
    grid = TileGrid.for_image(SIZE, 160, 120)  # x starts 0, 40, ..., 240: overlaps of 120
    obj = _ellipse(SIZE, (130, 150), (12, 12))  # columns 118-142: whole in the tiles at 0, 40, 80
    whole_in = [t for t in range(len(grid)) if grid.inner_edge_gap(t, _box(obj)) >= 20]
    assert len(whole_in) >= 2
    masks = _merged([obj], grid)
    assert len(masks) == 1
    np.testing.assert_array_equal(masks[0], obj)


def _box(mask: np.ndarray) -> np.ndarray:
    """Inclusive XYXY box of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()])


def test_tiles_overlapping_by_more_than_half_still_give_one_mask_per_object():
    grid = TileGrid.for_image(SIZE, 160, 120)  # each pixel column in up to four tiles
    assert len(grid.x_starts) > 4
    objects = [_ellipse(SIZE, (200, 150), (70, 50)), _ellipse(SIZE, (60, 250), (15, 15))]
    masks = _merged(objects, grid)
    assert len(masks) == 2
    for obj in objects:
        assert any(np.array_equal(m, obj) for m in masks)


@pytest.mark.parametrize("side", ["starts at the overlap's edge", "ends at the overlap's edge"])
def test_an_object_exactly_on_the_overlaps_edge_is_one_mask(side):
    x0 = GRID.box(1)[0]  # tile 1 overlaps tile 0 in columns [120, 160)
    obj = np.zeros(SIZE, dtype=bool)
    if side == "starts at the overlap's edge":
        obj[40:90, x0 : x0 + 30] = True  # whole in tile 0, touches tile 1's left edge
    else:
        obj[40:90, GRID.box(0)[2] - 30 : GRID.box(0)[2]] = True  # touches tile 0's right edge
    masks = _merged([obj], GRID)
    assert len(masks) == 1
    np.testing.assert_array_equal(masks[0], obj)


def test_pieces_that_disagree_a_little_are_stitched_from_each_tiles_core():
    obj = _ellipse(SIZE, (200, 150), (90, 60))
    masks = _merged([obj], GRID, grow={t: 2 for t in range(0, len(GRID), 2)})
    assert len(masks) == 1
    iou = (masks[0] & obj).sum() / (masks[0] | obj).sum()
    assert iou > 0.97


def test_neighbouring_objects_across_seams_stay_apart():
    top = np.zeros(SIZE, dtype=bool)
    bottom = np.zeros(SIZE, dtype=bool)
    top[50:96, 40:300] = True  # both cut by the edges of every tile they cross
    bottom[97:140, 40:300] = True
    masks = _merged([top, bottom], GRID)
    assert len(masks) == 2
    assert sorted(int(m.sum()) for m in masks) == sorted([int(top.sum()), int(bottom.sum())])
    assert any(np.array_equal(m, top) for m in masks)


def test_touching_tiles_without_overlap_merge_along_the_seam():
    grid = TileGrid.for_image((128, 256), 128, 0)
    obj = _ellipse((128, 256), (128, 64), (40, 30))
    masks = _merged([obj], grid)
    assert len(masks) == 1
    np.testing.assert_array_equal(masks[0], obj)


def test_a_large_object_whose_pieces_disagree_comes_out_whole_from_the_overview():
    """An object across three tile columns whose middle tiles join it to the ground below:
    the pieces disagree in the overlaps, so without the overview pass the object comes out
    in fragments (none reaching IoU 0.8). The overview (the image at half size, scaled back
    up) holds it whole: the cut pieces that agree with it yield to it."""
    obj = _ellipse(SIZE, (200, 110), (95, 60))  # columns 105-295: no tile holds it whole
    small_obj = _ellipse(SIZE, (60, 250), (15, 15))  # whole in a tile
    middle = [t for t in range(len(GRID)) if GRID.box(t)[0] == 120]
    ground = np.zeros(SIZE, dtype=bool)
    ground[100:, :] = True
    tiles = _tile_records([obj, small_obj], GRID)
    for t, records in _tile_records([obj | ground], GRID):
        if t in middle:  # the middle column sees the object and the ground as one region
            tiles[t] = (t, [r for r in tiles[t][1] if r["area"] < 2000] + records)
    half = (SIZE[0] // 2, SIZE[1] // 2)
    overview = [
        overview_mask(
            tile_record(cv2.resize(m.astype(np.uint8), half[::-1]) > 0, [100, 55]), half, SIZE
        )
        for m in (obj, small_obj)
    ]
    records = merge_tiles(GRID, tiles, "coco_rle", overview)
    masks = [coco_mask.decode(r["segmentation"]).astype(bool) for r in records]
    ious = sorted(((m & obj).sum() / (m | obj).sum() for m in masks), reverse=True)
    assert ious[0] > 0.95 and ious[1] < 0.5, ious  # one mask holds it, no other mask matches
    # The small object, whole in a tile, comes from the tile at full resolution, once.
    assert sum(np.array_equal(m, small_obj) for m in masks) == 1
    assert not any(r["crop_box"] == [0, 0, 400, 300] and r["area"] < 2000 for r in records)
    whole = next(r for r in records if r["crop_box"] == [0, 0, 400, 300])
    assert whole["point_coords"] == [[200.0, 110.0]]


def test_overview_masks_scale_up_by_nearest_neighbour():
    """Each pixel of the image takes the overview pixel under its centre."""
    rng = np.random.default_rng(4)
    small = rng.random((15, 20)) < 0.5
    size = (31, 47)
    rows = ((np.arange(size[0]) + 0.5) * 15 / size[0]).astype(int)
    columns = ((np.arange(size[1]) + 0.5) * 20 / size[1]).astype(int)
    mask = overview_mask(tile_record(small, [3.0, 4.0]), small.shape, size)
    assert np.array_equal(_dense(mask.runs, size), small[rows][:, columns])
    assert mask.crop_box == [0, 0, 47, 31]
    np.testing.assert_allclose(mask.point, [3.0 * 47 / 20, 4.0 * 31 / 15])


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"tile_size": 256, "tile_overlap": 256}, "0 <= tile_overlap < tile_size = 256"),
        ({"tile_size": 0}, "tile_size must be >= 1"),
        ({"tile_overlap": -1}, "tile_overlap must be an integer with 0 <= tile_overlap"),
    ],
)
def test_bad_tiling_settings_give_one_clear_message(settings, words):
    with pytest.raises(ValueError, match=words):
        AmgSettings(**settings)


def test_an_image_no_larger_than_a_tile_gets_exactly_the_untiled_result(tiny_sam, random_image):
    settings = {**LOOSE, "crop_n_layers": 1, "output_mode": "coco_rle"}
    untiled = AutomaticMaskGenerator(tiny_sam, **settings).generate(random_image)
    tiled = AutomaticMaskGenerator(tiny_sam, tile_size=200, tile_overlap=50, **settings).generate(
        random_image
    )
    assert len(untiled) > 0
    assert tiled == untiled


def test_tiled_records_are_in_image_coordinates(tiny_sam):
    rng = np.random.default_rng(1)
    image = cv2.resize(
        rng.integers(0, 255, (5, 9, 3), dtype=np.uint8), (400, 200), interpolation=cv2.INTER_CUBIC
    )
    generator = AutomaticMaskGenerator(tiny_sam, tile_size=160, tile_overlap=32, **LOOSE)
    records = generator.generate(image)
    assert len(records) > 0
    for record in records:
        mask = record["segmentation"]
        assert mask.shape == (200, 400)
        ys, xs = np.nonzero(mask)
        assert record["area"] == len(xs)
        assert record["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
        x, y, w, h = record["crop_box"]
        assert x >= 0 and y >= 0 and x + w <= 400 and y + h <= 200
        px, py = record["point_coords"][0]
        assert x <= px <= x + w and y <= py <= y + h


MEMORY_CHILD = textwrap.dedent(
    """
    import os, resource, sys, threading, time, cv2, numpy as np, torch
    from amg_lightning.core.generator import AutomaticMaskGenerator
    from amg_lightning.core.models import build_sam
    from amg_lightning.core.tiling import TileGrid
    torch.set_num_threads(1)
    side, tile, overlap = 3000, 1024, 128
    rng = np.random.default_rng(0)
    blobs = rng.integers(0, 255, (side // 200, side // 200, 3), np.uint8)
    image = cv2.resize(blobs, (side, side), interpolation=cv2.INTER_CUBIC)
    generator = AutomaticMaskGenerator(build_sam("tiny"), points_per_side=2,
        pred_iou_thresh=0.0, stability_score_thresh=0.0, output_mode="coco_rle",
        tile_size=tile, tile_overlap=overlap, crops_per_batch=1)
    generator.generate(image[:64, :64].copy())  # warm up

    def rss():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

    # The kernel's own peak (ru_maxrss) is updated lazily and misses short peaks: sample too.
    before, peak = rss(), [0]

    def sample():
        while True:
            peak[0] = max(peak[0], rss())
            time.sleep(0.001)

    threading.Thread(target=sample, daemon=True).start()
    if sys.argv[1] == "tiles":  # each tile on its own: the peak of the largest
        grid = TileGrid.for_image(image.shape[:2], tile, overlap)
        for i in range(len(grid)):
            x0, y0, x1, y1 = grid.box(i)
            records = generator.generate(image[y0:y1, x0:x1].copy())
    else:
        records = generator.generate(image)
    time.sleep(0.01)
    top = max(peak[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    print(top - before, len({tuple(r["crop_box"]) for r in records}))
    """
)


def _rss_growth_kib(mode: str) -> tuple[int, int]:
    """Peak RSS growth (KiB) of generation in a fresh process, and how many crop boxes the
    (last) generation's masks came from."""
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, mode],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=True,
    )
    growth, crops = done.stdout.split()
    return int(growth), int(crops)


def test_memory_of_a_tiled_image_stays_near_that_of_one_tile():
    """A 3000 x 3000 image in 16 tiles of 1024 grows the peak RSS by no more than 1.5 times
    the largest single tile's generation: no image-sized mask or logit map is made (one
    would take 9 MiB as booleans, 34 MiB as logits, for every mask)."""
    one_tile, _ = _rss_growth_kib("tiles")
    tiled, crops = _rss_growth_kib("tiled")
    assert crops > 1  # masks from several tiles
    assert tiled <= 1.5 * one_tile, (one_tile, tiled)


def _shard(path: Path, images: dict[str, np.ndarray]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, image in images.items():
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, "PNG")
            info = tarfile.TarInfo(f"{key}.png")
            info.size = buffer.tell()
            buffer.seek(0)
            tar.addfile(info, buffer)


def test_predict_tiles_large_images_and_refuses_those_over_the_pixel_limit(tmp_path):
    rng = np.random.default_rng(2)
    smooth = rng.integers(0, 255, (4, 6, 3), dtype=np.uint8)
    _shard(
        tmp_path / "images-000000.tar",
        {
            "wide": cv2.resize(smooth, (600, 300), interpolation=cv2.INTER_CUBIC),
            "huge": cv2.resize(smooth, (800, 500), interpolation=cv2.INTER_CUBIC),
        },
    )
    args = [
        f"data.urls={tmp_path}",
        "data.num_workers=0",
        "data.max_image_pixels=300000",
        "model=tiny",
        "tile_size=256",
        "tile_overlap=64",
        *(f"{k}={v}" for k, v in LOOSE.items()),
        f"output_dir={tmp_path / 'out'}",
    ]
    done = run_predict(args, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    errors = [json.loads(line) for line in (out / "errors-r000.jsonl").read_text().splitlines()]
    assert [(e["key"], e["error"]) for e in errors] == [
        (
            "huge",
            "image too large: 800x500 is more than data.max_image_pixels = 300000 pixels "
            "(raise it to accept the image)",
        )
    ]
    with tarfile.open(next(out.glob("*.tar"))) as tar:
        jsons = [m for m in tar.getmembers() if m.name.endswith(".json")]
        assert [m.name for m in jsons] == ["wide.json"]
        wide = json.loads(tar.extractfile(jsons[0]).read())
    annotations = wide["annotations"]
    assert len(annotations) > 0
    assert len({tuple(a["crop_box"]) for a in annotations}) > 1  # from several tiles
    for annotation in annotations:
        assert annotation["segmentation"]["size"] == [300, 600]
        assert coco_mask.area(annotation["segmentation"]) == annotation["area"]


@pytest.mark.parametrize("limit", [11_999, 5_999, 100])
def test_decoding_refuses_images_over_the_pixel_limit_from_the_header(limit):
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((100, 120, 3), dtype=np.uint8)).save(buffer, "PNG")
    assert decode_image(buffer.getvalue(), max_image_pixels=12_000).shape == (100, 120, 3)
    pillow_limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ValueError, match=f"120x100 is more than data.max_image_pixels = {limit} "):
        decode_image(buffer.getvalue(), max_image_pixels=limit)
    assert pillow_limit == Image.MAX_IMAGE_PIXELS  # Pillow's process-wide setting is kept


def test_tiling_keys_of_predict_yaml_reach_the_generator_settings(tmp_path):
    overrides = [f"data.urls={tmp_path}", f"output_dir={tmp_path}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        default = compose("predict", overrides=overrides)
        tiled = compose("predict", overrides=[*overrides, "tile_size=1024", "tile_overlap=128"])
        bad = compose("predict", overrides=[*overrides, "tile_size=128"])
    assert generator_settings(default)["tile_size"] is None
    assert AmgSettings(**generator_settings(tiled)).tile_size == 1024
    assert generator_settings(tiled)["tile_overlap"] == 128
    with pytest.raises(ConfigError, match="0 <= tile_overlap < tile_size = 128, got 256"):
        check_config(bad)


def test_real_model_finds_an_object_cut_by_seams_as_one_mask(mobile_sam):
    """An ellipse wider than a tile, on textured ground, through three 512-pixel tiles."""
    rng = np.random.default_rng(3)
    ground = cv2.resize(
        rng.integers(70, 190, (4, 8, 3), dtype=np.uint8), (1024, 512), interpolation=cv2.INTER_CUBIC
    )
    obj = _ellipse((512, 1024), (512, 256), (290, 150))
    image = ground.copy()
    image[obj] = (230, 30, 40)
    generator = AutomaticMaskGenerator(
        mobile_sam, points_per_side=8, tile_size=512, tile_overlap=128, output_mode="coco_rle"
    )
    records = generator.generate(image)
    truth = coco_mask.encode(np.asfortranarray(obj.astype(np.uint8)))
    ious = np.asarray(coco_mask.iou([r["segmentation"] for r in records], [truth], [0]))[:, 0]
    assert (ious >= 0.5).sum() == 1, sorted(ious)[-3:]
    assert ious.max() >= 0.9


def test_amg_bench_tiling_scores_untiled_naive_and_merged_runs(tmp_path):
    """`amg-bench tiling` end to end on the tiny model: each run in its own process, scored."""
    out = tmp_path / "tiling.jsonl"
    tiling_bench.main(
        [
            *("--model-type", "tiny", "--width", "640", "--height", "384", "--small", "6"),
            *("--large", "2", "--large-min", "150", "--large-max", "200", "--seed", "3"),
            *("--tile-size", "256", "--tile-overlap", "64", "--points-per-side", "2"),
            *("--runs", "untiled,each_tile,tiled", "--threads", "1", "--output", str(out)),
        ]
    )
    result = json.loads(out.read_text())
    assert result["objects"] == {"small": 6, "large": 2}
    for name in ("untiled", "each_tile", "tiled"):
        recall = result[name]["recall"]  # the random model finds little: only the counts
        assert (recall["small"]["objects"], recall["large"]["objects"]) == (6, 2)
        # Timed and measured (a warm run of this tiny scene may round to 0.0 s).
        assert {"seconds", "masks", "peak_rss_mib"} <= set(result[name])
