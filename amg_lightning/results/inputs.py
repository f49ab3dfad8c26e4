"""A run's input images, read back from the input shards its records name.

A record's image is the sample of its `image.key` in the shard its `image.url` names (a
sample's identity is its url and key). Each result is named by `UniqueNames` in the order of
the results, as amg-export names its PNG folders, so every tool names an image alike.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from PIL import Image

from amg_lightning.data.decode import decode_image
from amg_lightning.data.samples import ShardSample, image_member, read_shard
from amg_lightning.results.names import UniqueNames

# EXIF's orientation tag: a value other than 1 asks viewers to turn the stored pixels.
EXIF_ORIENTATION = 0x0112


def results_with_samples(
    results: Iterable[dict[str, Any]],
) -> Iterator[tuple[str, dict[str, Any], ShardSample | None]]:
    """(safe name, result, its input sample or None where its shard no longer holds it).

    Each input shard is read once per run of consecutive results from it, and its results
    come in the shard's order, those not found after them.
    """
    names = UniqueNames()
    for url, group in itertools.groupby(results, key=lambda r: r["image"]["url"]):
        wanted = {r["image"]["key"]: (names.name_for(r["image"]["key"]), r) for r in group}
        for sample in read_shard(url):
            # Error samples (damage, a repeated key) were never segmented; skip them.
            named = wanted.pop(sample.key, None) if sample.error is None else None
            if named is not None:
                yield *named, sample
        for name, result in wanted.values():
            yield name, result, None


def image_file(sample: ShardSample) -> tuple[bytes, str]:
    """The sample's image as a file other tools read at the size it was segmented at, and
    its extension: the member's own bytes, or where EXIF turns them (as the run did), the
    upright pixels as PNG, since many readers ignore EXIF and would see it turned.

    Raises ValueError (or OSError) when the image does not open.
    """
    data = image_member(sample)
    extension = sample.image_extension().rpartition(".")[2]  # `seg.png` -> `png`
    with Image.open(io.BytesIO(data)) as image:
        if image.getexif().get(EXIF_ORIENTATION, 1) == 1:
            return data, extension
    upright = io.BytesIO()
    Image.fromarray(decode_image(data)).save(upright, "PNG")
    return upright.getvalue(), "png"


def image_size(data: bytes) -> tuple[int, int]:
    """(height, width) of an image file from its header, nothing decoded."""
    with Image.open(io.BytesIO(data)) as image:
        return image.height, image.width
