"""The input shards a run folder's records came from, so that a resume knows each one however
its path is spelled, and notices one that changed.

Records name a local shard by its real path (symlinks and `..` resolved). `inputs.json` keeps,
for every local shard a run of the folder read, its size, modification time (ns), device and
inode: four numbers from one `stat`, where hashing the tar's headers would read every header of
every shard at each start (minutes for large datasets on network file systems). A resume then
takes a shard it does not know by path for the recorded one with the same device and inode (a
bind mount, a hard link, a move within a file system), or with the same file name, size and
modification time whose recorded path is gone (a move or `rsync -a` to another file system).
A known shard whose size or modification time differs has changed: its samples are not the
ones the records describe. Remote urls have no stamp and are known by their url alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from amg_lightning.data.count import is_remote
from amg_lightning.results.run_folder import inputs_record_path, write_json_atomically

# What `resume_changed_shards` may be: refuse the resume, or redo the changed shards' samples.
CHANGED_SHARD_POLICIES = ("refuse", "redo")


@dataclass(frozen=True)
class ShardStamp:
    """What one `stat` says of a local shard."""

    size: int
    mtime_ns: int
    device: int
    inode: int

    @classmethod
    def of(cls, path: str) -> ShardStamp:
        st = os.stat(path)
        return cls(st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino)

    def same_content(self, other: ShardStamp) -> bool:
        return (self.size, self.mtime_ns) == (other.size, other.mtime_ns)


def stamps(urls: Iterable[str]) -> dict[str, ShardStamp]:
    """The stamp of every local shard among `urls`."""
    return {url: ShardStamp.of(url) for url in urls if not is_remote(url)}


def read_stamps(output_dir: Path) -> dict[str, ShardStamp]:
    """The stamps `inputs.json` records (none in a folder made before it existed)."""
    path = inputs_record_path(output_dir)
    if not path.is_file():
        return {}
    return {url: ShardStamp(**stamp) for url, stamp in json.loads(path.read_text()).items()}


def record_stamps(output_dir: Path, current: dict[str, ShardStamp]) -> None:
    """Adds (or updates) the stamps of this run's shards in `inputs.json`."""
    recorded = read_stamps(output_dir) | current
    write_json_atomically(
        inputs_record_path(output_dir), {url: asdict(s) for url, s in sorted(recorded.items())}
    )


@dataclass
class InputMatch:
    """This run's shards against those a folder's records came from."""

    aliases: dict[str, str] = field(default_factory=dict)  # recorded url -> this run's url
    changed: list[str] = field(default_factory=list)  # this run's urls whose content changed

    def translate(
        self, done: Collection[tuple[str, str]], urls: Collection[str]
    ) -> tuple[set[tuple[str, str]], list[tuple[str, str]]]:
        """The done samples in this run's urls, changed shards left out, and those whose shard
        is not among `urls` (vanished: reported, never counted as done)."""
        current, vanished = set(), []
        changed = set(self.changed)
        for url, key in done:
            url = self.aliases.get(url, url)
            if url not in urls:
                vanished.append((url, key))
            elif url not in changed:
                current.add((url, key))
        return current, sorted(vanished)


def match_inputs(recorded: dict[str, ShardStamp], current: dict[str, ShardStamp]) -> InputMatch:
    """Which recorded shard each of this run's local shards is, and which of them changed."""
    match = InputMatch()
    by_file = {(s.device, s.inode): url for url, s in recorded.items()}
    for url, stamp in current.items():
        known = url if url in recorded else by_file.get((stamp.device, stamp.inode))
        if known is not None and known != url and not recorded[known].same_content(stamp):
            known = None  # an inode reused by another file, not the recorded shard
        if known is None:
            known = _moved_from(url, stamp, recorded, current)
        if known is None:
            continue
        if known != url:
            match.aliases[known] = url
        if not recorded[known].same_content(stamp):
            match.changed.append(url)
    return match


def _moved_from(
    url: str, stamp: ShardStamp, recorded: dict[str, ShardStamp], current: dict[str, ShardStamp]
) -> str | None:
    """The recorded shard `url` was moved from: same file name, size and modification time,
    its recorded path no longer there."""
    name = os.path.basename(url)
    for old, old_stamp in recorded.items():
        if (
            os.path.basename(old) == name
            and old not in current
            and old_stamp.same_content(stamp)
            and not os.path.exists(old)
        ):
            return old
    return None
