"""Mask pictures: tint inside masks, outlines on their edges, well-separated colours, labels,
size bounds, and the command (JPEG or PNG) on a COCO json and on a run folder."""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from pycocotools import mask as mask_utils

from amg_lightning.results.visualize import draw_masks, mask_colours, mask_label
from amg_lightning.results.visualize import main as visualize_main
from tests.helpers.predict import console_command

REPO = Path(__file__).resolve().parents[1]
GRAY = 128


def compressed_rle(mask: np.ndarray) -> dict:
    """The COCO RLE the predictor writes: counts as a str."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """Run lengths of the column-major mask, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def square_mask(top: int = 10, left: int = 20, side: int = 20) -> np.ndarray:
    mask = np.zeros((60, 80), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


@pytest.fixture
def gray_image() -> np.ndarray:
    return np.full((60, 80, 3), GRAY, dtype=np.uint8)


def test_inside_is_tinted_edge_outlined_outside_untouched(gray_image: np.ndarray) -> None:
    drawn = draw_masks(gray_image, [compressed_rle(square_mask())], seed=3)
    colour = mask_colours(1, seed=3)[0].astype(float)
    assert drawn.shape == gray_image.shape
    assert drawn.dtype == np.uint8
    np.testing.assert_array_equal(drawn[20, 30], np.round(0.5 * GRAY + 0.5 * colour))
    np.testing.assert_array_equal(drawn[10, 30], colour)
    np.testing.assert_array_equal(drawn[29, 39], colour)
    np.testing.assert_array_equal(drawn[45, 60], [GRAY] * 3)
    assert (gray_image == GRAY).all()


def test_colours_follow_the_seed(gray_image: np.ndarray) -> None:
    rles = [compressed_rle(square_mask()), compressed_rle(square_mask(top=35, left=50))]
    first = draw_masks(gray_image, rles, seed=7)
    np.testing.assert_array_equal(first, draw_masks(gray_image, rles, seed=7))
    assert not np.array_equal(first, draw_masks(gray_image, rles, seed=8))
    assert not np.array_equal(first[20, 30], first[45, 60])


@pytest.mark.parametrize("seed", range(10))
def test_colours_are_far_apart_and_far_from_grey(seed: int) -> None:
    colours = mask_colours(12, seed).astype(int)
    # Chroma (max - min channel) of a grey is 0; of a pure hue at full value, 255.
    assert (colours.max(axis=1) - colours.min(axis=1)).min() >= 200
    # Masks next to each other in a record get very different colours, and no two of a
    # dozen are close.
    assert min(np.linalg.norm(a - b) for a, b in itertools.pairwise(colours)) >= 250
    assert min(np.linalg.norm(a - b) for a, b in itertools.combinations(colours, 2)) >= 45


def test_small_mask_stays_visible_inside_a_large_one(gray_image: np.ndarray) -> None:
    small, large = square_mask(top=25, left=35, side=6), square_mask(top=5, left=5, side=50)
    drawn = draw_masks(gray_image, [compressed_rle(small), compressed_rle(large)], seed=1)
    small_colour, large_colour = mask_colours(2, seed=1).astype(float)
    centre = np.round(0.5 * (0.5 * GRAY + 0.5 * large_colour) + 0.5 * small_colour)
    np.testing.assert_allclose(drawn[28, 38], centre, atol=1)


def test_uncompressed_rle_draws_the_same(gray_image: np.ndarray) -> None:
    mask = square_mask(top=0, left=0)
    np.testing.assert_array_equal(
        draw_masks(gray_image, [uncompressed_rle(mask)]),
        draw_masks(gray_image, [compressed_rle(mask)]),
    )


def test_labels_are_written_inside_their_masks() -> None:
    image = np.full((200, 300, 3), GRAY, dtype=np.uint8)
    left, right = np.zeros((200, 300), dtype=bool), np.zeros((200, 300), dtype=bool)
    left[40:160, 20:140] = True
    right[60:120, 170:290] = True
    rles = [compressed_rle(left), compressed_rle(right)]
    plain = draw_masks(image, rles)
    labelled = draw_masks(image, rles, labels=["#0 0.97", "#1 0.91"])
    changed = (plain != labelled).any(axis=2)
    # Each label is centred in its mask (white text on a black edge), and nothing else changed.
    assert changed[40:160, 20:140].sum() > 50 and changed[60:120, 170:290].sum() > 50
    assert not changed[~(left | right)].any()
    text = labelled[changed]
    assert (text == 255).all(axis=1).any() and (text == 0).all(axis=1).any()


def test_label_is_the_index_and_the_score() -> None:
    assert mask_label(3, {"predicted_iou": 0.9123, "segmentation": {}}) == "#3 0.91"
    assert mask_label(0, {"score": 0.5}) == "#0 0.50"  # COCO results
    assert mask_label(7, {"segmentation": {}}) == "#7"  # a ground-truth json


def test_max_side_bounds_the_picture_and_its_masks() -> None:
    image = np.full((100, 2000, 3), GRAY, dtype=np.uint8)
    mask = np.zeros((100, 2000), dtype=bool)
    mask[:, 1000:] = True
    drawn = draw_masks(image, [compressed_rle(mask)], seed=3, max_side=1600)
    assert drawn.shape == (80, 1600, 3)
    colour = mask_colours(1, seed=3)[0].astype(float)
    np.testing.assert_array_equal(drawn[40, 1200], np.round(0.5 * GRAY + 0.5 * colour))
    np.testing.assert_array_equal(drawn[40, 400], [GRAY] * 3)
    assert draw_masks(image, [compressed_rle(mask)], max_side=2000).shape == image.shape


def test_no_masks_gives_a_copy(gray_image: np.ndarray) -> None:
    drawn = draw_masks(gray_image, [])
    np.testing.assert_array_equal(drawn, gray_image)
    assert drawn is not gray_image


def test_mask_of_another_size_is_refused(gray_image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        draw_masks(gray_image, [compressed_rle(np.ones((10, 10), dtype=bool))])


def test_gray_image_is_refused() -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        draw_masks(np.zeros((60, 80), dtype=np.uint8), [])


def test_command_draws_a_coco_json(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    photo = np.full((60, 80, 3), GRAY, dtype=np.uint8)
    cv2.imwrite(str(images / "square.png"), photo)
    coco = {
        "images": [{"id": 1, "file_name": "square.png", "height": 60, "width": 80}],
        "annotations": [{"id": 1, "image_id": 1, "segmentation": compressed_rle(square_mask())}],
    }
    (tmp_path / "masks.json").write_text(json.dumps(coco))
    out = tmp_path / "pictures"
    command = [console_command("amg-visualize"), str(tmp_path / "masks.json")]
    command += ["--images", str(images), "--out", str(out), "--format", "png", "--labels"]
    subprocess.run(command, check=True, capture_output=True)
    assert [p.name for p in out.iterdir()] == ["square.png"]
    picture = cv2.cvtColor(cv2.imread(str(out / "square.png")), cv2.COLOR_BGR2RGB)
    expected = draw_masks(photo, [coco["annotations"][0]["segmentation"]], labels=["#0"])
    np.testing.assert_array_equal(picture, expected)


def test_command_draws_prediction_shards_over_their_input_images(tmp_path: Path) -> None:
    photo = np.full((60, 80, 3), GRAY, dtype=np.uint8)
    photo[:, 40:] = 30
    input_shard = tmp_path / "images-000000.tar"
    with wds.TarWriter(str(input_shard)) as writer:
        writer.write({"__key__": "other", "png": cv2.imencode(".png", photo)[1].tobytes()})
        writer.write({"__key__": "square", "png": cv2.imencode(".png", photo)[1].tobytes()})
    rle = compressed_rle(square_mask())
    result = {
        "image": {"key": "square", "url": str(input_shard), "height": 60, "width": 80},
        "annotations": [{"segmentation": rle, "area": 400, "bbox": [20, 10, 20, 20]}],
    }
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    with wds.TarWriter(str(output_dir / "masks-r000-000000.tar")) as writer:
        writer.write({"__key__": "square", "json": result})
    out = tmp_path / "pictures"
    command = [console_command("amg-visualize"), str(output_dir)]
    subprocess.run([*command, "--out", str(out)], check=True, capture_output=True)
    assert sorted(p.name for p in out.iterdir()) == ["square.jpg"]
    with Image.open(out / "square.jpg") as picture:
        assert picture.format == "JPEG"
        pixels = np.asarray(picture.convert("RGB"), dtype=float)
    expected = draw_masks(cv2.cvtColor(photo, cv2.COLOR_BGR2RGB), [rle])
    assert np.abs(pixels - expected).mean() < 2  # JPEG at quality 90

    small = tmp_path / "small"
    visualize_main([str(output_dir), "--out", str(small), "--max-side", "40"])
    with Image.open(small / "square.jpg") as picture:
        assert picture.size == (40, 30)


@pytest.mark.parametrize("max_side", ["0", "-5", "x"])
def test_max_side_must_be_a_positive_whole_number(
    tmp_path: Path, max_side: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        visualize_main([str(tmp_path), "--out", str(tmp_path / "p"), "--max-side", max_side])
    assert stopped.value.code == 2
    assert f"--max-side: must be a whole number of at least 1, got {max_side!r}" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "p").exists()
