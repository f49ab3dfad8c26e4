"""Write a synthetic dataset with exact instance masks: images, WebDataset shards, COCO json."""

from __future__ import annotations

import argparse

from amg_lightning.synthetic import IMAGE_FORMATS, SceneSpec, write_dataset

EPILOG = """\
output layout:
  OUT_DIR/images/synthetic_000000.png   loose images (--image-format)
  OUT_DIR/shards/images-000000.tar      WebDataset shards, samples {"__key__", "png"}
  OUT_DIR/annotations.json              COCO instances, file_name = key + ".png"

measure a run against it:
  python predict.py data.urls=OUT_DIR/shards eval.gt=OUT_DIR/annotations.json
  or afterwards: python scripts/evaluate.py RUN_OUTPUT_DIR OUT_DIR/annotations.json

real ground truth instead (COCO val2017 or LVIS v1 val):
  python scripts/make_shards.py coco/val2017 --output shards/val2017
  python predict.py data.urls=shards/val2017 eval.gt=coco/annotations/instances_val2017.json
  LVIS v1 val draws on train2017 and val2017 photos: pack both (make_shards.py coco ...) and
  pass eval.gt=lvis_v1_val.json. Images are matched by key or file name, folders and
  extension ignored (LVIS v1 has no file_name; its coco_url is used). Evaluation is class-
  agnostic: every instance counts, crowd regions are ignored, and ground-truth images left
  unpredicted count as misses. LVIS is not exhaustively labelled, so its AP reads low.
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out_dir", help="folder to write into (created)")
    parser.add_argument("--count", type=int, default=100, help="number of scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--min-shapes", type=int, default=3)
    parser.add_argument("--max-shapes", type=int, default=8)
    parser.add_argument("--per-shard", type=int, default=100, help="samples per shard")
    parser.add_argument("--image-format", choices=IMAGE_FORMATS, default="png")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    spec = SceneSpec(args.height, args.width, args.min_shapes, args.max_shapes)
    dataset = write_dataset(
        args.out_dir, args.count, args.seed, spec, args.per_shard, args.image_format
    )
    print(f"{args.count} scenes: {dataset.images_dir}, {len(dataset.shards)} shards,")
    print(f"ground truth {dataset.annotations}")


if __name__ == "__main__":
    main()
