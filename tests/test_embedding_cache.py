"""The on-disk embedding cache: round trips, the size bound, corrupt entries, keys."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch

from amg_lightning.core.embedding_cache import EmbeddingCache

IMAGE = np.arange(24 * 32 * 3, dtype=np.uint8).reshape(24, 32, 3)
BOX = [0, 0, 32, 24]


def _embedding(seed: int) -> torch.Tensor:
    return torch.randn(16, 32, 32, generator=torch.Generator().manual_seed(seed))


def _entry_bytes(tmp_path: Path) -> int:
    """What one `_embedding` takes on disk."""
    probe = EmbeddingCache(tmp_path / "probe", max_bytes=1 << 30)
    probe.put("probe", _embedding(0))
    return (tmp_path / "probe" / "probe.pt").stat().st_size


def test_round_trip_counts_hits_and_misses(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, max_bytes=1 << 30)
    key = cache.key("vit_t", IMAGE, BOX)
    embedding = _embedding(1).half()

    assert cache.get(key) is None
    cache.put(key, embedding)
    loaded = cache.get(key)

    assert loaded is not None
    assert loaded.dtype == torch.float16
    assert torch.equal(loaded, embedding)
    assert (cache.hits, cache.misses) == (1, 1)


def test_a_view_is_stored_without_the_tensor_behind_it(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, max_bytes=1 << 30)
    batch = torch.randn(8, 16, 32, 32)

    cache.put("first", batch[0])

    assert torch.equal(cache.get("first"), batch[0])
    assert (tmp_path / "first.pt").stat().st_size < batch[0].nbytes * 1.5


def test_size_bound_evicts_the_least_recently_used(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "cache", max_bytes=int(_entry_bytes(tmp_path) * 2.5))
    cache.put("a", _embedding(1))
    cache.put("b", _embedding(2))
    assert cache.get("a") is not None  # now "b" is the least recently used

    cache.put("c", _embedding(3))

    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["a.pt", "c.pt"]
    assert sum(p.stat().st_size for p in (tmp_path / "cache").iterdir()) <= cache.max_bytes
    assert cache.get("b") is None
    assert torch.equal(cache.get("c"), _embedding(3))


def test_entry_larger_than_the_bound_is_not_kept(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, max_bytes=1000)

    cache.put("big", _embedding(1))

    assert cache.get("big") is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"not a torch file", None])
def test_corrupt_entry_is_a_miss_and_removed(tmp_path: Path, content: bytes | None) -> None:
    cache = EmbeddingCache(tmp_path, max_bytes=1 << 30)
    cache.put("entry", _embedding(1))
    path = tmp_path / "entry.pt"
    if content is None:  # a truncated file
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)

    assert cache.get("entry") is None
    assert cache.misses == 1
    assert not path.exists()


def test_keys_differ_by_model_crop_pixels_and_shape() -> None:
    key = EmbeddingCache.key("vit_t", IMAGE, BOX)
    changed = IMAGE.copy()
    changed[0, 0, 0] += 1

    assert EmbeddingCache.key("vit_t", IMAGE.copy(), list(BOX)) == key
    assert EmbeddingCache.key("vit_t", IMAGE, np.array(BOX)) == key
    assert EmbeddingCache.key("vit_b", IMAGE, BOX) != key
    assert EmbeddingCache.key("vit_t", IMAGE, [0, 0, 16, 24]) != key
    assert EmbeddingCache.key("vit_t", changed, BOX) != key
    assert EmbeddingCache.key("vit_t", IMAGE.reshape(32, 24, 3), BOX) != key


def test_key_of_a_view_matches_its_copy() -> None:
    view = IMAGE[::2, ::-1]

    copy = view.copy()
    assert EmbeddingCache.key("vit_t", view, BOX) == EmbeddingCache.key("vit_t", copy, BOX)


def _hammer(directory: Path, max_bytes: int, worker: int) -> None:
    """Put and get a few shared keys; every hit must be the tensor stored under its key."""
    cache = EmbeddingCache(directory, max_bytes)
    for step in range(30):
        key = str((worker + step) % 5)
        cache.put(key, _embedding(int(key)))
        loaded = cache.get(str(step % 5))
        if loaded is not None and not torch.equal(loaded, _embedding(step % 5)):
            raise AssertionError(f"entry {step % 5} holds another tensor")


def test_processes_share_a_cache_safely(tmp_path: Path) -> None:
    max_bytes = _entry_bytes(tmp_path) * 3
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_hammer, args=(tmp_path / "cache", max_bytes, worker))
        for worker in range(3)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=60)

    assert [process.exitcode for process in workers] == [0, 0, 0]
    assert sum(p.stat().st_size for p in (tmp_path / "cache").iterdir()) <= max_bytes
    assert not list((tmp_path / "cache").glob(".tmp-*"))
