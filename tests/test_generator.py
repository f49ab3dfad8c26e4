"""The generator's API on a tiny random SAM: settings, output modes, records, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as coco_mask
from segment_anything import SamAutomaticMaskGenerator

from amg_lightning import AmgSettings, AutomaticMaskGenerator

LOOSE = {"points_per_side": 6, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def test_defaults_are_the_reference_defaults():
    import inspect

    reference = inspect.signature(SamAutomaticMaskGenerator.__init__).parameters
    ours = AmgSettings()
    for name, parameter in reference.items():
        if name not in ("self", "model"):
            assert getattr(ours, name) == parameter.default, name


@pytest.mark.parametrize(
    ("setting", "value", "words"),
    [
        ("pred_iou_thresh", 1.5, "pred_iou_thresh must be in [0.0, 1.0]"),
        ("points_per_side", 0, "points_per_side must be >= 1"),
        ("crop_n_layers", -1, "crop_n_layers must be >= 0"),
        ("output_mode", "png", "output_mode must be one of"),
        ("box_nms_thresh", "high", "box_nms_thresh must be a number"),
        ("points_per_batch", 0, "points_per_batch must be >= 1"),
    ],
)
def test_bad_settings_name_the_argument(tiny_sam, setting, value, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        AutomaticMaskGenerator(tiny_sam, **{setting: value})


def test_point_grids_instead_of_points_per_side(tiny_sam, random_image):
    grids = [np.array([[0.25, 0.25], [0.75, 0.5]])]
    generator = AutomaticMaskGenerator(
        tiny_sam,
        points_per_side=None,
        point_grids=grids,
        **{k: v for k, v in LOOSE.items() if k != "points_per_side"},
    )
    records = generator.generate(random_image)
    points = {tuple(r["point_coords"][0]) for r in records}
    assert points <= {(50.0, 37.5), (150.0, 75.0)}
    with pytest.raises(ValueError, match="exactly one of points_per_side or point_grids"):
        AutomaticMaskGenerator(tiny_sam, point_grids=grids)


def test_output_modes_hold_the_same_masks(tiny_sam, random_image):
    by_mode = {
        mode: AutomaticMaskGenerator(tiny_sam, output_mode=mode, **LOOSE).generate(random_image)
        for mode in ("binary_mask", "uncompressed_rle", "coco_rle")
    }
    assert len({len(records) for records in by_mode.values()}) == 1
    assert len(by_mode["binary_mask"]) > 0
    for binary, raw, coco in zip(*by_mode.values(), strict=True):
        mask = binary["segmentation"]
        assert mask.shape == random_image.shape[:2] and mask.dtype == bool
        from_raw = coco_mask.decode(coco_mask.frPyObjects(raw["segmentation"], *mask.shape))
        np.testing.assert_array_equal(from_raw.astype(bool), mask)
        np.testing.assert_array_equal(coco_mask.decode(coco["segmentation"]).astype(bool), mask)
        assert binary["area"] == int(mask.sum())
        ys, xs = np.nonzero(mask)
        assert binary["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]


def test_same_records_as_reference_on_tiny_model(tiny_sam, random_image):
    """Every record field agrees with the reference, here without the real checkpoint."""
    settings = {**LOOSE, "crop_n_layers": 1, "output_mode": "coco_rle", "min_mask_region_area": 30}
    reference = SamAutomaticMaskGenerator(tiny_sam, **settings).generate(random_image)
    ours = AutomaticMaskGenerator(tiny_sam, **settings).generate(random_image)
    assert len(reference) > 0
    assert len(ours) == len(reference)
    key = lambda r: (tuple(r["point_coords"][0]), r["crop_box"], r["area"])  # noqa: E731
    for r, o in zip(sorted(reference, key=key), sorted(ours, key=key), strict=True):
        assert o["segmentation"] == r["segmentation"]
        assert o["bbox"] == r["bbox"] and o["crop_box"] == r["crop_box"]
        assert all(type(v) is int for v in o["bbox"] + o["crop_box"] + [o["area"]])
        assert o["area"] == r["area"]
        assert o["point_coords"][0] == pytest.approx(r["point_coords"][0])
        assert o["predicted_iou"] == pytest.approx(r["predicted_iou"], abs=1e-4)
        assert o["stability_score"] == pytest.approx(r["stability_score"], abs=1e-3)


def test_filters_only_remove_masks(tiny_sam, random_image):
    loose = AutomaticMaskGenerator(tiny_sam, **LOOSE).generate(random_image)
    strict = AutomaticMaskGenerator(
        tiny_sam, points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.9
    ).generate(random_image)
    assert len(strict) <= len(loose)
    assert all(r["stability_score"] >= 0.9 for r in strict)


def test_memory_bounds_do_not_change_masks(tiny_sam, random_image):
    settings = {**LOOSE, "points_per_side": 4, "output_mode": "coco_rle", "crop_n_layers": 1}
    wide = AutomaticMaskGenerator(tiny_sam, **settings).generate(random_image)
    narrow = AutomaticMaskGenerator(
        tiny_sam, points_per_batch=5, upscale_budget_mb=1, crops_per_batch=1, **settings
    ).generate(random_image)
    assert [r["segmentation"] for r in narrow] == [r["segmentation"] for r in wide]


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 4), np.uint8),
        np.zeros((10, 10, 3), np.float32),
    ],
)
def test_bad_images_are_refused_clearly(tiny_sam, image):
    with pytest.raises(ValueError, match="image must be"):
        AutomaticMaskGenerator(tiny_sam).generate(image)


def test_embedding_cache_skips_the_encoder_and_changes_nothing(tiny_sam, random_image, tmp_path):
    from amg_lightning.core.embedding_cache import EmbeddingCache

    settings = {**LOOSE, "crop_n_layers": 1, "output_mode": "coco_rle"}
    plain = AutomaticMaskGenerator(tiny_sam, **settings).generate(random_image)
    cache = EmbeddingCache(tmp_path, max_bytes=2**30)
    first = AutomaticMaskGenerator(tiny_sam, embedding_cache=cache, model_id="tiny", **settings)
    assert first.generate(random_image) == plain
    assert (cache.hits, cache.misses) == (0, 5)  # the whole image and four crops
    stricter = {**settings, "stability_score_thresh": 0.5}
    second = AutomaticMaskGenerator(tiny_sam, embedding_cache=cache, model_id="tiny", **stricter)
    expected = AutomaticMaskGenerator(tiny_sam, **stricter).generate(random_image)
    assert second.generate(random_image) == expected
    assert cache.hits == 5


def test_fast_mode_takes_the_exact_runs_cached_embedding(tiny_sam, random_image, tmp_path):
    """The encoder runs in float32 in both modes, so a fast run reuses an exact run's
    embedding, and its masks are those it makes without the cache."""
    from amg_lightning.core.embedding_cache import EmbeddingCache

    settings = {**LOOSE, "output_mode": "coco_rle"}
    uncached = AutomaticMaskGenerator(tiny_sam, fast=True, **settings).generate(random_image)
    cache = EmbeddingCache(tmp_path, max_bytes=2**30)
    for fast in (False, True):
        cached = AutomaticMaskGenerator(
            tiny_sam, fast=fast, embedding_cache=cache, model_id="tiny", **settings
        ).generate(random_image)
    assert (cache.hits, cache.misses) == (1, 1)
    assert cached == uncached
