"""Pictures of predicted masks: each mask tinted in its own colour and outlined over its image.

amg-visualize RUN_DIR --out pictures/
amg-visualize masks.json --images photos/ --out pictures/ --labels --format png

Pictures are JPEG (quality 90) or PNG, at most --max-side pixels (1600) on their long side.
They are named after their keys made safe (results/names.py), `~2`, `~3`, ... for a key met
again, so nothing is written outside the --out folder and nothing is overwritten; for a run
folder, the names are those of amg-export's PNG folders.
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


# Hues a golden-ratio turn apart: however many masks, each new hue falls in the widest gap.
GOLDEN_RATIO_TURN = 0.6180339887498949
# High saturation and value keep every colour far from grey (and from the photo's own greys).
SATURATION, VALUE = 0.85, 0.95
FORMATS = {"jpg": [cv2.IMWRITE_JPEG_QUALITY, 90], "png": []}
MAX_SIDE = 1600


def mask_colours(count: int, seed: int = 0) -> np.ndarray:
    """`count` well-separated RGB colours as a (count, 3) uint8 array: golden-ratio hues from
    a first hue the seed picks, at high saturation and value; the same for the same seed."""
    if count == 0:
        return np.empty((0, 3), dtype=np.uint8)  # OpenCV converts no empty image
    first = np.random.default_rng(seed).random()
    hues = (first + GOLDEN_RATIO_TURN * np.arange(count)) % 1.0
    hsv = np.empty((1, count, 3), dtype=np.uint8)
    hsv[..., 0] = np.round(hues * 180) % 180  # OpenCV's 8-bit hue is 0..179
    hsv[..., 1] = round(SATURATION * 255)
    hsv[..., 2] = round(VALUE * 255)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


def mask_label(index: int, annotation: Mapping[str, Any]) -> str:
    """`#index score`: the mask's index in its record and its predicted IoU (a COCO json's
    `score`), or the index alone when it has neither."""
    score = annotation.get("predicted_iou", annotation.get("score"))
    return f"#{index}" if score is None else f"#{index} {score:.2f}"


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """A bool (h, w) mask from a COCO RLE, compressed (counts str) or uncompressed (list)."""
    height, width = rle["size"]
    if isinstance(rle["counts"], list):
        rle = mask_utils.frPyObjects(dict(rle), height, width)
    return mask_utils.decode(rle).astype(bool)


def draw_masks(
    image: np.ndarray,
    masks_rles: Sequence[Mapping[str, Any]],
    seed: int = 0,
    alpha: float = 0.5,
    labels: Sequence[str] | None = None,
    max_side: int | None = None,
) -> np.ndarray:
    """A copy of the RGB uint8 `image` with each mask tinted in its colour and outlined in it,
    label i (if given) written on mask i, shrunk first to at most `max_side` pixels.

    Mask i gets colour i of `mask_colours(len(masks_rles), seed)`.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 (h, w, 3), got {image.dtype} {image.shape}")
    masks = [decode_rle(rle) for rle in masks_rles]
    for mask in masks:
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask of size {mask.shape} does not fit image {image.shape[:2]}")
    image, masks = _shrunk(image, masks, max_side)
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
    for mask, label in zip(masks, labels or [], strict=False):
        _write_label(drawn, mask, label)
    return drawn


def _shrunk(
    image: np.ndarray, masks: list[np.ndarray], max_side: int | None
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The image (area-averaged) and masks (nearest pixel) at most `max_side` on the long side."""
    height, width = image.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return image, masks
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    shrunk = [
        cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        for m in masks
    ]
    return small, shrunk


def _write_label(drawn: np.ndarray, mask: np.ndarray, label: str) -> None:
    """White text with a black edge, centred on the mask's point farthest from its border
    (inside the mask even when it is not convex)."""
    if not mask.any():
        return
    inside = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(inside)), inside.shape)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.35, max(drawn.shape[:2]) / 1600)
    weight = max(1, round(scale * 2))
    (width, height), _ = cv2.getTextSize(label, font, scale, weight)
    origin = (int(col) - width // 2, int(row) + height // 2)
    cv2.putText(drawn, label, origin, font, scale, (0, 0, 0), weight + 2, cv2.LINE_AA)
    cv2.putText(drawn, label, origin, font, scale, (255, 255, 255), weight, cv2.LINE_AA)


# (file name without its extension, RGB image, annotations with their `segmentation`).
Picture = tuple[str, np.ndarray, list[dict[str, Any]]]


def _positive(text: str) -> int:
    """A whole number >= 1, for argparse (which names the option in its message)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="prediction output dir, or a COCO json")
    parser.add_argument("--images", type=Path, help="folder of the COCO json's file_names")
    parser.add_argument("--out", type=Path, required=True, help="folder for <safe key>.jpg")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mask colours")
    parser.add_argument(
        "--labels", action="store_true", help="write each mask's index and score on it"
    )
    parser.add_argument(
        "--format", choices=sorted(FORMATS), default="jpg", help="jpg (quality 90) or png"
    )
    parser.add_argument(
        "--max-side", type=_positive, default=MAX_SIDE, help="most pixels on a picture's long side"
    )
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
    return name, image, result["annotations"]


def pictures_from_coco(coco_json: Path, images_dir: Path) -> Iterator[Picture]:
    """Each image of a COCO json (`images`, `annotations`) with its annotations.

    A `file_name` that points outside `images_dir` is skipped: it is data, not a path to trust.
    """
    coco = json.loads(coco_json.read_text())
    names = UniqueNames()
    annotations_of = defaultdict(list)
    for annotation in coco["annotations"]:
        annotations_of[annotation["image_id"]].append(annotation)
    for image in coco["images"]:
        file_name = image["file_name"]
        name = names.name_for(os.path.splitext(file_name)[0])
        path = Path(os.path.normpath(images_dir / file_name))
        if not path.is_relative_to(os.path.normpath(images_dir)):
            print(f"skipped {file_name!r}: it is outside {images_dir}", file=sys.stderr)
            continue
        pixels = decode_image(path.read_bytes())
        yield name, pixels, annotations_of[image["id"]]


def write_pictures(
    pictures: Iterator[Picture],
    out_dir: Path,
    *,
    seed: int = 0,
    labels: bool = False,
    image_format: str = "jpg",
    max_side: int | None = MAX_SIDE,
) -> int:
    """Draw each picture's masks (with their labels if asked) and write it to `out_dir` as
    `<name>.jpg` or `.png`; returns how many were written."""
    count = 0
    for name, image, masks in pictures:
        texts = [mask_label(i, mask) for i, mask in enumerate(masks)] if labels else None
        rles = [mask["segmentation"] for mask in masks]
        drawn = draw_masks(image, rles, seed=seed, labels=texts, max_side=max_side)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{name}.{image_format}"
        cv2.imwrite(str(path), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR), FORMATS[image_format])
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
        count = write_pictures(
            pictures,
            args.out,
            seed=args.seed,
            labels=args.labels,
            image_format=args.format,
            max_side=args.max_side,
        )
    except DamagedTar as damage:
        sys.exit(f"error: {damage}")
    print(f"wrote {count} pictures to {args.out}")
