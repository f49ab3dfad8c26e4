"""Synthetic scenes: exact, disjoint instance masks, deterministic files, readable shards."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import webdataset as wds
from pycocotools import mask as mask_utils

from amg_lightning.data.synthetic import SceneSpec, make_scene, scene_rng, write_dataset
from tests.helpers.predict import console_command

REPO = Path(__file__).resolve().parents[1]


def test_masks_are_disjoint_single_coloured_and_large_enough() -> None:
    spec = SceneSpec(height=96, width=128, min_shapes=4, max_shapes=10, min_visible_area=40)
    for index in range(10):
        scene = make_scene(scene_rng(0, index), spec)

        assert scene.image.shape == (96, 128, 3)
        coverage = np.sum(scene.masks, axis=0) if scene.masks else np.zeros((96, 128))
        assert coverage.max() <= 1  # occluded parts belong to the shape on top only
        for mask in scene.masks:
            assert mask.sum() >= spec.min_visible_area
            assert len(np.unique(scene.image[mask], axis=0)) == 1  # exactly one shape's pixels


def test_same_seed_same_bytes_other_seed_other_scenes(tmp_path: Path) -> None:
    first = write_dataset(tmp_path / "a", count=5, seed=7, per_shard=2)
    again = write_dataset(tmp_path / "b", count=5, seed=7, per_shard=2)
    other = write_dataset(tmp_path / "c", count=5, seed=8, per_shard=2)

    for one, two in zip(first.shards, again.shards, strict=True):
        assert one.read_bytes() == two.read_bytes()
    assert first.annotations.read_text() == again.annotations.read_text()
    assert first.annotations.read_text() != other.annotations.read_text()


def test_shards_images_and_coco_json_agree(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path, count=5, seed=1, per_shard=2)
    coco = json.loads(dataset.annotations.read_text())

    assert [p.name for p in dataset.shards] == [f"images-{n:06d}.tar" for n in range(3)]
    samples = list(wds.WebDataset([str(p) for p in dataset.shards], shardshuffle=False))
    assert [s["__key__"] for s in samples] == [Path(i["file_name"]).stem for i in coco["images"]]
    for sample, image in zip(samples, coco["images"], strict=True):
        assert "." not in sample["__key__"]
        assert image["file_name"] == sample["__key__"] + ".png"
        assert sample["png"] == (dataset.images_dir / image["file_name"]).read_bytes()
        scene = make_scene(scene_rng(1, image["id"] - 1), SceneSpec())
        decoded = cv2.imdecode(np.frombuffer(sample["png"], np.uint8), cv2.IMREAD_COLOR)
        assert np.array_equal(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), scene.image)
        own = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert len(own) == len(scene.masks)
        for annotation, mask in zip(own, scene.masks, strict=True):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            assert annotation["segmentation"]["counts"] == rle["counts"].decode("ascii")
            assert annotation["segmentation"]["size"] == list(mask.shape)
            assert annotation["area"] == mask.sum()
            assert (annotation["iscrowd"], annotation["category_id"]) == (0, 1)
            ys, xs = np.nonzero(mask)
            assert annotation["bbox"] == [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]


def test_jpg_images_beside_png_shards(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path, count=2, image_format="jpg")

    assert sorted(p.name for p in dataset.images_dir.iterdir()) == [
        "synthetic_000000.jpg",
        "synthetic_000001.jpg",
    ]
    sample = next(iter(wds.WebDataset(str(dataset.shards[0]), shardshuffle=False)))
    assert sample["png"].startswith(b"\x89PNG")


def test_too_small_scenes_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 32x32"):
        SceneSpec(height=16, width=64)


def test_script_writes_a_dataset(tmp_path: Path) -> None:
    command = [console_command("amg-synthetic"), str(tmp_path), "--count", "3", "--per-shard", "2"]

    subprocess.run(command, check=True, capture_output=True, timeout=60)

    assert len(json.loads((tmp_path / "annotations.json").read_text())["images"]) == 3
    assert len(list((tmp_path / "shards").glob("images-*.tar"))) == 2
