"""Write a few of scikit-image's bundled sample photographs as WebDataset shards of JPEGs.

Samples are {"__key__": name, "jpg": bytes}, in shards OUT_DIR/images-000000.tar, ...
The photos ship inside scikit-image (the `demo` extra), so nothing is downloaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import webdataset as wds

# Real RGB photographs bundled with scikit-image, in the order they are taken.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path, help="folder for the shards (created)")
    parser.add_argument("--count", type=int, default=4, help=f"photos, at most {len(PHOTOS)}")
    parser.add_argument("--per-shard", type=int, default=2, help="samples per shard")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality")
    args = parser.parse_args(argv)
    if not 1 <= args.count <= len(PHOTOS):
        parser.error(f"--count must be in [1, {len(PHOTOS)}]")
    return args


def jpeg_bytes(rgb: np.ndarray, quality: int) -> bytes:
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return encoded.tobytes()


def write_demo_shards(out_dir: Path, count: int, per_shard: int, quality: int) -> None:
    """Write the first `count` photos of PHOTOS, `per_shard` to a shard."""
    # scikit-image is the `demo` extra, imported only where it is needed.
    from skimage import data

    out_dir.mkdir(parents=True, exist_ok=True)
    pattern = str(out_dir / "images-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=per_shard, verbose=0) as writer:
        for name in PHOTOS[:count]:
            writer.write({"__key__": name, "jpg": jpeg_bytes(getattr(data, name)(), quality)})


def main(argv: list[str] | None = None) -> None:
    """`amg-demo-data`."""
    args = parse_args(argv)
    write_demo_shards(args.out_dir, args.count, args.per_shard, args.quality)
    print(f"wrote {args.count} photos to {args.out_dir}")
