"""The RLE shards a run writes: their names, reading them back, and exporting them.

Each shard sample is `{"image": {"key", "url", "height", "width"}, "annotations": [...]}`
with annotations in COCO-RLE form, as `RleShardWriter` writes them.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from webdataset.tariterators import base_plus_ext, tar_file_iterator

_SHARD_NAME = re.compile(r"masks-r(\d{3,})-(\d{6,})\.tar")

METADATA_HEADER = (
    "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,"
    "predicted_iou,stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"
)
COCO_CATEGORY = {"id": 1, "name": "object"}


def shard_prefix(rank: int) -> str:
    """The start of every shard name of one rank."""
    return f"masks-r{rank:03d}-"


def shard_name(rank: int, number: int) -> str:
    """The file name of a rank's numbered shard."""
    return f"{shard_prefix(rank)}{number:06d}.tar"


def shard_rank_and_number(path: Path) -> tuple[int, int]:
    """The rank and number in a shard's file name."""
    match = _SHARD_NAME.fullmatch(path.name)
    if match is None:
        raise ValueError(f"not a mask shard name: {path.name}")
    return int(match[1]), int(match[2])


def shard_paths(output_dir: str | Path) -> list[Path]:
    """Complete shards in `output_dir` (not `*.tar.tmp`), sorted by name."""
    return sorted(p for p in Path(output_dir).glob("masks-r*.tar") if _SHARD_NAME.fullmatch(p.name))


def shard_keys(path: Path) -> list[str]:
    """The sample keys in one shard, from member names only (no data is parsed)."""
    with tarfile.open(path) as shard:
        return [base_plus_ext(name)[0] for name in shard.getnames()]


def iter_results(paths_or_dir: str | Path | Iterable[str | Path]) -> Iterator[dict[str, Any]]:
    """Each sample's json dict from an output directory, one shard, or a list of shards."""
    for path in _result_shards(paths_or_dir):
        with open(path, "rb") as stream:
            for member in tar_file_iterator(stream):
                if member["fname"].endswith(".json"):
                    yield json.loads(member["data"])


def _result_shards(paths_or_dir: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(paths_or_dir, (str, Path)):
        path = Path(paths_or_dir)
        return shard_paths(path) if path.is_dir() else [path]
    return [Path(path) for path in paths_or_dir]


def coco_results(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A COCO results dict: images by key, one annotation per mask, scored by predicted IoU."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, result in enumerate(results, start=1):
        image = result["image"]
        images.append(
            {
                "id": image_id,
                "file_name": image["key"],
                "height": image["height"],
                "width": image["width"],
            }
        )
        for record in result["annotations"]:
            annotations.append(_coco_annotation(record, len(annotations) + 1, image_id))
    return {"images": images, "annotations": annotations, "categories": [COCO_CATEGORY]}


def _coco_annotation(record: dict[str, Any], annotation_id: int, image_id: int) -> dict[str, Any]:
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": COCO_CATEGORY["id"],
        "segmentation": record["segmentation"],
        "area": record["area"],
        "bbox": record["bbox"],
        "score": record["predicted_iou"],
        "predicted_iou": record["predicted_iou"],
        "stability_score": record["stability_score"],
        "point_coords": record["point_coords"],
        "crop_box": record["crop_box"],
    }


def write_mask_folders(results: Iterable[dict[str, Any]], output_dir: str | Path) -> int:
    """Segment Anything's amg.py layout: per image key, `{i}.png` masks and `metadata.csv`.

    Returns how many images were written.
    """
    written = 0
    for result in results:
        folder = Path(output_dir) / result["image"]["key"]
        folder.mkdir(parents=True, exist_ok=True)
        rows = [METADATA_HEADER]
        for index, record in enumerate(result["annotations"]):
            mask = mask_utils.decode(record["segmentation"]).astype(np.uint8) * 255
            Image.fromarray(mask).save(folder / f"{index}.png")
            rows.append(_metadata_row(index, record))
        # amg.py joins rows without a trailing newline; match it byte for byte.
        (folder / "metadata.csv").write_text("\n".join(rows))
        written += 1
    return written


def _metadata_row(index: int, record: dict[str, Any]) -> str:
    values = [
        index,
        record["area"],
        *record["bbox"],
        *record["point_coords"][0],
        record["predicted_iou"],
        record["stability_score"],
        *record["crop_box"],
    ]
    return ",".join(str(value) for value in values)
