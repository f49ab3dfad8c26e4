"""Strict streaming reader of tar archives: every file member in order, and damage named.

Python's tarfile (and WebDataset on top of it) ends quietly when a stream stops inside a
header, at a member boundary, or at a header that does not check out, so a half-downloaded
shard reads as a shorter, complete one. This reader checks each header's checksum, reads
each member's data in full, and requires tar's end-of-archive marker (two 512-byte zero
blocks) followed by nothing but zeros; anything else raises `DamagedTar`, after every
complete member before it.
Gzip, bzip2 and xz compressed archives are recognised by their first bytes.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol


class Readable(Protocol):
    """Anything with a binary file's `read`."""

    def read(self, size: int = -1, /) -> bytes: ...


BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
_PAX_TYPES = (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE)
# Each opener takes a file object, and returns a reader of the decompressed bytes.
_COMPRESSED: dict[bytes, Callable[[Readable], Readable]] = {
    b"\x1f\x8b": gzip.open,
    b"BZh": bz2.open,
    b"\xfd7zXZ\x00": lzma.open,
}
_DECOMPRESSION_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError)


@dataclass(frozen=True)
class TarMember:
    """A file of the archive: its name, its bytes, and its 1-based place among the files."""

    name: str
    data: bytes
    position: int


class DamagedTar(ValueError):
    """The archive stops or breaks before its end-of-archive marker.

    The message is a clause saying what and where ("it ends inside the header of member 7");
    `member_name` is the member whose data was cut, or None when the damage is in a header
    or after the last member.
    """

    def __init__(self, problem: str, member_name: str | None = None) -> None:
        super().__init__(problem)
        self.member_name = member_name


def tar_members(stream: Readable) -> Iterator[TarMember]:
    """The regular files of a tar stream, in order; raises DamagedTar at the first damage.

    Directories, links and other entries are skipped; pax and GNU long names are applied.
    """
    source = _decompressed(stream)
    position = 0
    pax: dict[str, str] = {}
    long_name: str | None = None
    while True:
        header = _read_exactly(source, BLOCK)
        if not header:
            raise DamagedTar("it ends without tar's end-of-archive marker (two zero blocks)")
        if len(header) < BLOCK:
            raise DamagedTar(f"it ends inside the header of member {position + 1}")
        if header == ZERO_BLOCK:
            if _read_exactly(source, BLOCK) != ZERO_BLOCK:
                raise DamagedTar("its end-of-archive marker has one zero block, not two")
            _check_only_zeros_follow(source)
            return
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.HeaderError as error:
            raise DamagedTar(
                f"the header of member {position + 1} is unreadable ({error})"
            ) from None
        name = pax.get("path", long_name or info.name)
        data = _member_data(source, _pax_size(pax, info.size, position), name, position + 1)
        if info.type in _PAX_TYPES:
            pax = _pax_fields(data, position)
        elif info.type == tarfile.GNUTYPE_LONGNAME:
            long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif info.type != tarfile.XGLTYPE:
            pax, long_name = {}, None
            if info.type in tarfile.REGULAR_TYPES:
                position += 1
                yield TarMember(name, data, position)


def _decompressed(stream: Readable) -> Readable:
    """The stream itself, or a decompressing reader when its first bytes say it is compressed."""
    head = _read_exactly(stream, 6)
    rejoined = _Rejoined(head, stream)
    for magic, opener in _COMPRESSED.items():
        if head.startswith(magic):
            return _Guarded(opener(rejoined))
    return rejoined


def _check_only_zeros_follow(source: Readable) -> None:
    """Read to the end: a tar is padded with zeros, and anything else there (a second archive
    appended to the first, say) would be members that no reader sees."""
    while chunk := source.read(1 << 16):
        if chunk.strip(b"\0"):
            raise DamagedTar("it holds data after its end-of-archive marker")


def _read_exactly(source: Readable, size: int) -> bytes:
    """`size` bytes, fewer only at the end of the stream (pipes and sockets return in parts)."""
    parts: list[bytes] = []
    remaining = size
    while remaining > 0:
        part = source.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def _member_data(source: Readable, size: int, name: str, position: int) -> bytes:
    """A member's `size` bytes and the padding to the next block; DamagedTar if cut."""
    try:
        data = _read_exactly(source, size)
        padding = _read_exactly(source, -size % BLOCK)
    except DamagedTar as damage:
        problem = f"the data of member {position} ({name}) is unreadable: {damage}"
        raise DamagedTar(problem, name) from None
    if len(data) < size or len(padding) < -size % BLOCK:
        raise DamagedTar(f"it ends inside the data of member {position} ({name})", name)
    return data


def _pax_fields(data: bytes, position: int) -> dict[str, str]:
    """The `LENGTH KEY=VALUE\\n` records of a pax extended header."""
    fields: dict[str, str] = {}
    offset = 0
    while offset < len(data) and data[offset] != 0:
        length_text = data[offset:].split(b" ", 1)[0]
        try:
            length = int(length_text)
        except ValueError:
            raise DamagedTar(f"the pax header of member {position + 1} is unreadable") from None
        record = data[offset + len(length_text) + 1 : offset + length - 1]
        key, _, value = record.partition(b"=")
        fields[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        offset += max(length, 1)
    return fields


def _pax_size(pax: dict[str, str], header_size: int, position: int) -> int:
    try:
        return int(pax.get("size", header_size))
    except ValueError:
        raise DamagedTar(f"the pax header of member {position + 1} has no valid size") from None


class _Rejoined:
    """Bytes already read from a stream, followed by the rest of it."""

    def __init__(self, head: bytes, rest: Readable) -> None:
        self._head = head
        self._rest = rest

    def read(self, size: int = -1, /) -> bytes:
        if not self._head:
            return self._rest.read(size)
        if size < 0:
            part, self._head = self._head + self._rest.read(), b""
            return part
        part, self._head = self._head[:size], self._head[size:]
        return part


class _Guarded:
    """A decompressing reader whose cut or corrupt input raises DamagedTar."""

    def __init__(self, reader: Readable) -> None:
        self._reader = reader

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._reader.read(size)
        except _DECOMPRESSION_ERRORS as error:
            raise DamagedTar(f"its compressed data is cut or corrupt ({error})") from None
