"""Reading back the RLE shards a run writes.

Each shard sample is `{"image": {"key", "url", "height", "width"}, "annotations": [...]}`
with annotations in COCO-RLE form, as `RleShardWriter` writes them.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from webdataset.tariterators import tar_file_iterator

from amg_lightning.results.run_folder import shard_paths

# tarfile ends an archive with two zero blocks; a shard cut short anywhere lacks them.
_END_OF_ARCHIVE = bytes(2 * tarfile.BLOCKSIZE)


def shard_samples(path: Path) -> list[tuple[str, str]]:
    """The (url, key) of every sample in one result shard, from the records' `image` field.

    Raises ValueError naming the shard when it does not read back completely: a member cut
    short, a record that is not json, or no end-of-archive marker (a shard cut at a member
    boundary).
    """
    try:
        with path.open("rb") as stream:
            stream.seek(max(path.stat().st_size - len(_END_OF_ARCHIVE), 0))
            if stream.read() != _END_OF_ARCHIVE:
                raise ValueError("no end-of-archive marker")
        with tarfile.open(path) as shard:
            samples = []
            for member in shard:
                if member.name.endswith(".json"):
                    image = json.loads(shard.extractfile(member).read())["image"]
                    samples.append((image["url"], image["key"]))
            return samples
    except (OSError, tarfile.TarError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"shard {path} does not read back: {error}") from None


def iter_results(paths_or_dir: str | Path | Iterable[str | Path]) -> Iterator[dict[str, Any]]:
    """Each sample's json dict from an output directory, one shard, or a list of shards."""
    for path in _result_shards(paths_or_dir):
        with open(path, "rb") as stream:
            for member in tar_file_iterator(stream):
                if member["fname"].endswith(".json"):
                    yield json.loads(member["data"])


def _result_shards(paths_or_dir: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(paths_or_dir, (str, Path)):
        path = Path(paths_or_dir)
        return shard_paths(path) if path.is_dir() else [path]
    return [Path(path) for path in paths_or_dir]
