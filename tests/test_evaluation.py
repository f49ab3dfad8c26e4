"""Class-agnostic COCO evaluation: perfect predictions, known partial scores, name matching."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import webdataset as wds
from pycocotools import mask as mask_utils

from amg_lightning.data.synthetic import coco_annotation, write_dataset
from amg_lightning.results.evaluation import (
    METRIC_NAMES,
    add_scores_to_summary,
    evaluate,
    evaluate_output_dir,
)
from amg_lightning.results.run_folder import shard_name
from tests.helpers.predict import console_command

REPO = Path(__file__).resolve().parents[1]

# COCOeval interpolates precision at 101 recall points; recall 0.5 reaches 51 of them.
POINTS_UP_TO_HALF = 51 / 101


def _annotation(segmentation: dict[str, Any], score: float) -> dict[str, Any]:
    """A predicted mask as the prediction run writes it."""
    rle = {"size": segmentation["size"], "counts": segmentation["counts"]}
    return {
        "segmentation": rle,
        "area": int(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "predicted_iou": score,
        "point_coords": [[0.0, 0.0]],
        "stability_score": 1.0,
        "crop_box": [0, 0, segmentation["size"][1], segmentation["size"][0]],
    }


def _prediction(key: str, size: tuple[int, int], annotations: list[dict]) -> dict[str, Any]:
    image = {"key": key, "url": "shards/images-000000.tar", "height": size[0], "width": size[1]}
    return {"image": image, "annotations": annotations}


def _predictions_from_gt(gt: dict[str, Any]) -> list[dict[str, Any]]:
    """One prediction per ground-truth mask, keyed by file stem, all with score 0.9."""
    predictions = []
    for image in gt["images"]:
        own = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
        annotations = [_annotation(a["segmentation"], 0.9) for a in own]
        key = Path(image["file_name"]).stem
        predictions.append(_prediction(key, (image["height"], image["width"]), annotations))
    return predictions


def _mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = box
    mask = np.zeros(size, dtype=bool)
    mask[y : y + h, x : x + w] = True
    return mask


def _write_gt(path: Path, file_names: list[str], masks: list[list[np.ndarray]]) -> Path:
    """A COCO instances json with one image per file name holding the given masks."""
    gt: dict[str, list] = {"images": [], "annotations": [], "categories": [{"id": 1}]}
    for image_id, (name, image_masks) in enumerate(zip(file_names, masks, strict=True), 1):
        height, width = image_masks[0].shape
        gt["images"].append({"id": image_id, "file_name": name, "height": height, "width": width})
        for mask in image_masks:
            gt["annotations"].append(coco_annotation(mask, len(gt["annotations"]) + 1, image_id))
    path.write_text(json.dumps(gt))
    return path


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


SIZE = (120, 160)
OBJECT_A = _mask(SIZE, (10, 10, 40, 30))
OBJECT_B = _mask(SIZE, (80, 50, 50, 60))
NOWHERE = _mask(SIZE, (0, 100, 20, 20))


def test_predicting_the_ground_truth_scores_one(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path, count=6, seed=3)
    gt = json.loads(dataset.annotations.read_text())

    scores = evaluate(_predictions_from_gt(gt), dataset.annotations)

    for name in ("AR@10", "AR@100", "AR@1000", "AP", "AP50"):
        assert scores[name] == pytest.approx(1.0), name
    by_size = [scores[name] for name in ("AR_small", "AR_medium", "AR_large")]
    assert all(value in (1.0, -1.0) for value in by_size)
    assert 1.0 in by_size
    assert scores["images_not_in_gt"] == 0
    assert scores["gt_images_without_predictions"] == 0


@pytest.mark.parametrize(
    ("false_positive_score", "expected_ap"),
    [
        (0.5, POINTS_UP_TO_HALF),  # ranked after the hit: precision 1 up to recall 0.5
        (0.95, 0.5 * POINTS_UP_TO_HALF),  # ranked first: precision 0.5 at recall 0.5
    ],
)
def test_one_of_two_objects_found(
    tmp_path: Path, false_positive_score: float, expected_ap: float
) -> None:
    gt_json = _write_gt(tmp_path / "gt.json", ["scene.png"], [[OBJECT_A, OBJECT_B]])
    found = _annotation(_rle(OBJECT_A), 0.9)
    wrong = _annotation(_rle(NOWHERE), false_positive_score)

    scores = evaluate([_prediction("scene", SIZE, [found, wrong])], gt_json)

    for name in ("AR@10", "AR@100", "AR@1000"):
        assert scores[name] == pytest.approx(0.5), name
    assert scores["AP"] == pytest.approx(expected_ap)
    assert scores["AP50"] == pytest.approx(expected_ap)
    assert set(METRIC_NAMES) <= set(scores)


def test_polygon_ground_truth_of_any_category(tmp_path: Path) -> None:
    polygon = [[10.0, 10.0, 90.0, 15.0, 60.0, 80.0, 12.0, 60.0]]
    box = coco_annotation(OBJECT_B, 2, image_id=7) | {"category_id": 3}
    as_polygon = {"id": 1, "image_id": 7, "category_id": 5, "segmentation": polygon}
    as_polygon |= {"area": 3849.0, "bbox": [10.0, 10.0, 80.0, 70.0], "iscrowd": 0}
    gt = {
        "images": [{"id": 7, "file_name": "poly.jpg", "height": SIZE[0], "width": SIZE[1]}],
        "annotations": [as_polygon, box],
        "categories": [{"id": 3, "name": "box"}, {"id": 5, "name": "shape"}],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    rasterised = mask_utils.merge(mask_utils.frPyObjects(polygon, *SIZE))
    rasterised["counts"] = rasterised["counts"].decode("ascii")
    found = [_annotation(rasterised, 0.8), _annotation(_rle(OBJECT_B), 0.7)]

    scores = evaluate([_prediction("poly", SIZE, found)], tmp_path / "gt.json")

    assert scores["AR@100"] == pytest.approx(1.0)
    assert scores["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("gt_name", "key"),
    [
        ("scene.png", "scene"),
        ("val2017/scene.jpg", "scene"),
        ("val2017/scene.jpg", "val2017/scene"),
        ("scene", "photos/scene"),
        ("val2017/scene.jpg", "coco__val2017__scene"),
    ],
)
def test_images_match_by_name_without_folders_or_extension(
    tmp_path: Path, gt_name: str, key: str
) -> None:
    gt_json = _write_gt(tmp_path / "gt.json", [gt_name], [[OBJECT_A]])

    scores = evaluate([_prediction(key, SIZE, [_annotation(_rle(OBJECT_A), 0.9)])], gt_json)

    assert scores["AR@100"] == pytest.approx(1.0)


def test_unmatched_images_are_counted_and_missing_ones_are_misses(tmp_path: Path) -> None:
    gt_json = _write_gt(
        tmp_path / "gt.json", ["a.png", "b.png"], [[OBJECT_A], [OBJECT_A, OBJECT_B]]
    )
    predictions = [
        _prediction("a", SIZE, [_annotation(_rle(OBJECT_A), 0.9)]),
        _prediction("stranger", SIZE, [_annotation(_rle(OBJECT_B), 0.9)]),
    ]

    scores = evaluate(predictions, gt_json)

    assert scores["images_not_in_gt"] == 1
    assert scores["gt_images_without_predictions"] == 1
    assert scores["AR@100"] == pytest.approx(1 / 3)  # one of three instances found


def test_no_matching_predictions_scores_zero(tmp_path: Path) -> None:
    gt_json = _write_gt(tmp_path / "gt.json", ["a.png"], [[OBJECT_A]])

    scores = evaluate([_prediction("stranger", SIZE, [])], gt_json)

    assert scores["AR@100"] == 0.0
    assert scores["AP"] == 0.0


def test_mask_size_differing_from_ground_truth_is_an_error(tmp_path: Path) -> None:
    gt_json = _write_gt(tmp_path / "gt.json", ["a.png"], [[OBJECT_A]])
    shrunk = _annotation(_rle(OBJECT_A[::2, ::2]), 0.9)

    with pytest.raises(ValueError, match="differs from ground truth"):
        evaluate([_prediction("a", SIZE, [shrunk])], gt_json)


def test_evaluation_prints_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gt_json = _write_gt(tmp_path / "gt.json", ["a.png"], [[OBJECT_A]])

    evaluate([_prediction("a", SIZE, [_annotation(_rle(OBJECT_A), 0.9)])], gt_json)

    assert capsys.readouterr().out == ""


def test_scores_stored_in_summary(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text(json.dumps({"images": 2, "masks": 5}))

    add_scores_to_summary(tmp_path, {"AR@100": 0.25})

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == {"images": 2, "masks": 5, "eval": {"AR@100": 0.25}}


def _write_output_dir(output_dir: Path, predictions: list[dict[str, Any]]) -> None:
    """A prediction run's output: one RLE shard and a summary, as the shard writer leaves them."""
    output_dir.mkdir()
    with wds.TarWriter(str(output_dir / shard_name(0, 0))) as shard:
        for prediction in predictions:
            shard.write({"__key__": prediction["image"]["key"], "json": prediction})
    summary = {"images": len(predictions), "masks": 0, "errors": 0, "config": {}}
    (output_dir / "summary.json").write_text(json.dumps(summary))


def test_output_dir_evaluated_from_its_shards(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "synthetic", count=3, seed=5)
    predictions = _predictions_from_gt(json.loads(dataset.annotations.read_text()))
    _write_output_dir(tmp_path / "run", predictions[:2])

    scores = evaluate_output_dir(tmp_path / "run", dataset.annotations)

    assert scores["gt_images_without_predictions"] == 1
    assert 0.0 < scores["AR@100"] < 1.0


def test_script_stores_scores_in_the_summary(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "synthetic", count=2, seed=5)
    predictions = _predictions_from_gt(json.loads(dataset.annotations.read_text()))
    _write_output_dir(tmp_path / "run", predictions)

    subprocess.run(
        [
            console_command("amg-evaluate"),
            str(tmp_path / "run"),
            str(dataset.annotations),
            "--update-summary",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["eval"]["AR@100"] == pytest.approx(1.0)
    assert summary["images"] == 2
