"""Pack a folder (searched recursively) or a list of images into WebDataset tar shards.

Each image's original bytes are stored under its lowercase extension (jpeg as jpg). Keys
are the image's relative path without extension, with `/` and `.` replaced, so they hold
no dots and read back unchanged (data/datamodule.py `split_name`); a key already taken
gets a `_2`, `_3`, ... suffix.
"""

from __future__ import annotations

import argparse
import io
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import webdataset as wds
from PIL import Image

from amg_lightning.data.decode import IMAGE_EXTENSIONS

SHARD_PATTERN = "images-%06d.tar"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "source", type=Path, help="a folder of images, or a text file of image paths"
    )
    parser.add_argument("--output", type=Path, required=True, help="folder for images-NNNNNN.tar")
    parser.add_argument(
        "--maxcount", type=int, default=1000, help="images per shard (default 1000)"
    )
    return parser.parse_args(argv)


def list_images(source: Path) -> Iterator[tuple[Path, str]]:
    """(path, name for the key) pairs: paths relative to a folder, or as a list file writes them.

    Relative paths in a list file are taken from the list file's folder.
    """
    if source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            yield path, path.relative_to(source).as_posix()
        return
    for line in source.read_text().splitlines():
        name = line.strip()
        if name and not name.startswith("#"):
            yield source.parent / name, name


def key_for(name: str, taken: set[str]) -> str:
    """A dot-free key from a relative path, unique among `taken` (which it joins)."""
    stem = name.lstrip("./").rsplit(".", 1)[0]
    base = stem.replace("/", "__").replace(".", "_")
    key, suffix = base, 1
    while key in taken:
        suffix += 1
        key = f"{base}_{suffix}"
    taken.add(key)
    return key


def read_image(path: Path) -> tuple[str, bytes]:
    """The member extension and bytes of an image file; ValueError or OSError if it is not one."""
    extension = path.suffix.lower().lstrip(".")
    if extension not in IMAGE_EXTENSIONS:
        raise ValueError("not an image file name")
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    return ("jpg" if extension == "jpeg" else extension), data


def image_samples(source: Path) -> Iterator[dict[str, str | bytes]]:
    """A webdataset sample per readable image, warning about the files it skips."""
    taken: set[str] = set()
    for path, name in list_images(source):
        try:
            extension, data = read_image(path)
        except (OSError, SyntaxError, ValueError) as error:
            print(f"warning: skipping {path}: {error}", file=sys.stderr)
            continue
        yield {"__key__": key_for(name, taken), extension: data}


def make_shards(source: Path, output: Path, maxcount: int) -> tuple[int, int]:
    """Write the shards; returns how many images and shards were written."""
    samples = image_samples(source)
    first = next(samples, None)
    if first is None:
        return 0, 0
    output.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(output / SHARD_PATTERN), maxcount=maxcount, verbose=0) as shards:
        for sample in itertools.chain([first], samples):
            shards.write(sample)
        # The writer numbers shards from 0, so its next number is how many it wrote.
        return shards.total, shards.shard


def main(argv: list[str] | None = None) -> int:
    """`amg-shards SOURCE --output DIR`."""
    args = parse_args(argv)
    if args.maxcount < 1:
        sys.exit("--maxcount must be at least 1")
    images, shards = make_shards(args.source, args.output, args.maxcount)
    print(f"wrote {images} images in {shards} shards to {args.output}")
    return 0 if images else 1


if __name__ == "__main__":
    sys.exit(main())
