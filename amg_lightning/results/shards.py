"""Reading back the RLE shards a run writes.

Each shard sample is `{"image": {"key", "url", "file_name", "height", "width", "image_id"},
"annotations": [...]}` with annotations in COCO-RLE form and an `id` each, as `RleShardWriter`
writes them.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from webdataset.tariterators import base_plus_ext, tar_file_iterator

from amg_lightning.results.run_folder import shard_paths


def shard_keys(path: Path) -> list[str]:
    """The sample keys in one shard, from member names only (no data is parsed)."""
    with tarfile.open(path) as shard:
        return [base_plus_ext(name)[0] for name in shard.getnames()]


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
