"""WebDataset tar shards to batches of decoded images, each sample read exactly once.

Every DataLoader worker of every rank is one of G = world_size * max(num_workers, 1)
readers. With at least G shards, reader g reads shards[g::G]; with fewer, every reader
reads all shards and keeps the samples whose running index i has i % G == g. Either way
each sample goes to exactly one reader, in a deterministic order.

A shard is read strictly (data/tar_reader.py) and grouped into samples by `split_name`'s
rule. A sample's identity is its shard url and key: a key repeated within one shard is an
error record naming both places (only the first is segmented); the same key in two shards
is two samples. Damage ends a shard with one error record after its complete samples.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning
import torch
import webdataset as wds
from braceexpand import braceexpand
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from amg_lightning.data.decode import IMAGE_EXTENSIONS, decode_image
from amg_lightning.data.tar_reader import DamagedTar, TarMember, tar_members

Batch = dict[str, list[Any]]
BATCH_FIELDS = ("key", "url", "image", "error")


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
    """A directory's `*.tar` files, a glob's matches, an existing file, or a remote url."""
    if "://" in url or url.startswith("pipe:"):
        return [url]
    path = Path(url)
    if path.is_dir():
        return sorted(str(tar) for tar in path.glob("*.tar"))
    if glob.has_magic(url):
        return sorted(glob.glob(url))
    return [url] if path.is_file() else []


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


@dataclass
class ShardSample:
    """One sample of a shard: its key, its members by extension, and where they lie.

    `first` and `last` are the 1-based places of its first and last member among the
    shard's files; `error` is set instead of members for a shard's damage and for a repeat.
    """

    url: str
    key: str
    first: int
    last: int = 0
    members: dict[str, bytes] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    error: str | None = None

    def add(self, member: TarMember, extension: str) -> None:
        self.members[extension] = member.data
        self.names.append(member.name)
        self.last = member.position

    def accepts(self, name: str) -> bool:
        """Whether the member `name`, coming next, belongs to this sample (see split_name).

        A second image is another sample (`photo.1.jpg` after `photo.jpg`), never a sidecar.
        """
        key, extension = split_name(name, self.key)
        if key != self.key or extension in self.members:
            return False
        return not (is_image_extension(extension) and self.image_extension() is not None)

    def image_extension(self) -> str | None:
        """The extension of its image member (at most one has an image extension)."""
        return next(filter(is_image_extension, self.members), None)

    def place(self) -> str:
        """Where it lies, for messages: `members 3-4 (a.jpg, a.json)`."""
        span = (
            f"member {self.first}"
            if self.first == self.last
            else f"members {self.first}-{self.last}"
        )
        return f"{span} ({', '.join(self.names)})"


def split_name(name: str, current_key: str | None = None) -> tuple[str, str]:
    """The key and (lowercase) extension of a member name, following the next member's rule:

    - a name that starts with `current_key` and a dot (and has no `/` after it) belongs to
      that sample, as in WebDataset: `x.jpg`, `x.json`, `x.seg.png` are one sample `x`;
    - otherwise a name whose last suffix is an image extension is its key and that suffix
      (`photo.v2.jpg` is key `photo.v2`); any other name splits at the first dot of its file
      name (WebDataset's rule); a file name without a dot is a key without an extension.
    """
    if current_key is not None and name.startswith(current_key + "."):
        extension = name[len(current_key) + 1 :]
        if "/" not in extension:
            return current_key, extension.lower()
    folder, slash, file_name = name.rpartition("/")
    stem, _, suffix = file_name.rpartition(".")
    if stem and suffix.lower() in IMAGE_EXTENSIONS:
        return folder + slash + stem, suffix.lower()
    first, _, rest = file_name.partition(".")
    return folder + slash + first, rest.lower()


def read_shard(url: str) -> Iterator[ShardSample]:
    """The samples of one shard in order; what is wrong with it becomes error samples.

    A repeat of a key already seen in this shard is an error sample naming both places (only
    the first is segmented). Damage (a cut, a bad header, a missing end-of-archive marker) or
    a failed read ends the shard with one error sample, keyed by the url, after every
    complete sample before it; a sample whose member data is cut is named in that error.
    """
    first_places: dict[str, str] = {}
    last_key: str | None = None
    try:
        with wds.gopen(url) as stream:
            for sample in _grouped(url, tar_members(stream)):
                last_key = sample.key
                yield _checked_for_repeat(sample, first_places)
    except DamagedTar as damage:
        yield _shard_error(url, f"shard {url} is damaged {_after(last_key)}: {damage}.")
    except (OSError, ValueError) as error:  # ValueError: a url scheme gopen does not know
        yield _shard_error(url, f"shard {url} could not be read {_after(last_key)}: {_why(error)}.")


def _grouped(url: str, members: Iterator[TarMember]) -> Iterator[ShardSample]:
    """Consecutive members of one sample as a ShardSample. On damage, the sample being read
    comes first if it is complete; if its own member was cut, the DamagedTar says so."""
    current: ShardSample | None = None
    try:
        for member in members:
            if current is not None and current.accepts(member.name):
                current.add(member, split_name(member.name, current.key)[1])
                continue
            if current is not None:
                yield current
            key, extension = split_name(member.name)
            current = ShardSample(url, key, first=member.position)
            current.add(member, extension)
    except DamagedTar as damage:
        cut = damage.member_name
        if current is not None and cut is not None and current.accepts(cut):
            raise DamagedTar(f"{damage}, so sample '{current.key}' is incomplete") from None
        if current is not None:
            yield current
        raise
    if current is not None:
        yield current


def _checked_for_repeat(sample: ShardSample, first_places: dict[str, str]) -> ShardSample:
    """The sample, or an error sample when its key came before in the shard."""
    first_place = first_places.get(sample.key)
    if first_place is None:
        first_places[sample.key] = sample.place()
        return sample
    message = (
        f"key '{sample.key}' is repeated in shard {sample.url}: at {first_place} and again "
        f"at {sample.place()}; only the first is segmented."
    )
    return ShardSample(sample.url, sample.key, sample.first, sample.last, error=message)


def _after(last_key: str | None) -> str:
    return f"after sample '{last_key}'" if last_key is not None else "before its first sample"


def _why(error: Exception) -> str:
    """An error in words: the OS's reason, or a pipe's exit status (its own text is a tuple)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    status = re.search(r"exit (-?\d+)", str(error))
    return f"its command exited with status {status[1]}" if status else str(error)


def _shard_error(url: str, message: str) -> ShardSample:
    return ShardSample(url, url, first=0, error=message)


def decode_sample(sample: ShardSample) -> dict[str, Any]:
    """A batch record: the sample's image as a uint8 HWC tensor, or None and an error."""
    record = {"key": sample.key, "url": sample.url, "image": None, "error": sample.error}
    if sample.error is None:
        try:
            record["image"] = torch.from_numpy(decode_image(image_member(sample)))
        except ValueError as error:
            record["error"] = str(error)
    return record


def image_member(sample: ShardSample) -> bytes:
    """The bytes of the sample's image member; ValueError naming its members if it has none."""
    extension = sample.image_extension()
    if extension is None:
        raise ValueError(
            f"sample has no image member ({', '.join(IMAGE_EXTENSIONS)}); "
            f"its members are {', '.join(sample.names)}."
        )
    return sample.members[extension]


def is_image_extension(extension: str) -> bool:
    """Whether a member extension ends in an image extension (`jpg`, `v2.jpg`, `seg.png`)."""
    return extension.rpartition(".")[2] in IMAGE_EXTENSIONS


def collate_records(records: list[dict[str, Any]]) -> Batch:
    """Lists per field: images differ in size, and failed samples stay in the batch."""
    return {field: [record[field] for record in records] for field in BATCH_FIELDS}


class ShardSamples(IterableDataset):
    """Decoded samples of this reader's share of the shards, skipping `skip_keys`."""

    def __init__(
        self, urls: Sequence[str], rank: int, world_size: int, skip_keys: Collection[str]
    ) -> None:
        super().__init__()
        self.urls = list(urls)
        self.rank = rank
        self.world_size = world_size
        self.skip_keys = frozenset(skip_keys)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        split = split_for_reader(self.urls, *self._reader())
        index = 0
        for url in split.urls:
            for sample in read_shard(url):
                # An error sample is never done: it is recorded again by every run.
                done = sample.error is None and sample.key in self.skip_keys
                keep = split.keeps(index) and not done
                index += 1
                if keep:
                    yield decode_sample(sample)

    def _reader(self) -> tuple[int, int]:
        """This reader's global id and the number of readers over all ranks and workers."""
        info = get_worker_info()
        workers_per_rank = info.num_workers if info else 1
        worker_id = info.id if info else 0
        return self.rank * workers_per_rank + worker_id, self.world_size * workers_per_rank


class WebDatasetDataModule(lightning.LightningDataModule):
    """Prediction batches from WebDataset shards, split exactly once over ranks and workers."""

    def __init__(
        self,
        urls: str | list[str],
        batch_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        skip_keys: Collection[str] = (),
    ) -> None:
        super().__init__()
        self.shard_urls = resolve_urls(urls)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.skip_keys = skip_keys
        self.rank = 0
        self.world_size = 1

    def setup(self, stage: str) -> None:
        """Take rank and world size from the trainer, so each rank reads its own share."""
        if self.trainer is not None:
            self.rank = self.trainer.global_rank
            self.world_size = self.trainer.world_size

    def predict_dataloader(self) -> DataLoader:
        samples = ShardSamples(self.shard_urls, self.rank, self.world_size, self.skip_keys)
        return DataLoader(
            samples,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=collate_records,
        )
