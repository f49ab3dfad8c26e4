"""Pictures of predicted masks: each mask tinted with a seeded colour and outlined over its image.

amg-visualize RUN_DIR --out pictures/
amg-visualize masks.json --images photos/ --out pictures/

Pictures are named after their keys made safe (results/names.py), `~2`, `~3`, ... for a
key met again, so nothing is written outside the --out folder and nothing is overwritten;
for a run folder, the names are those of amg-export's PNG folders.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from amg_lightning.data.decode import decode_image
from amg_lightning.data.samples import ShardSample, decode_sample
from amg_lightning.data.tar_reader import DamagedTar
from amg_lightning.results.inputs import results_with_samples
from amg_lightning.results.names import UniqueNames
from amg_lightning.results.shards import iter_results

USAGE = __doc__


def mask_colours(count: int, seed: int = 0) -> np.ndarray:
    """`count` random RGB colours as a (count, 3) uint8 array; the same for the same seed."""
    return np.random.default_rng(seed).integers(0, 256, size=(count, 3), dtype=np.uint8)


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """A bool (h, w) mask from a COCO RLE, compressed (counts str) or uncompressed (list)."""
    height, width = rle["size"]
    if isinstance(rle["counts"], list):
        rle = mask_utils.frPyObjects(dict(rle), height, width)
    return mask_utils.decode(rle).astype(bool)


def draw_masks(
    image: np.ndarray, masks_rles: Sequence[Mapping[str, Any]], seed: int = 0, alpha: float = 0.5
) -> np.ndarray:
    """A copy of the RGB uint8 `image` with each mask tinted in its colour and outlined in it.

    Mask i gets colour i of `mask_colours(len(masks_rles), seed)`.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 (h, w, 3), got {image.dtype} {image.shape}")
    masks = [decode_rle(rle) for rle in masks_rles]
    for mask in masks:
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask of size {mask.shape} does not fit image {image.shape[:2]}")
    colours = mask_colours(len(masks), seed)
    # Largest first, so small masks stay visible on top of the large ones they lie in.
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    canvas = image.astype(np.float32)
    for i in order:
        canvas[masks[i]] = (1 - alpha) * canvas[masks[i]] + alpha * colours[i]
    drawn = canvas.round().astype(np.uint8)
    # One pixel vanishes when a large photo is shown shrunk; thicken with the image size.
    thickness = max(1, max(image.shape[:2]) // 500)
    # Outlines last, at full strength, so no later tint washes them out.
    for i in order:
        contours, _ = cv2.findContours(
            masks[i].astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE
        )
        cv2.drawContours(drawn, contours, -1, colours[i].tolist(), thickness=thickness)
    return drawn


# (file name without `.png`, RGB image, mask RLEs) for one picture.
Picture = tuple[str, np.ndarray, list[dict[str, Any]]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="prediction output dir, or a COCO json")
    parser.add_argument("--images", type=Path, help="folder of the COCO json's file_names")
    parser.add_argument("--out", type=Path, required=True, help="folder for <safe key>.png")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mask colours")
    return parser.parse_args(argv)


def pictures_from_results(output_dir: Path) -> Iterator[Picture]:
    """Each result with its own image, the sample of its key in the input shard its
    `image.url` names (results/inputs.py); named as amg-export names its folders."""
    for name, result, sample in results_with_samples(iter_results(output_dir)):
        if sample is None:
            image = result["image"]
            print(f"skipped {image['key']!r}: not found in {image['url']}", file=sys.stderr)
            continue
        picture = _picture(sample, name, result)
        if picture is not None:
            yield picture


def _picture(sample: ShardSample, name: str, result: dict[str, Any]) -> Picture | None:
    """The sample's image with its result's masks, or None (and why) if they do not fit."""
    record = decode_sample(sample)
    if record["error"] is not None:
        print(f"skipped {sample.key!r}: {record['error']}", file=sys.stderr)
        return None
    image = record["image"].numpy()
    segmented = (result["image"]["height"], result["image"]["width"])
    if image.shape[:2] != segmented:
        print(
            f"skipped {sample.key!r}: its image in {sample.url} is {image.shape[:2]}, "
            f"not the {segmented} it was segmented at",
            file=sys.stderr,
        )
        return None
    return name, image, [a["segmentation"] for a in result["annotations"]]


def pictures_from_coco(coco_json: Path, images_dir: Path) -> Iterator[Picture]:
    """Each image of a COCO json (`images`, `annotations`) with its RLE segmentations.

    A `file_name` that points outside `images_dir` is skipped: it is data, not a path to trust.
    """
    coco = json.loads(coco_json.read_text())
    names = UniqueNames()
    segmentations = defaultdict(list)
    for annotation in coco["annotations"]:
        segmentations[annotation["image_id"]].append(annotation["segmentation"])
    for image in coco["images"]:
        file_name = image["file_name"]
        name = names.name_for(os.path.splitext(file_name)[0])
        path = Path(os.path.normpath(images_dir / file_name))
        if not path.is_relative_to(os.path.normpath(images_dir)):
            print(f"skipped {file_name!r}: it is outside {images_dir}", file=sys.stderr)
            continue
        pixels = decode_image(path.read_bytes())
        yield name, pixels, segmentations[image["id"]]


def write_pictures(pictures: Iterator[Picture], out_dir: Path, seed: int) -> int:
    """Draw each picture's masks and write it to `out_dir` as `<name>.png`; returns how many
    were written."""
    count = 0
    for name, image, rles in pictures:
        drawn = draw_masks(image, rles, seed=seed)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{name}.png"
        cv2.imwrite(str(path), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        count += 1
    return count


def main(argv: list[str] | None = None) -> None:
    """`amg-visualize`."""
    args = parse_args(argv)
    if args.source.suffix == ".json":
        if args.images is None:
            sys.exit("a COCO json needs --images, the folder its file_names are in")
        pictures = pictures_from_coco(args.source, args.images)
    else:
        pictures = pictures_from_results(args.source)
    try:
        count = write_pictures(pictures, args.out, args.seed)
    except DamagedTar as damage:
        sys.exit(f"error: {damage}")
    print(f"wrote {count} pictures to {args.out}")
