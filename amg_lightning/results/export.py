"""Export a run's RLE shards as COCO jsons, amg.py's PNG mask folders, SA-1B jsons.

amg-export RUN_DIR --coco masks.json --coco-results results.json --png masks/ --sa1b sa1b/
amg-export RUN_DIR --coco masks.json --images images/

Each image's PNG folder and SA-1B json is named by `UniqueNames` (results/names.py): the
key made safe, and `~2`, `~3`, ... for the same key met again (from another input shard),
in the order of the run's shards. COCO images keep the image member's name (`key.ext`) as
`file_name` and the input shard as `url`; with --images, the images are copied out of their
input shards into that folder, named as the PNG folders plus their extension, and
`file_name` is that name.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from amg_lightning.data.samples import ShardSample
from amg_lightning.data.tar_reader import DamagedTar
from amg_lightning.results.inputs import image_file, image_size, results_with_samples
from amg_lightning.results.names import UniqueNames
from amg_lightning.results.run_folder import shard_paths
from amg_lightning.results.shards import iter_results

METADATA_HEADER = (
    "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,"
    "predicted_iou,stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"
)
COCO_CATEGORY = {"id": 1, "name": "object"}
SA1B_IMAGE_FIELDS = ("image_id", "width", "height", "file_name")
SA1B_ANNOTATION_FIELDS = (
    "id",
    "segmentation",
    "bbox",
    "area",
    "predicted_iou",
    "stability_score",
    "crop_box",
    "point_coords",
)


class RecordWithoutIdsError(ValueError):
    """A shard record without image_id, file_name and annotation ids."""


def _image_id(image: dict[str, Any]) -> int:
    """The record's image_id; RecordWithoutIdsError for shards written before records had ids."""
    if "image_id" not in image:
        raise RecordWithoutIdsError(f"the record of {image['key']!r} has no image_id")
    return image["image_id"]


def coco_results(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A COCO dataset dict: images by member name, one annotation per mask, scored by predicted IoU.

    Image and annotation ids are the run's own (as in the shards and the SA-1B export), so an
    exported mask can be traced back to its record. Raises RecordWithoutIdsError for shards
    written before records had ids.
    """
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for result in results:
        image = result["image"]
        image_id = _image_id(image)
        images.append(
            {
                "id": image_id,
                "file_name": image["file_name"],
                "url": image["url"],
                "height": image["height"],
                "width": image["width"],
            }
        )
        annotations.extend(_coco_annotation(record, image_id) for record in result["annotations"])
    return {"images": images, "annotations": annotations, "categories": [COCO_CATEGORY]}


def coco_result_list(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """COCO's results format (a list of annotations with scores), what `COCO.loadRes` reads."""
    return coco_results(results)["annotations"]


def _coco_annotation(record: dict[str, Any], image_id: int) -> dict[str, Any]:
    return {
        "id": record["id"],
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
    """Segment Anything's amg.py layout: per image, `{i}.png` masks and `metadata.csv` in a
    folder named safely after its key (never outside `output_dir`).

    Returns how many images were written.
    """
    names = UniqueNames()
    written = 0
    for result in results:
        folder = Path(output_dir) / names.name_for(result["image"]["key"])
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


def sa1b_record(result: dict[str, Any]) -> dict[str, Any]:
    """One image's SA-1B json: `{"image": {...}, "annotations": [...]}` with SA-1B's fields.

    Raises RecordWithoutIdsError for shards written before records had ids.
    """
    image = result["image"]
    _image_id(image)
    return {
        "image": {name: image[name] for name in SA1B_IMAGE_FIELDS},
        "annotations": [
            {name: record[name] for name in SA1B_ANNOTATION_FIELDS}
            for record in result["annotations"]
        ],
    }


def write_sa1b(results: Iterable[dict[str, Any]], output_dir: str | Path) -> int:
    """One SA-1B json per image, named safely after its key (never outside `output_dir`);
    returns how many were written."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    names = UniqueNames()
    written = 0
    for result in results:
        name = names.name_for(result["image"]["key"]) + ".json"
        (output_dir / name).write_text(json.dumps(sa1b_record(result)))
        written += 1
    return written


def extract_images(
    results: Iterable[dict[str, Any]], images_dir: Path
) -> tuple[list[dict[str, Any]], list[str]]:
    """Write each result's input image into `images_dir` (see inputs.image_file), named
    safely; returns the results, `file_name` set to the written file's name, and a line for
    each image that could not be written (those keep their member name as `file_name`).
    """
    images_dir.mkdir(parents=True, exist_ok=True)
    extracted, problems = [], []
    for name, result, sample in results_with_samples(results):
        try:
            data, extension = _image_to_copy(result, sample)
        except ValueError as problem:
            problems.append(str(problem))
        else:
            file_name = f"{name}.{extension}"
            (images_dir / file_name).write_bytes(data)
            result = {**result, "image": {**result["image"], "file_name": file_name}}
        extracted.append(result)
    return extracted, problems


def _image_to_copy(result: dict[str, Any], sample: ShardSample | None) -> tuple[bytes, str]:
    """The image file of a result's sample and its extension; ValueError saying why not."""
    image = result["image"]
    where = f"{image['key']!r} in {image['url']}"
    if sample is None:
        raise ValueError(f"{where}: not found")
    try:
        data, extension = image_file(sample)
        height, width = image_size(data)
    except (OSError, ValueError) as error:
        raise ValueError(f"{where}: its image does not open: {error}") from None
    if (height, width) != (image["height"], image["width"]):
        raise ValueError(
            f"{where}: its image is {height}x{width}, not the "
            f"{image['height']}x{image['width']} it was segmented at"
        )
    return data, extension


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, help="the run's output folder of masks-*.tar")
    parser.add_argument(
        "--coco", type=Path, help="write a COCO dataset json (images, annotations) here"
    )
    parser.add_argument(
        "--coco-results",
        type=Path,
        help="write a COCO results json (a list of scored annotations, for COCO.loadRes) here",
    )
    parser.add_argument(
        "--images",
        type=Path,
        help="with --coco: copy the input images here; file_name is the copied file's name",
    )
    parser.add_argument("--png", type=Path, help="write a folder of masks per image here")
    parser.add_argument("--sa1b", type=Path, help="write one SA-1B json per image here")
    args = parser.parse_args(argv)
    if all(v is None for v in (args.coco, args.coco_results, args.png, args.sa1b)):
        parser.error("give one or more of --coco, --coco-results, --png, --sa1b")
    if args.images is not None and args.coco is None:
        parser.error("--images goes with --coco, whose file_names name the copied images")
    return args


def _export(shards: list[Path], args: argparse.Namespace) -> list[str]:
    """Write what was asked for; returns a line for each image --images could not copy.

    Raises DamagedTar, naming the shard, if one is damaged.
    """
    coco_path, png_dir, sa1b_dir = args.coco, args.png, args.sa1b
    problems: list[str] = []
    if coco_path is not None:
        results: Iterable[dict[str, Any]] = iter_results(shards)
        if args.images is not None:
            results, problems = extract_images(results, args.images)
        coco = coco_results(results)
        coco_path.parent.mkdir(parents=True, exist_ok=True)
        coco_path.write_text(json.dumps(coco))
        counts = f"{len(coco['images'])} images, {len(coco['annotations'])} masks"
        print(f"wrote {counts} to {coco_path}")
        if args.images is not None:
            copied = len(coco["images"]) - len(problems)
            print(f"copied {copied} images to {args.images}")
    if args.coco_results is not None:
        scored = coco_result_list(iter_results(shards))
        args.coco_results.parent.mkdir(parents=True, exist_ok=True)
        args.coco_results.write_text(json.dumps(scored))
        print(f"wrote {len(scored)} scored masks to {args.coco_results}")
    if png_dir is not None:
        images = write_mask_folders(iter_results(shards), png_dir)
        print(f"wrote mask folders for {images} images to {png_dir}")
    if sa1b_dir is not None:
        images = write_sa1b(iter_results(shards), sa1b_dir)
        print(f"wrote SA-1B jsons for {images} images to {sa1b_dir}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """`amg-export`."""
    args = parse_args(argv)
    shards = shard_paths(args.output_dir)
    if not shards:
        sys.exit(f"no complete masks-*.tar shards in {args.output_dir}")
    try:
        problems = _export(shards, args)
    except DamagedTar as damage:
        sys.exit(f"error: {damage}")
    except RecordWithoutIdsError as err:
        sys.exit(f"error: {err}: its shards were written by an older version; predict them again")
    for problem in problems:
        print(f"not copied: {problem}", file=sys.stderr)
    if problems:
        sys.exit(
            f"error: {len(problems)} images not copied to {args.images} (listed above); "
            f"{args.coco} names them by their member names"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
