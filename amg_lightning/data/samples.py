"""The samples of one input shard: members grouped by key, and what is wrong as error samples.

A shard is read strictly (data/tar_reader.py) and its members grouped into samples by
`split_name`'s rule. A sample's identity is its shard url and key: a key repeated within
one shard is an error sample naming both places (only the first is segmented); the same
key in two shards is two samples. Damage ends a shard with one error sample after its
complete samples.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import torch
import webdataset as wds

from amg_lightning.data.decode import DEFAULT_MAX_IMAGE_PIXELS, IMAGE_EXTENSIONS, decode_image
from amg_lightning.data.tar_reader import DamagedTar, TarMember, tar_members


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
    """The key and lowercase extension of a member name, while sample `current_key` is open:

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


# Seconds a remote read may stall before its shard becomes an error record.
READ_TIMEOUT_S = 60.0


def open_shard(url: str, read_timeout: float = READ_TIMEOUT_S) -> IO[bytes]:
    """The shard's byte stream; http(s) reads that stall over `read_timeout` raise TimeoutError.

    webdataset opens http(s) through curl with no time limit, so a server that accepts and
    never answers would hold the reader (and the run) for ever.
    """
    if url.startswith(("http://", "https://")):
        try:
            return urllib.request.urlopen(url, timeout=read_timeout)
        except urllib.error.URLError as error:  # a stall before the answer arrives comes wrapped
            if isinstance(error.reason, TimeoutError):
                raise error.reason from error
            raise
    return wds.gopen(url)


def read_shard(url: str, read_timeout: float = READ_TIMEOUT_S) -> Iterator[ShardSample]:
    """The samples of one shard in order; what is wrong with it becomes error samples.

    A repeat of a key already seen in this shard is an error sample naming both places (only
    the first is segmented). Damage (a cut, a bad header, a missing end-of-archive marker) or
    a failed read ends the shard with one error sample, keyed by the url, after every
    complete sample before it; a sample whose member data is cut is named in that error.
    """
    first_places: dict[str, str] = {}
    last_key: str | None = None
    try:
        with open_shard(url, read_timeout) as stream:
            for sample in _grouped(url, tar_members(stream)):
                last_key = sample.key
                yield _checked_for_repeat(sample, first_places)
    except DamagedTar as damage:
        yield _shard_error(url, f"shard {url} is damaged {_after(last_key)}: {damage}.")
    except TimeoutError:
        yield _shard_error(
            url, f"shard {url} stalled: no data for {read_timeout:g} s {_after(last_key)}."
        )
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


def decode_sample(
    sample: ShardSample,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    prepare: Callable[[np.ndarray], Any] | None = None,
) -> dict[str, Any]:
    """A batch record: the sample's image as a uint8 HWC tensor, or None and an error.

    `file_name` is the image member's name (`key.ext`, the extension lowercased), None where
    the sample has no image member. `inputs` is what `prepare` makes of the image (the
    encoder's inputs, core/image.py's CropInputs), None without an image or `prepare`.
    """
    extension = None if sample.error is not None else sample.image_extension()
    record = {
        "key": sample.key,
        "url": sample.url,
        "file_name": None if extension is None else f"{sample.key}.{extension}",
        "image": None,
        "inputs": None,
        "error": sample.error,
    }
    if sample.error is None:
        try:
            image = decode_image(image_member(sample), max_image_pixels)
        except ValueError as error:
            record["error"] = str(error)
        else:
            record["image"] = torch.from_numpy(image)
            record["inputs"] = prepare(image) if prepare is not None else None
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
