"""File and member names made from sample keys, which are data and never trusted as paths.

`safe_name(key)` keeps ASCII letters, digits, `-` and `_`, and percent-encodes every other
byte of the key's UTF-8 (`/` is `%2F`, `.` is `%2E`, `%` is `%25`). A name is therefore
never empty, absolute, `.` or `..`, holds no separator or control character, has no dot
(so an extension added after it is unambiguous, also to WebDataset), and decodes back to
its key. A name longer than MAX_NAME_LENGTH is cut and ends in `~` and 16 hex digits of the
key's SHA-256; `~` is encoded everywhere else, so such a name never equals another key's.

`UniqueNames` gives out those names and adds `~2`, `~3`, ... to one it has given out before
(compared case-insensitively, for case-insensitive file systems): the same key met again,
from another shard.
"""

from __future__ import annotations

import hashlib
import re
import string

MAX_NAME_LENGTH = 150
_KEPT = frozenset(string.ascii_letters + string.digits + "-_")
_HASH_DIGITS = 16
# The end of a name cut inside a `%XX` escape.
_CUT_ESCAPE = re.compile(r"%[0-9A-F]?$")


def safe_name(key: str) -> str:
    """A file name for `key`: injective, reversible unless hashed, safe in any folder."""
    data = key.encode("utf-8", "surrogateescape")
    encoded = "".join(chr(byte) if chr(byte) in _KEPT else f"%{byte:02X}" for byte in data)
    if encoded and len(encoded) <= MAX_NAME_LENGTH:
        return encoded
    digest = hashlib.sha256(data).hexdigest()[:_HASH_DIGITS]
    prefix = _CUT_ESCAPE.sub("", encoded[: MAX_NAME_LENGTH - _HASH_DIGITS - 1])
    return f"{prefix}~{digest}"


class UniqueNames:
    """Safe names for keys, a different one each time: `~2`, `~3`, ... for a name met again."""

    def __init__(self) -> None:
        self._given: set[str] = set()

    def name_for(self, key: str) -> str:
        base = safe_name(key)
        name, count = base, 1
        while name.casefold() in self._given:
            count += 1
            name = f"{base}~{count}"
        self._given.add(name.casefold())
        return name
