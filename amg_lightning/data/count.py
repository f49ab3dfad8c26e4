"""Counting a rank's samples before the run, from tar headers only, so the progress bar has an end.

Samples are counted as data/samples.py groups members into samples (consecutive members
whose names share a key), reading no member's data. Remote urls (`pipe:`, `http://`, `s3://`, ...)
are never counted: their headers come only by downloading them. In `auto` mode counting gives
up after a time limit, so a huge local dataset does not wait long for a number.
"""

from __future__ import annotations

import tarfile
import time
from collections.abc import Collection, Iterator, Sequence
from typing import TYPE_CHECKING

from amg_lightning.data.samples import ShardSample, split_name
from amg_lightning.data.tar_reader import TarMember
from amg_lightning.utils.logging import get_logger

if TYPE_CHECKING:
    from amg_lightning.data.datamodule import WorkerSplit

log = get_logger(__name__)


class _TimeUp(Exception):
    """Counting took longer than its limit."""


def is_remote(url: str) -> bool:
    """A url read through a scheme or a pipe, not a local file."""
    return "://" in url or url.startswith("pipe:")


def is_count_mode(mode: object) -> bool:
    """`auto`, True or False (not 0 or 1, which equal False and True)."""
    return mode == "auto" or isinstance(mode, bool)


def already_done(url: str, key: str, skip: Collection[tuple[str, str]]) -> bool:
    """Whether a resumed run skips this sample: its (url, key) is in a complete result shard."""
    return (url, key) in skip


def count_reader_samples(
    splits: Sequence[WorkerSplit],
    skip: Collection[tuple[str, str]],
    mode: str | bool = "auto",
    time_limit: float = 30.0,
) -> list[int] | None:
    """How many samples each reader's split will yield, `skip` left out.

    None where `mode` is False, a url is remote, or (`auto` mode) counting takes longer than
    `time_limit` seconds; `True` counts local shards however long it takes.
    """
    if not is_count_mode(mode):
        raise ValueError(f"data.count_samples must be auto, true or false, got {mode!r}")
    if mode is False:
        return None
    if any(is_remote(url) for split in splits for url in split.urls):
        log.info("not counting the images of remote shards: the progress bar shows no total")
        return None
    deadline = time.monotonic() + time_limit if mode == "auto" else float("inf")
    started = time.monotonic()
    try:
        counts = [_count_split(split, skip, deadline) for split in splits]
    except _TimeUp:
        log.info(
            f"stopped counting images after {time_limit:g} s (data.count_seconds): the progress "
            "bar shows no total; data.count_samples=true counts however long it takes"
        )
        return None
    seconds = time.monotonic() - started
    log.info(f"images to do: {sum(counts)} (counted from tar headers in {seconds:.1f} s)")
    return counts


def _count_split(split: WorkerSplit, skip: Collection[tuple[str, str]], deadline: float) -> int:
    count = 0
    samples = (sample for url in split.urls for sample in shard_samples(url))
    for index, (url, key) in enumerate(samples):
        if time.monotonic() > deadline:
            raise _TimeUp
        if split.keeps(index) and not already_done(url, key, skip):
            count += 1
    return count


def shard_samples(url: str) -> Iterator[tuple[str, str]]:
    """(url, key) of each sample of a local shard, in order, from its headers.

    Members are grouped by `ShardSample.accepts`, the rule the datamodule reads them by, with
    no member's data. An unreadable shard ends with (url, url), as `read_shard` ends it with
    one error sample.
    """
    current: ShardSample | None = None
    try:
        for position, name in enumerate(_member_names(url), start=1):
            member = TarMember(name, b"", position)
            if current is not None and current.accepts(name):
                current.add(member, split_name(name, current.key)[1])
                continue
            key, extension = split_name(name)
            current = ShardSample(url, key, first=position)
            current.add(member, extension)
            yield url, key
    except (OSError, tarfile.TarError, ValueError):
        yield url, url


def _member_names(url: str) -> Iterator[str]:
    """Names of the regular members, read by seeking from header to header."""
    with tarfile.open(url) as tar:
        while (member := tar.next()) is not None:
            tar.members = []  # nothing keeps the headers already seen: flat memory on big shards
            if member.isreg():
                yield member.name
