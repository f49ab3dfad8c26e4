"""An on-disk, size-bounded cache of image-encoder embeddings, safe to share between processes.

Entries are whole files written under a temporary name and renamed into place, so a reader sees
either nothing or a complete entry. The least recently used entries (by file mtime, which a hit
refreshes) go first once the directory holds more than `max_bytes`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SUFFIX = ".pt"


class EmbeddingCache:
    """Embeddings keyed by model, image content and crop box.

    `hits`/`misses` count lookups; `seconds_saved` adds up the encoder time each hit spared,
    as measured when the embedding was stored.
    """

    def __init__(self, directory: str | Path, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self.seconds_saved = 0.0

    @staticmethod
    def key(model_id: str, image: np.ndarray, crop_box: list[int]) -> str:
        """sha256 over the model, the image's shape, dtype and pixels, and the crop box."""
        box = [int(v) for v in crop_box]  # numpy integers would not serialise, nor hash alike
        header = json.dumps([model_id, list(image.shape), str(image.dtype), box])
        digest = hashlib.sha256(header.encode())
        digest.update(np.ascontiguousarray(image).data)
        return digest.hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}{SUFFIX}"

    def get(self, key: str) -> torch.Tensor | None:
        """The cached tensor (on the CPU), or None; an unreadable entry is removed and misses."""
        entry = _load(self._path(key))
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self.seconds_saved += entry["seconds"]
        return entry["embedding"]

    def put(self, key: str, tensor: torch.Tensor, seconds: float = 0.0) -> None:
        """Store `tensor` (which took `seconds` to compute), then evict beyond `max_bytes`."""
        # clone: saving a view would save the whole storage behind it.
        entry = {"embedding": tensor.detach().to("cpu").clone(), "seconds": float(seconds)}
        handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=SUFFIX)
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(entry, file)
            os.replace(temporary, self._path(key))
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        _touch(self._path(key))
        self._evict()

    def _entries(self) -> list[tuple[int, int, Path]]:
        """(mtime, size, path) of every entry, oldest first; ones deleted meanwhile are skipped."""
        entries = []
        for path in self.directory.glob(f"[!.]*{SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                entries.append((stat.st_mtime_ns, stat.st_size, path))
        return sorted(entries)

    def _evict(self) -> None:
        entries = self._entries()
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size


def _touch(path: Path) -> None:
    """Mark `path` as just used, to the nanosecond: the kernel's own stamps are coarser."""
    now = time.time_ns()
    with contextlib.suppress(FileNotFoundError):  # evicted meanwhile by another process
        os.utime(path, ns=(now, now))


def _load(path: Path) -> dict | None:
    """The entry saved at `path`; None when there is none, removing the file if it is not one."""
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception:  # whatever torch.load raises on a truncated or foreign file
        entry = None
    valid = isinstance(entry, dict) and isinstance(entry.get("embedding"), torch.Tensor)
    if not valid or not isinstance(entry.get("seconds"), float):
        path.unlink(missing_ok=True)
        return None
    _touch(path)
    return entry
