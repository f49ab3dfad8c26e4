"""The files of a prediction run's output folder: their names, and atomic writes.

Every module that writes or reads a run folder (the writer, the entry point, resume, export,
evaluation, sweep reports) takes its file names from here.

    masks-r{rank:03d}-{n:06d}.tar       complete result shards (written as `*.tar.tmp` first)
    masks-r{rank:03d}-{n:06d}.tar.damaged   a shard that did not read back, moved aside on resume
    errors-r{rank:03d}.jsonl            one line per image that could not be segmented
    counts-r{rank:03d}.json             a rank's counts, summed into the summary at the end
    summary.json                        totals, the resolved config, and scores
    run.json                            the mask settings and model every shard was made with
    inputs.json                         the input shards read: size, mtime, device, inode (resume)
    run.lock                            held while a run writes into the folder
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

SUMMARY_NAME = "summary.json"
RUN_RECORD_NAME = "run.json"
INPUTS_RECORD_NAME = "inputs.json"
LOCK_NAME = "run.lock"
SHARD_GLOB = "masks-r*.tar"
UNFINISHED_SUFFIX = ".tmp"
DAMAGED_SUFFIX = ".damaged"
# Result shards hold COCO RLE; amg-export turns them into other forms.
SHARD_OUTPUT_MODE = "coco_rle"
_SHARD_NAME = re.compile(r"masks-r(\d{3,})-(\d{6,})\.tar")
# The rank in the name of any per-rank file.
RANK_FILE = re.compile(r"(?:masks|errors|counts)-r(\d+)")
# Every file a run writes starts with one of these (temporaries of json files with a dot).
_OUR_PREFIXES = (
    "masks-r",
    "errors-r",
    "counts-r",
    SUMMARY_NAME,
    RUN_RECORD_NAME,
    INPUTS_RECORD_NAME,
    LOCK_NAME,
)


def shard_name(rank: int, number: int) -> str:
    """The file name of a rank's numbered shard."""
    return f"masks-r{rank:03d}-{number:06d}.tar"


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


def unfinished_shard_paths(output_dir: str | Path) -> list[Path]:
    """Shards a killed run left half-written."""
    return sorted(Path(output_dir).glob(SHARD_GLOB + UNFINISHED_SUFFIX))


def damaged_path(shard_path: Path) -> Path:
    """A free name beside `shard_path` for moving it aside: `*.tar.damaged`, `*.tar.damaged-2`..."""
    candidate = shard_path.with_name(shard_path.name + DAMAGED_SUFFIX)
    number = 1
    while candidate.exists():
        number += 1
        candidate = shard_path.with_name(f"{shard_path.name}{DAMAGED_SUFFIX}-{number}")
    return candidate


def errors_path(output_dir: str | Path, rank: int) -> Path:
    return Path(output_dir) / f"errors-r{rank:03d}.jsonl"


def error_paths(output_dir: str | Path) -> list[Path]:
    """Every rank's error records."""
    return sorted(Path(output_dir).glob("errors-r*.jsonl"))


def counts_path(output_dir: str | Path, rank: int) -> Path:
    return Path(output_dir) / f"counts-r{rank:03d}.json"


def summary_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / SUMMARY_NAME


def run_record_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / RUN_RECORD_NAME


def inputs_record_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / INPUTS_RECORD_NAME


def lock_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / LOCK_NAME


def files_of_ours(output_dir: str | Path) -> list[Path]:
    """Every file a run writes that `output_dir` holds: results, records, temporaries, lock.

    Other files (Hydra's `.hydra/` and log in its run directory) are not ours.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    return sorted(
        path
        for path in folder.iterdir()
        if path.name.lstrip(".").startswith(_OUR_PREFIXES) and not path.is_dir()
    )


def read_summary(output_dir: str | Path) -> dict[str, Any] | None:
    """The run's summary, or None where it has none yet."""
    path = summary_path(output_dir)
    return json.loads(path.read_text()) if path.is_file() else None


def write_summary(output_dir: str | Path, summary: dict[str, Any]) -> None:
    """Replaces summary.json with `summary`, atomically."""
    write_json_atomically(summary_path(output_dir), summary)


def update_summary(output_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Sets `fields` in summary.json (created if missing) and returns the whole summary.

    The new text is written beside the old and renamed over it, so a reader or a kill in the
    middle never sees half a file.
    """
    summary = {**(read_summary(output_dir) or {}), **fields}
    write_summary(output_dir, summary)
    return summary


def write_json_atomically(path: Path, value: Any) -> None:
    """Writes `value` as json to a temporary beside `path`, then renames it over `path`."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}{UNFINISHED_SUFFIX}")
    with temporary.open("w") as stream:
        stream.write(json.dumps(value, indent=2))
        stream.flush()
        os.fsync(stream.fileno())
    temporary.replace(path)
