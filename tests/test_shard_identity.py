"""A sample's identity survives any spelling of its shard's path; a changed shard is noticed.

Each case is a real run (tiny random SAM, real Trainer, real shards) through `predict`, the
shards then reached another way, changed or dropped, and `resume=true`.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds

from amg_lightning.results.run_folder import shard_paths
from amg_lightning.results.shards import iter_results
from amg_lightning.run.config import ConfigError
from tests.helpers.config import forget_config, run_in_process
from tests.helpers.jpeg_shards import blob_jpeg, write_jpeg_shards

FAST = ["model=tiny", "points_per_side=4", "data.num_workers=0", "shard_size=2"]


@pytest.fixture(autouse=True)
def _forget_hydra_config():
    yield
    forget_config()


def keys(output_dir: Path) -> Counter:
    """How often each key is in the complete shards of `output_dir` (keys are unique here)."""
    return Counter(r["image"]["key"] for r in iter_results(output_dir))


def folder_state(output_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(output_dir.iterdir()) if p.is_file()}


@pytest.fixture
def half_done(tmp_path: Path) -> tuple[Path, Path, Counter]:
    """A run over 2 shards of 4 images into `out`, its last output shard lost (a kill)."""
    data = tmp_path / "data" / "kin"
    write_jpeg_shards(data, [4, 4])
    out = tmp_path / "out"
    run_in_process([*FAST, f"data.urls={data}", f"output_dir={out}"])
    complete = keys(out)
    assert sum(complete.values()) == 8
    shard_paths(out)[-1].unlink()
    return data, out, complete


def resume(urls: str | Path, out: Path, *extra: str) -> dict:
    return run_in_process([*FAST, f"data.urls={urls}", f"output_dir={out}", "resume=true", *extra])


@pytest.mark.parametrize("spelling", ["symlink", "dot-dot", "bind-like-hard-links"])
def test_a_resume_through_another_path_does_each_image_once(
    half_done: tuple[Path, Path, Counter], spelling: str
) -> None:
    data, out, complete = half_done
    if spelling == "symlink":
        urls = data.parent / "kin_link"
        urls.symlink_to(data)
    elif spelling == "dot-dot":
        urls = data / ".." / "kin"
    else:  # the same files (device, inode) under another real path, as a bind mount shows them
        urls = data.parent / "kin_linked"
        urls.mkdir()
        for shard in data.iterdir():
            os.link(shard, urls / shard.name)
    summary = resume(urls, out)
    assert summary["images_already_done"] == 6
    assert summary["images"] == 2
    assert keys(out) == complete


def test_a_resume_finds_shards_moved_to_another_folder(
    half_done: tuple[Path, Path, Counter],
) -> None:
    data, out, complete = half_done
    moved = data.parent / "moved"
    moved.mkdir()
    for shard in sorted(data.iterdir()):  # a copy keeping its time, then the original gone
        shutil.copy2(shard, moved / shard.name)
        shard.unlink()
    summary = resume(moved, out)
    assert summary["images_already_done"] == 6
    assert keys(out) == complete


def replace_first_shard(data: Path) -> Path:
    """Other images under the same keys, in the first shard (same url)."""
    first = sorted(data.iterdir())[0]
    replacement = first.with_suffix(".new")
    with wds.TarWriter(str(replacement)) as shard:
        for i in range(4):
            shard.write({"__key__": f"img{i:03d}", "jpg": blob_jpeg(100 + i)})
    os.replace(replacement, first)
    return first


def test_a_changed_shard_is_refused_in_one_line_and_nothing_changes(
    half_done: tuple[Path, Path, Counter],
) -> None:
    data, out, _ = half_done
    changed = replace_first_shard(data)
    before = folder_state(out)
    with pytest.raises(ConfigError) as refused:
        resume(data, out)
    message = str(refused.value)
    assert f"input shard {changed} changed since output_dir" in message
    assert "resume_changed_shards=redo" in message
    assert "\n" not in message
    assert folder_state(out) == before


def test_redo_drops_a_changed_shards_records_and_segments_it_again(
    half_done: tuple[Path, Path, Counter],
) -> None:
    data, out, complete = half_done
    changed = replace_first_shard(data)
    old = {r["image"]["key"]: r for r in iter_results(out) if r["image"]["url"] == str(changed)}
    assert old
    summary = resume(data, out, "resume_changed_shards=redo")
    assert keys(out) == complete  # each image once
    new = {r["image"]["key"]: r for r in iter_results(out) if r["image"]["url"] == str(changed)}
    assert set(new) == set(old)
    assert all(new[k]["image"]["image_id"] != old[k]["image"]["image_id"] for k in old)
    assert summary["images"] == 4 + 2  # the changed shard, and the lost output shard's


def test_records_of_vanished_shards_are_reported_not_counted(
    half_done: tuple[Path, Path, Counter], caplog: pytest.LogCaptureFixture
) -> None:
    data, out, _ = half_done
    first, second = sorted(data.iterdir())
    with caplog.at_level(logging.WARNING):
        summary = resume(second, out)
    done_from_first = sum(1 for r in iter_results(out) if r["image"]["url"] == str(first))
    assert done_from_first > 0
    assert summary["images_already_done"] + summary["images"] == 4
    assert f"{done_from_first} images in output_dir come from shards not in data.urls" in (
        caplog.text
    )
