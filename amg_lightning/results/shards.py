"""Reading back the RLE shards a run writes.

Each shard sample is `{"image": {"key", "url", "file_name", "height", "width", "image_id"},
"annotations": [...]}` with annotations in COCO-RLE form and an `id` each, as `RleShardWriter`
writes them. A sample's identity is its `image` field (url and key); member names are only
safe names made from keys (`results/names.py`) and are never read back as keys.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

from amg_lightning.data.tar_reader import DamagedTar, tar_members
from amg_lightning.results.run_folder import shard_paths, unfinished_path


def shard_samples(path: Path) -> list[tuple[str, str]]:
    """The (url, key) of every sample in one result shard, from the records' `image` field.

    Raises ValueError (DamagedTar where the tar itself is damaged) naming the shard when it
    does not read back completely: a member cut short, no end-of-archive marker, a record
    that is not json or has no `image`.
    """
    try:
        return [(result["image"]["url"], result["image"]["key"]) for result in iter_results(path)]
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"result shard {path} does not read back: {error}") from None


def iter_results(paths_or_dir: str | Path | Iterable[str | Path]) -> Iterator[dict[str, Any]]:
    """Each sample's json dict from an output directory, one shard, or a list of shards.

    Raises DamagedTar, naming the shard, when one is cut short or unreadable.
    """
    for path in _result_shards(paths_or_dir):
        with open(path, "rb") as stream:
            try:
                for member in tar_members(stream):
                    if member.name.endswith(".json"):
                        yield json.loads(member.data)
            except DamagedTar as damage:
                problem = f"result shard {path} is damaged: {damage}"
                raise DamagedTar(problem, damage.member_name) from None


def _result_shards(paths_or_dir: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(paths_or_dir, (str, Path)):
        path = Path(paths_or_dir)
        return shard_paths(path) if path.is_dir() else [path]
    return [Path(path) for path in paths_or_dir]


def drop_samples(path: Path, urls: Collection[str]) -> int:
    """Rewrites one result shard without the samples of input shards `urls`; returns how many
    it dropped. The other members keep their names and bytes; the new shard replaces the old
    one by a rename, so a crash leaves one or the other, never a mix."""
    with open(path, "rb") as stream:
        members = [(m.name, m.data) for m in tar_members(stream)]
    kept = [
        (name, data)
        for name, data in members
        if not (name.endswith(".json") and json.loads(data)["image"]["url"] in urls)
    ]
    if len(kept) == len(members):
        return 0
    temporary = unfinished_path(path)  # cleared by the next resume if this one dies
    with open(temporary, "wb") as stream:
        with tarfile.open(fileobj=stream, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in kept:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        stream.flush()
        os.fsync(stream.fileno())
    temporary.replace(path)
    return len(members) - len(kept)
