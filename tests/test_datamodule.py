"""WebDatasetDataModule: url resolution, decoding records, and the exactly-once split."""

from __future__ import annotations

import io
import resource
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from amg_lightning.data.datamodule import (
    HandOverError,
    ShardSamples,
    WebDatasetDataModule,
    collate_records,
    resolve_urls,
    split_for_reader,
)


def png_bytes(height: int = 8, width: int = 10, value: int = 100) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), value, dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def write_shard(path: Path, samples: dict[str, dict[str, bytes]]) -> str:
    """A real webdataset shard with one sample per key, members named by extension."""
    with wds.TarWriter(str(path)) as writer:
        for key, members in samples.items():
            writer.write({"__key__": key, **members})
    return str(path)


def write_image_shards(directory: Path, sizes: list[int]) -> tuple[list[str], list[str]]:
    """Shards holding `sizes[i]` tiny PNGs each (0 makes an empty shard); urls and all keys."""
    urls, keys = [], []
    for shard, size in enumerate(sizes):
        shard_keys = [f"s{shard}-img{i}" for i in range(size)]
        urls.append(
            write_shard(
                directory / f"shard-{shard:06d}.tar",
                {key: {"png": png_bytes()} for key in shard_keys},
            )
        )
        keys += shard_keys
    return urls, keys


def test_resolve_brace_list_glob_and_directory(tmp_path: Path) -> None:
    urls, _ = write_image_shards(tmp_path, [1, 1, 1])
    (tmp_path / "notes.txt").write_text("not a shard")
    assert resolve_urls(str(tmp_path / "shard-{000000..000002}.tar")) == urls
    assert resolve_urls([urls[2], urls[0]]) == [urls[2], urls[0]]
    assert resolve_urls(str(tmp_path / "shard-*.tar")) == urls
    assert resolve_urls(str(tmp_path)) == urls
    assert resolve_urls("pipe:cat x.tar") == ["pipe:cat x.tar"]


def test_resolve_names_local_shards_by_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resume matches samples by (url, key): any spelling of a shard gives the same url."""
    (tmp_path / "shards").mkdir()
    urls, _ = write_image_shards(tmp_path / "shards", [1, 1])
    monkeypatch.chdir(tmp_path)
    assert resolve_urls("shards/") == urls
    assert resolve_urls("./shards/../shards/shard-{000000..000001}.tar") == urls
    monkeypatch.chdir(tmp_path / "shards")
    assert resolve_urls(["shard-000001.tar", "shard-000000.tar"]) == urls[::-1]


@pytest.mark.parametrize("pattern", ["missing-{0..2}.tar", "*.tar", "."])
def test_resolve_no_match_raises(
    tmp_path: Path, pattern: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"data\.urls matched no shards"):
        resolve_urls(pattern)


def test_resolve_reports_a_missing_shard_of_a_pattern(tmp_path: Path) -> None:
    write_image_shards(tmp_path, [1, 1])
    with pytest.raises(ValueError, match=r"shard-000002\.tar"):
        resolve_urls(str(tmp_path / "shard-{000000..000002}.tar"))


@pytest.mark.parametrize(("num_shards", "num_readers"), [(6, 4), (4, 4), (3, 4), (1, 6), (5, 1)])
def test_split_covers_every_sample_exactly_once(num_shards: int, num_readers: int) -> None:
    shard_sizes = [(shard * 3) % 5 for shard in range(num_shards)]  # includes empty shards
    samples = [(f"u{shard}", i) for shard in range(num_shards) for i in range(shard_sizes[shard])]
    seen: Counter[tuple[str, int]] = Counter()
    for reader in range(num_readers):
        split = split_for_reader([f"u{s}" for s in range(num_shards)], reader, num_readers)
        running = [(url, i) for url in split.urls for i in range(shard_sizes[int(url[1:])])]
        seen.update(sample for index, sample in enumerate(running) if split.keeps(index))
    assert seen == Counter(samples)


@pytest.mark.parametrize("sizes", [[3, 0, 4, 2, 5], [4, 0, 3]])
def test_ranks_and_dataloader_workers_read_each_sample_once(
    tmp_path: Path, sizes: list[int]
) -> None:
    """Two simulated ranks, each with two real DataLoader worker processes (4 readers)."""
    urls, keys = write_image_shards(tmp_path, sizes)
    seen: Counter[str] = Counter()
    for rank in range(2):
        samples = ShardSamples(urls, rank=rank, world_size=2, skip_keys=())
        loader = DataLoader(samples, batch_size=2, num_workers=2, collate_fn=collate_records)
        for batch in loader:
            seen.update(batch["key"])
    assert seen == Counter(keys)


def test_batches_hold_images_and_errors(tmp_path: Path) -> None:
    url = write_shard(
        tmp_path / "mixed.tar",
        {
            "good": {"png": png_bytes(6, 9, 50), "json": b"{}"},
            "corrupt": {"jpg": b"\xff\xd8 definitely not a jpeg"},
            "textonly": {"txt": b"no image here"},
        },
    )
    module = WebDatasetDataModule(url, batch_size=3)
    module.setup("predict")
    (batch,) = list(module.predict_dataloader())
    assert batch["key"] == ["good", "corrupt", "textonly"]
    assert batch["url"] == [url] * 3
    image = batch["image"][0]
    assert image.dtype == torch.uint8 and image.shape == (6, 9, 3) and int(image[0, 0, 0]) == 50
    assert batch["image"][1:] == [None, None]
    assert batch["error"][0] is None
    assert batch["error"][1].startswith("cannot decode image")
    assert batch["error"][2] == (
        "sample has no image member (jpg, jpeg, png, webp, bmp, tif, tiff); "
        "its members are textonly.txt."
    )


def test_corrupt_tar_is_one_error_record(tmp_path: Path) -> None:
    urls, _ = write_image_shards(tmp_path, [2])
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"this is not a tar file" * 100)
    module = WebDatasetDataModule([str(broken), *urls], batch_size=4)
    (batch,) = list(module.predict_dataloader())
    assert batch["key"] == [str(broken), "s0-img0", "s0-img1"]
    assert batch["error"][0] == (
        f"shard {broken} is damaged before its first sample: "
        "the header of member 1 is unreadable (invalid header)."
    )
    assert batch["error"][1:] == [None, None]


def test_skip_keys_are_left_out_by_url_and_key(tmp_path: Path) -> None:
    urls, keys = write_image_shards(tmp_path, [3, 2])
    # s1-img1 of the first shard does not exist: a key alone must not skip shard 1's sample.
    done = {(urls[0], "s0-img1"), (urls[1], "s1-img0"), (urls[0], "s1-img1")}
    module = WebDatasetDataModule(str(tmp_path), batch_size=10, skip_keys=done)
    (batch,) = list(module.predict_dataloader())
    assert batch["key"] == ["s0-img0", "s0-img2", "s1-img1"]
    assert set(keys) - set(batch["key"]) == {"s0-img1", "s1-img0"}


def test_auto_batch_size_asks_once_and_holds_for_the_run(tmp_path: Path) -> None:
    urls, keys = write_image_shards(tmp_path, [5])
    asked = []
    module = WebDatasetDataModule(urls, batch_size="auto", count_samples=True)
    module.auto_batch_size = lambda: asked.append(1) or 2
    module.setup("predict")
    assert module.count_predict_batches() == 3
    batches = list(module.predict_dataloader())
    assert [batch["key"] for batch in batches] == [keys[0:2], keys[2:4], keys[4:5]]
    assert module.count_predict_batches() == 3
    assert asked == [1]  # the count and the loader agree even if free memory changes


def test_auto_batch_size_is_one_image_on_the_cpu() -> None:
    from amg_lightning.run.module import AmgModule

    assert AmgModule("tiny").images_per_batch() == 1
    assert AmgModule("tiny", settings={"crop_n_layers": 1}).images_per_batch() == 1


def _limit_file_size(worker_id: int) -> None:
    """In the worker: no file, shared memory included, grows past 16 KiB."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))


def test_a_batch_a_worker_cannot_share_is_its_error_not_a_hang(tmp_path: Path) -> None:
    url = write_shard(tmp_path / "big.tar", {"big": {"png": png_bytes(120, 160)}})  # 57 KiB
    samples = ShardSamples([url], rank=0, world_size=1, skip_keys=set())
    loader = DataLoader(
        samples,
        num_workers=1,
        collate_fn=collate_records,
        worker_init_fn=_limit_file_size,
        timeout=60,  # a batch lost on the way would end the test here instead
    )
    with pytest.raises(HandOverError, match=r"data.num_workers=0"):
        next(iter(loader))
