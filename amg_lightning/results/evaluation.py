"""Class-agnostic mask evaluation of predicted masks against COCO-style ground truth.

Every predicted mask is scored by its `predicted_iou` and every ground-truth instance counts,
whatever its category, so the numbers say how well the generator proposes objects.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from amg_lightning.results.run_folder import summary_path, update_summary
from amg_lightning.results.shards import iter_results

MAX_DETS = [10, 100, 1000]

# Positions in COCOeval.stats (segm, maxDets = MAX_DETS); AP and AR by size use maxDets 1000.
_STAT_INDEX = {
    "AP": 0,
    "AP50": 1,
    "AR@10": 6,
    "AR@100": 7,
    "AR@1000": 8,
    "AR_small": 9,
    "AR_medium": 10,
    "AR_large": 11,
}
METRIC_NAMES = tuple(_STAT_INDEX)


def _quietly() -> contextlib.AbstractContextManager:
    """pycocotools prints progress on every step; keep it out of our callers' output."""
    return contextlib.redirect_stdout(io.StringIO())


def _name_aliases(name: str) -> tuple[str, ...]:
    """Spellings an image name may be matched by, most specific first: as given, then without
    extension, without folders, without both."""
    path = PurePosixPath(name.replace("\\", "/"))
    return (name, str(path.with_suffix("")), path.name, path.stem)


def _gt_image_names(image: dict[str, Any]) -> set[str]:
    # LVIS v1 gives no file_name, only the COCO url of the photo.
    names = set()
    for field in ("file_name", "coco_url"):
        if image.get(field):
            names.update(_name_aliases(image[field]))
    return names


def _gt_index(gt: COCO) -> dict[str, int]:
    """Every alias of every ground-truth image name to its image id; ambiguous aliases left out."""
    owners: dict[str, set[int]] = {}
    for image_id, image in gt.imgs.items():
        for name in _gt_image_names(image):
            owners.setdefault(name, set()).add(image_id)
    return {name: ids.pop() for name, ids in owners.items() if len(ids) == 1}


def _match_image(image: dict[str, Any], index: dict[str, int]) -> int | None:
    """The ground-truth id of a predicted image, by its key first, then by the name in its url."""
    for value in (image.get("key"), image.get("url")):
        if not value:
            continue
        # amg-shards writes folders into keys as "__".
        for name in (*_name_aliases(value), *_name_aliases(value.replace("__", "/"))):
            if name in index:
                return index[name]
    return None


def _detections(
    predictions: Iterable[dict[str, Any]], gt: COCO
) -> tuple[list[dict[str, Any]], set[int], int]:
    """COCO detections for the matched images, the matched ids, and how many images matched none."""
    index = _gt_index(gt)
    # COCOeval pools categories (useCats = 0) but still drops detections of unknown categories.
    category_id = min(gt.getCatIds(), default=1)
    detections: list[dict[str, Any]] = []
    matched: set[int] = set()
    unmatched = 0
    for prediction in predictions:
        image_id = _match_image(prediction["image"], index)
        if image_id is None:
            unmatched += 1
            continue
        matched.add(image_id)
        _check_sizes(prediction, gt.imgs[image_id])
        for annotation in prediction["annotations"]:
            detection = _detection(annotation, image_id, category_id, len(detections) + 1)
            detections.append(detection)
    return detections, matched, unmatched


def _check_sizes(prediction: dict[str, Any], gt_image: dict[str, Any]) -> None:
    """Masks must have the ground truth's size: COCO compares them pixel by pixel."""
    size = [gt_image["height"], gt_image["width"]]
    for annotation in prediction["annotations"]:
        if list(annotation["segmentation"]["size"]) != size:
            raise ValueError(
                f"image {prediction['image'].get('key')!r}: mask size "
                f"{annotation['segmentation']['size']} differs from ground truth {size}"
            )


def _detection(
    annotation: dict[str, Any], image_id: int, category_id: int, detection_id: int
) -> dict[str, Any]:
    return {
        "id": detection_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": annotation["segmentation"],
        "area": annotation["area"],
        "bbox": annotation["bbox"],
        "score": float(annotation["predicted_iou"]),
        "iscrowd": 0,
    }


def _detections_coco(gt: COCO, detections: list[dict[str, Any]]) -> COCO:
    """A COCO object holding the detections (COCO.loadRes refuses an empty list)."""
    dt = COCO()
    dt.dataset = {
        "images": gt.dataset["images"],
        "categories": gt.dataset.get("categories", []),
        "annotations": detections,
    }
    with _quietly():
        dt.createIndex()
    return dt


def evaluate(predictions: Iterable[dict[str, Any]], gt_json: str | Path) -> dict[str, float]:
    """COCO segm metrics, class-agnostic, of per-image predictions against `gt_json`.

    Predicted images are matched to ground truth by key or file name (with or without folders
    and extension); those matching none are skipped and counted in `images_not_in_gt`. Ground-
    truth images without predictions count as misses. A metric is -1 where no ground-truth
    instance falls in its area range (COCO's convention).
    """
    with _quietly():
        gt = COCO(str(gt_json))
    detections, matched, unmatched = _detections(predictions, gt)
    evaluator = COCOeval(gt, _detections_coco(gt, detections), iouType="segm")
    evaluator.params.useCats = 0
    evaluator.params.maxDets = MAX_DETS
    with _quietly():
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    scores = {name: float(evaluator.stats[i]) for name, i in _STAT_INDEX.items()}
    scores["images_not_in_gt"] = unmatched
    scores["gt_images_without_predictions"] = len(gt.imgs) - len(matched)
    return scores


def evaluate_output_dir(output_dir: str | Path, gt_json: str | Path) -> dict[str, float]:
    """`evaluate` over the RLE shards a prediction run wrote to `output_dir`."""
    return evaluate(iter_results(output_dir), gt_json)


def add_scores_to_summary(output_dir: str | Path, scores: dict[str, float]) -> Path:
    """Store `scores` under "eval" in the run's summary.json, where sweep reports look."""
    update_summary(output_dir, eval=scores)
    return summary_path(output_dir)


def main(argv: list[str] | None = None) -> None:
    """`amg-evaluate RUN_DIR GT_JSON [--update-summary]`."""
    parser = argparse.ArgumentParser(
        description="Score a prediction run's masks against COCO-style ground truth, "
        "class-agnostic."
    )
    parser.add_argument("output_dir", help="a prediction run's output_dir (RLE shards)")
    parser.add_argument("gt_json", help="COCO instances json (polygon or RLE segmentations)")
    parser.add_argument(
        "--update-summary",
        action="store_true",
        help='store the scores under "eval" in OUTPUT_DIR/summary.json, for sweep reports',
    )
    args = parser.parse_args(argv)
    scores = evaluate_output_dir(args.output_dir, args.gt_json)
    print(json.dumps(scores, indent=2))
    if args.update_summary:
        print(f"scores stored in {add_scores_to_summary(args.output_dir, scores)}")
