"""Input shards for the tests: small images as real tar files, members named as given."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(height: int = 24, width: int = 32, seed: int = 0) -> bytes:
    """A small PNG of smooth colour blobs, so even a random SAM finds regions."""
    rng = np.random.default_rng(seed)
    blobs = Image.fromarray(rng.integers(0, 255, size=(4, 5, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    blobs.resize((width, height), Image.BICUBIC).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg_bytes(height: int = 24, width: int = 32, seed: int = 0) -> bytes:
    """The same picture as `png_bytes`, as a JPEG."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png_bytes(height, width, seed))).save(buffer, "JPEG")
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> list[tarfile.TarInfo]:
    """A tar file holding `members` (name, bytes) in order; returns their headers' infos,
    whose `offset` and `offset_data` say where each header and its data begin."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as tar:
        return tar.getmembers()


def read_jsonl(path: Path) -> list[dict]:
    """The records of a jsonl file, or none if it does not exist."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
