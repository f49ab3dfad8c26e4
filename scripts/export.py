"""Export the RLE shards of a prediction run as COCO results json and/or amg.py PNG folders."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from amg_lightning.results import coco_results, iter_results, shard_paths, write_mask_folders


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output_dir", type=Path, help="the run's output folder of masks-*.tar")
    parser.add_argument("--coco", type=Path, help="write COCO results json here")
    parser.add_argument("--png", type=Path, help="write a folder of masks per image here")
    args = parser.parse_args(argv)
    if args.coco is None and args.png is None:
        parser.error("give --coco, --png or both")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shards = shard_paths(args.output_dir)
    if not shards:
        sys.exit(f"no complete masks-*.tar shards in {args.output_dir}")
    if args.coco is not None:
        coco = coco_results(iter_results(shards))
        args.coco.parent.mkdir(parents=True, exist_ok=True)
        args.coco.write_text(json.dumps(coco))
        print(
            f"wrote {len(coco['images'])} images, {len(coco['annotations'])} masks to {args.coco}"
        )
    if args.png is not None:
        images = write_mask_folders(iter_results(shards), args.png)
        print(f"wrote mask folders for {images} images to {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
