"""WebDataset tar shards to batches of decoded images, each sample read exactly once.

Every DataLoader worker of every rank is one of G = world_size * max(num_workers, 1)
readers. With at least G shards, reader g reads shards[g::G]; with fewer, every reader
reads all shards and keeps the samples whose running index i has i % G == g. Either way
each sample goes to exactly one reader, in a deterministic order.

A shard's samples, with its repeated keys and damage as error records, come from
data/samples.py. Each worker also runs `prepare` on its decoded images (the model's crops
cut and resized for its encoder, core/image.py's CropInputs), so the main process, which
keeps the GPU busy, does not.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch
from braceexpand import braceexpand
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from amg_lightning.data.count import already_done, count_reader_samples, is_remote
from amg_lightning.data.decode import DEFAULT_MAX_IMAGE_PIXELS
from amg_lightning.data.samples import READ_TIMEOUT_S, decode_sample, read_shard
from amg_lightning.utils.logging import get_logger
from amg_lightning.utils.signals import (
    StopRequested,
    end_workers_at_exit,
    init_worker,
    kill_live_workers,
    waiting_for_data,
)

log = get_logger(__name__)

Batch = dict[str, list[Any]]
BATCH_FIELDS = ("key", "url", "file_name", "image", "inputs", "error")


def resolve_urls(urls: str | Sequence[str]) -> list[str]:
    """Expand brace patterns, globs and directories into a list of shard urls.

    Remote urls (with a scheme, or `pipe:`) pass through unchecked. Raises ValueError
    when an entry matches no shard.
    """
    entries = [urls] if isinstance(urls, str) else list(urls)
    expanded = [url for entry in entries for url in braceexpand(str(entry))]
    resolved: list[str] = []
    unmatched: list[str] = []
    for url in expanded:
        matches = _expand_local(url)
        resolved.extend(matches)
        if not matches:
            unmatched.append(url)
    if unmatched or not resolved:
        raise ValueError(f"data.urls matched no shards: {', '.join(unmatched) or urls}")
    return resolved


def _expand_local(url: str) -> list[str]:
    """A directory's `*.tar` files, a glob's matches, an existing file, or a remote url.

    Local shards are named by their real path (symlinks and `..` resolved): a sample's identity
    is (url, key), so a resume that spells the paths otherwise still finds them (run/inputs.py
    also knows a shard reached through a bind mount or moved).
    """
    if is_remote(url):
        return [url]
    path = Path(url)
    if path.is_dir():
        tars = path.glob("*.tar")
    elif glob.has_magic(url):
        tars = map(Path, glob.glob(url))
    else:
        tars = [path] if path.is_file() else []
    return sorted(os.path.realpath(tar) for tar in tars)


@dataclass(frozen=True)
class WorkerSplit:
    """The shards one reader opens, and which of their samples (by running index) it keeps."""

    urls: list[str]
    stride: int
    offset: int

    def keeps(self, index: int) -> bool:
        return index % self.stride == self.offset


def split_for_reader(urls: Sequence[str], reader: int, num_readers: int) -> WorkerSplit:
    """Whole shards for each reader when there are enough, else every `num_readers`-th sample."""
    if len(urls) >= num_readers:
        return WorkerSplit(urls=list(urls[reader::num_readers]), stride=1, offset=0)
    return WorkerSplit(urls=list(urls), stride=num_readers, offset=reader)


def collate_records(records: list[dict[str, Any]]) -> Batch:
    """Lists per field: images differ in size, and failed samples stay in the batch.

    In a DataLoader worker the batch's tensors are moved into shared memory here, so that
    shared memory too small for them (a full /dev/shm) fails in the worker, whose error the
    DataLoader passes on. Left to the worker's queue, the sharing would fail in its feeder
    thread, which prints the error and drops the batch: the main process would wait forever.
    """
    batch = {field: [record[field] for record in records] for field in BATCH_FIELDS}
    if get_worker_info() is not None:
        _share_tensors(batch)
    return batch


class HandOverError(RuntimeError):
    """A DataLoader worker cannot put a batch into the shared memory it hands it over in."""


def _share_tensors(batch: Batch) -> None:
    """Every tensor of the batch into shared memory, or HandOverError saying what to do."""
    try:
        for tensor in _tensors_in(list(batch.values())):
            tensor.share_memory_()
    except RuntimeError as error:
        raise HandOverError(
            f"cannot hand a batch of images to the main process through shared memory "
            f"({error}): enlarge /dev/shm (docker run --shm-size) or set data.num_workers=0"
        ) from None


def _tensors_in(value: Any) -> Iterator[torch.Tensor]:
    """The tensors in nested lists and dataclasses (the images, and their PreparedCrops)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors_in(item)
    elif is_dataclass(value):
        for member in fields(value):
            yield from _tensors_in(getattr(value, member.name))


class ShardSamples(IterableDataset):
    """Decoded samples of this reader's share of the shards, skipping the (url, key) pairs
    in `skip_keys` (samples a resumed run has already done); `prepare` as in decode_sample."""

    def __init__(
        self,
        urls: Sequence[str],
        rank: int,
        world_size: int,
        skip_keys: Collection[tuple[str, str]],
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        read_timeout: float = READ_TIMEOUT_S,
        prepare: Callable[[np.ndarray], Any] | None = None,
    ) -> None:
        super().__init__()
        self.max_image_pixels = max_image_pixels
        self.prepare = prepare
        self.read_timeout = read_timeout
        self.urls = list(urls)
        self.rank = rank
        self.world_size = world_size
        self.skip_keys = frozenset(skip_keys)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        split = split_for_reader(self.urls, *self._reader())
        index = 0
        for url in split.urls:
            for sample in read_shard(url, self.read_timeout):
                # An error sample is never done: it is recorded again by every run.
                done = sample.error is None and already_done(url, sample.key, self.skip_keys)
                keep = split.keeps(index) and not done
                index += 1
                if keep:
                    yield decode_sample(sample, self.max_image_pixels, self.prepare)

    def _reader(self) -> tuple[int, int]:
        """This reader's global id and the number of readers over all ranks and workers."""
        info = get_worker_info()
        workers_per_rank = info.num_workers if info else 1
        worker_id = info.id if info else 0
        return self.rank * workers_per_rank + worker_id, self.world_size * workers_per_rank


class StoppableDataLoader(DataLoader):
    """A DataLoader whose wait for the next batch a stop signal ends at once, as the data's end.

    Lightning's prediction loop then ends as after the last batch. The workers are killed, not
    shut down: one blocked in a stalled read would hold the shutdown until its read timed out.
    """

    def __iter__(self) -> Iterator[Batch]:
        return _StoppableBatches(super().__iter__())


class _StoppableBatches:
    def __init__(self, batches: Iterator[Batch]) -> None:
        self._batches = batches

    def __iter__(self) -> _StoppableBatches:
        return self

    def __next__(self) -> Batch:
        try:
            with waiting_for_data():
                return next(self._batches)
        except StopRequested:
            kill_live_workers()
            raise StopIteration from None


class WebDatasetDataModule(lightning.LightningDataModule):
    """Prediction batches from WebDataset shards, split exactly once over ranks and workers.

    `prepare`, a picklable function of a decoded image, runs in the workers; its result is the
    batch's `inputs` (run/cli.py sets it to the model's CropInputs, as `skip_keys` to the
    samples done).

    `batch_size` "auto" takes the batch size from `auto_batch_size` when the loader is made,
    once the model is on its device (run/cli.py sets it to the model's `images_per_batch`).
    """

    def __init__(
        self,
        urls: str | list[str],
        batch_size: int | str = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        skip_keys: Collection[tuple[str, str]] = (),
        count_samples: str | bool = "auto",
        count_seconds: float = 30.0,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        read_timeout: float = READ_TIMEOUT_S,
        prepare: Callable[[np.ndarray], Any] | None = None,
    ) -> None:
        super().__init__()
        self.max_image_pixels = max_image_pixels
        self.read_timeout = read_timeout
        self.prepare = prepare
        self.shard_urls = resolve_urls(urls)
        self.batch_size = batch_size
        self.auto_batch_size: Callable[[], int] = lambda: 1
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.skip_keys = skip_keys
        self.count_samples = count_samples
        self.count_seconds = count_seconds
        self.rank = 0
        self.world_size = 1

    def setup(self, stage: str) -> None:
        """Take rank and world size from the trainer, so each rank reads its own share."""
        if self.trainer is not None:
            self.rank = self.trainer.global_rank
            self.world_size = self.trainer.world_size

    def count_predict_batches(self) -> int | None:
        """This rank's batches still to do, counted from tar headers (see data/count.py).

        None where `count_samples` is false, a shard is remote, or in `auto` mode counting
        takes longer than `count_seconds`.
        """
        workers = max(self.num_workers, 1)
        readers = range(self.rank * workers, (self.rank + 1) * workers)
        splits = [split_for_reader(self.shard_urls, r, self.world_size * workers) for r in readers]
        counts = count_reader_samples(
            splits, self.skip_keys, self.count_samples, self.count_seconds
        )
        size = self._fixed_batch_size()
        return None if counts is None else sum(math.ceil(n / size) for n in counts)

    def _fixed_batch_size(self) -> int:
        """`batch_size`; where it is "auto", what `auto_batch_size` says, fixed from then on so
        that the count and the loader agree."""
        if self.batch_size == "auto":
            self.batch_size = self.auto_batch_size()
            log.info(f"data.batch_size=auto: batches of {self.batch_size} image(s)")
        return self.batch_size

    def predict_dataloader(self) -> StoppableDataLoader:
        if self.num_workers:
            end_workers_at_exit()
        samples = ShardSamples(
            self.shard_urls,
            self.rank,
            self.world_size,
            self.skip_keys,
            self.max_image_pixels,
            self.read_timeout,
            self.prepare,
        )
        return StoppableDataLoader(
            samples,
            batch_size=self._fixed_batch_size(),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=collate_records,
            worker_init_fn=init_worker,
        )
