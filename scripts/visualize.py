"""Pictures of predicted masks: one PNG per image, each mask tinted and outlined over the photo.

python scripts/visualize.py demo/out --out demo/pictures
python scripts/visualize.py masks.json --images photos/ --out pictures/
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from amg_lightning.data.datamodule import decode_sample, read_shard
from amg_lightning.data.decode import decode_image
from amg_lightning.results import iter_results
from amg_lightning.visualize import draw_masks

# (key, RGB image, mask RLEs) for one picture.
Picture = tuple[str, np.ndarray, list[dict[str, Any]]]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="prediction output dir, or a COCO json")
    parser.add_argument("--images", type=Path, help="folder of the COCO json's file_names")
    parser.add_argument("--out", type=Path, required=True, help="folder for <key>.png")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mask colours")
    return parser.parse_args()


def pictures_from_results(output_dir: Path) -> Iterator[Picture]:
    """Each result with its image, read back from the input shard its `image.url` names."""
    by_shard = itertools.groupby(iter_results(output_dir), key=lambda r: r["image"]["url"])
    for url, results in by_shard:
        wanted = {result["image"]["key"]: result for result in results}
        for sample in read_shard(url):
            result = wanted.pop(sample["__key__"], None)
            if result is None:
                continue
            record = decode_sample(sample)
            if record["error"] is not None:
                print(f"skipped {record['key']}: {record['error']}", file=sys.stderr)
                continue
            segmentations = [a["segmentation"] for a in result["annotations"]]
            yield record["key"], record["image"].numpy(), segmentations
        for key in wanted:
            print(f"skipped {key}: not found in {url}", file=sys.stderr)


def pictures_from_coco(coco_json: Path, images_dir: Path) -> Iterator[Picture]:
    """Each image of a COCO json (`images`, `annotations`) with its RLE segmentations."""
    coco = json.loads(coco_json.read_text())
    segmentations = defaultdict(list)
    for annotation in coco["annotations"]:
        segmentations[annotation["image_id"]].append(annotation["segmentation"])
    for image in coco["images"]:
        pixels = decode_image((images_dir / image["file_name"]).read_bytes())
        yield Path(image["file_name"]).stem, pixels, segmentations[image["id"]]


def write_pictures(pictures: Iterator[Picture], out_dir: Path, seed: int) -> int:
    """Draw each picture's masks and write `<key>.png`; returns how many were written."""
    count = 0
    for key, image, rles in pictures:
        path = out_dir / f"{key}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        drawn = draw_masks(image, rles, seed=seed)
        cv2.imwrite(str(path), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        count += 1
    return count


def main() -> None:
    args = parse_args()
    if args.source.suffix == ".json":
        if args.images is None:
            sys.exit("a COCO json needs --images, the folder its file_names are in")
        pictures = pictures_from_coco(args.source, args.images)
    else:
        pictures = pictures_from_results(args.source)
    count = write_pictures(pictures, args.out, args.seed)
    print(f"wrote {count} pictures to {args.out}")


if __name__ == "__main__":
    main()
