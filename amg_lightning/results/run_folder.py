"""The files of a prediction run's output folder: their names, and atomic summary updates.

Every module that writes or reads a run folder (the writer, the entry point, resume, export,
evaluation, sweep reports) takes its file names from here.

    masks-r{rank:03d}-{n:06d}.tar       complete result shards (written as `*.tar.tmp` first)
    errors-r{rank:03d}.jsonl            one line per image that could not be segmented
    counts-r{rank:03d}.json             a rank's counts, summed into the summary at the end
    summary.json                        totals, the resolved config, and scores
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

SUMMARY_NAME = "summary.json"
SHARD_GLOB = "masks-r*.tar"
UNFINISHED_SUFFIX = ".tmp"
_SHARD_NAME = re.compile(r"masks-r(\d{3,})-(\d{6,})\.tar")
# The rank in the name of any per-rank file.
RANK_FILE = re.compile(r"(?:masks|errors|counts)-r(\d+)")


def shard_prefix(rank: int) -> str:
    """The start of every shard name of one rank."""
    return f"masks-r{rank:03d}-"


def shard_name(rank: int, number: int) -> str:
    """The file name of a rank's numbered shard."""
    return f"{shard_prefix(rank)}{number:06d}.tar"


def shard_rank_and_number(path: Path) -> tuple[int, int]:
    """The rank and number in a shard's file name."""
    match = _SHARD_NAME.fullmatch(path.name)
    if match is None:
        raise ValueError(f"not a mask shard name: {path.name}")
    return int(match[1]), int(match[2])


def shard_paths(output_dir: str | Path) -> list[Path]:
    """Complete shards in `output_dir` (not `*.tar.tmp`), sorted by name."""
    return sorted(p for p in Path(output_dir).glob(SHARD_GLOB) if _SHARD_NAME.fullmatch(p.name))


def unfinished_path(shard_path: Path) -> Path:
    """Where a shard is written until it is complete."""
    return shard_path.with_name(shard_path.name + UNFINISHED_SUFFIX)


def errors_path(output_dir: Path, rank: int) -> Path:
    return Path(output_dir) / f"errors-r{rank:03d}.jsonl"


def counts_path(output_dir: Path, rank: int) -> Path:
    return Path(output_dir) / f"counts-r{rank:03d}.json"


def summary_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / SUMMARY_NAME


def read_summary(output_dir: str | Path) -> dict[str, Any] | None:
    """The run's summary, or None where it has none yet."""
    path = summary_path(output_dir)
    return json.loads(path.read_text()) if path.is_file() else None


def update_summary(output_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Sets `fields` in summary.json (created if missing) and returns the whole summary.

    The new text is written beside the old and renamed over it, so a reader or a kill in the
    middle never sees half a file.
    """
    summary = {**(read_summary(output_dir) or {}), **fields}
    write_json_atomically(summary_path(output_dir), summary)
    return summary


def write_json_atomically(path: Path, value: Any) -> None:
    """Writes `value` as json to a temporary beside `path`, then renames it over `path`."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}{UNFINISHED_SUFFIX}")
    temporary.write_text(json.dumps(value, indent=2))
    temporary.replace(path)
