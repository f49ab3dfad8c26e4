"""Input shards of small JPEG images of coloured blobs (a random SAM still finds regions)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image


def blob_jpeg(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    blobs = Image.fromarray(rng.integers(0, 255, size=(6, 8, 3), dtype=np.uint8))
    data = io.BytesIO()
    blobs.resize(size, Image.BICUBIC).save(data, "JPEG")
    return data.getvalue()


def write_jpeg_shards(
    folder: Path, sizes: list[int], image_size: tuple[int, int] = (48, 40)
) -> list[str]:
    """Shards `in-000000.tar`, ... of `sizes[i]` images (W x H `image_size`) keyed `img000`,
    ...; returns the keys."""
    folder.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for number, size in enumerate(sizes):
        with wds.TarWriter(str(folder / f"in-{number:06d}.tar")) as shard:
            for _ in range(size):
                keys.append(f"img{len(keys):03d}")
                shard.write({"__key__": keys[-1], "jpg": blob_jpeg(len(keys), image_size)})
    return keys
