"""The progress bar's total: this rank's batches, counted from tar headers, resume left out.

A real Trainer with the tiny SAM and the bar runs over real shards; the bar's total must be
the number of batches it then shows done.
"""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import lightning
import pytest
from tqdm import tqdm

from amg_lightning.data.count import shard_samples
from amg_lightning.data.datamodule import WebDatasetDataModule, read_shard
from amg_lightning.run.folder import completed_samples
from amg_lightning.run.module import AmgModule
from amg_lightning.run.progress import ThroughputProgressBar
from amg_lightning.run.writer import RleShardWriter
from tests.helpers.jpeg_shards import write_jpeg_shards
from tests.helpers.predict import run_predict


def predict_with_bar(data: WebDatasetDataModule, writer: RleShardWriter | None = None) -> tqdm:
    """Runs a real prediction with the bar (and `writer`); returns the bar as it ended."""
    callbacks = [ThroughputProgressBar(), *([writer] if writer else [])]
    trainer = lightning.Trainer(accelerator="cpu", devices=1, callbacks=callbacks, logger=False)
    model = AmgModule("tiny", settings={"points_per_side": 2})
    trainer.predict(model, datamodule=data, return_predictions=False)
    return trainer.progress_bar_callback.predict_progress_bar


@pytest.mark.parametrize(
    ("sizes", "num_workers", "batches"),
    [
        pytest.param([3, 3], 0, 3, id="one-reader"),
        pytest.param([3, 3], 2, 4, id="a-shard-per-worker"),  # 3 images each: 2 + 2 batches
        pytest.param([6], 2, 4, id="every-other-image-per-worker"),
    ],
)
def test_bar_total_is_the_batches_to_come(
    tmp_path: Path, sizes: list[int], num_workers: int, batches: int
) -> None:
    write_jpeg_shards(tmp_path / "shards", sizes)
    data = WebDatasetDataModule(str(tmp_path / "shards"), batch_size=2, num_workers=num_workers)

    bar = predict_with_bar(data)

    assert (bar.total, bar.n) == (batches, batches)


def test_resumed_bar_leaves_out_what_is_done(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    write_jpeg_shards(shards, [3, 3])
    out = tmp_path / "out"
    first = WebDatasetDataModule(str(shards / "in-000000.tar"), batch_size=2)
    predict_with_bar(first, RleShardWriter(str(out)))
    done = completed_samples(out, move_damaged=False)
    assert {key for _, key in done} == {"img000", "img001", "img002"}

    data = WebDatasetDataModule(str(shards), batch_size=2, skip_keys=done)
    bar = predict_with_bar(data, RleShardWriter(str(out)))

    assert (bar.total, bar.n) == (2, 2)  # the 3 images of the second shard
    assert {key for _, key in completed_samples(out, move_damaged=False)} == {
        f"img{i:03d}" for i in range(6)
    }


def test_resumed_bar_with_fewer_shards_than_readers(tmp_path: Path) -> None:
    """One shard, two readers taking every other sample: a done sample is left out by its
    place in the shard, not by its place among the samples still to do."""
    shards = tmp_path / "shards"
    write_jpeg_shards(shards, [6])
    url = str(shards / "in-000000.tar")
    done = {(url, "img000"), (url, "img002")}  # both from reader 0's share: 0, 2, 4
    data = WebDatasetDataModule(str(shards), batch_size=2, num_workers=2, skip_keys=done)

    bar = predict_with_bar(data)

    assert (bar.total, bar.n) == (3, 3)  # reader 0: img004 alone; reader 1: 1, 3, 5


def test_remote_shards_are_not_counted(tmp_path: Path) -> None:
    write_jpeg_shards(tmp_path / "shards", [3])
    remote = f"pipe:cat {tmp_path / 'shards' / 'in-000000.tar'}"
    data = WebDatasetDataModule(remote, batch_size=1)
    assert data.count_predict_batches() is None

    bar = predict_with_bar(data)

    assert (bar.total, bar.n) == (None, 3)  # read all the same, with no end shown


def test_counting_modes(tmp_path: Path) -> None:
    write_jpeg_shards(tmp_path / "shards", [3, 2])
    urls = str(tmp_path / "shards")

    def count(mode: str | bool, seconds: float) -> int | None:
        data = WebDatasetDataModule(urls, count_samples=mode, count_seconds=seconds)
        return data.count_predict_batches()

    assert count("auto", 30) == 5
    assert count(False, 30) is None
    # A limit passed at the first image: auto gives up, true counts however long it takes.
    assert count("auto", 1e-9) is None
    assert count(True, 1e-9) == 5
    with pytest.raises(ValueError, match="count_samples must be auto, true or false"):
        count(1, 30)


def add_member(tar: tarfile.TarFile, name: str, data: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_header_count_groups_members_as_the_reader_does(tmp_path: Path) -> None:
    """Metadata, folders, names without an extension, dotted folders, a key that comes back:
    the header count groups them as data/samples.py reads them."""
    path = tmp_path / "odd.tar"
    with tarfile.open(path, "w") as tar:
        add_member(tar, "__meta__")
        add_member(tar, "a.jpg")
        add_member(tar, "a.json")
        folder = tarfile.TarInfo("folder.v2")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        add_member(tar, "folder.v2/b.seg.png")
        add_member(tar, "folder.v2/b.jpg")
        add_member(tar, "no_extension")
        add_member(tar, "c.png")
        add_member(tar, "a.txt")  # `a` again, after another key: a sample of its own
    read = [(s.url, s.key) for s in read_shard(str(path))]

    assert list(shard_samples(str(path))) == read
    # Every regular member is read (metadata too); `a` again is its repeat's error sample.
    keys = ["__meta__", "a", "folder.v2/b.seg", "folder.v2/b", "no_extension", "c", "a"]
    assert [key for _, key in read] == keys


def test_unreadable_shard_counts_as_its_error_sample(tmp_path: Path) -> None:
    path = tmp_path / "not-a-tar.tar"
    path.write_bytes(b"plain text, not a tar file" * 40)
    read = [(s.url, s.key) for s in read_shard(str(path))]

    assert list(shard_samples(str(path))) == read == [(str(path), str(path))]


@pytest.mark.e2e
def test_predict_logs_the_count_and_resume_subtracts(tmp_path: Path) -> None:
    write_jpeg_shards(tmp_path / "shards", [2, 3])
    out = tmp_path / "out"
    args = ["model=tiny", "points_per_side=2", f"data.urls={tmp_path / 'shards'}"]
    args += ["data.num_workers=0", "shard_size=2", f"output_dir={out}"]
    first = run_predict(args, tmp_path, timeout=240)
    assert first.returncode == 0, first.stdout + first.stderr
    assert re.search(r"images to do: 5\b", first.stdout), first.stdout
    assert "5/5" in first.stderr + first.stdout  # the bar, batch_size 1

    # Play a run killed after its first two shards: the third is gone, its image to redo.
    (out / "masks-r000-000002.tar").unlink()
    resumed = run_predict([*args, "resume=true"], tmp_path, timeout=240)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert re.search(r"images to do: 1\b", resumed.stdout), resumed.stdout
    assert "1/1" in resumed.stderr + resumed.stdout


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.count_samples=maybe", "data.count_samples must be auto, true or false, got 'maybe'"),
        ("data.count_seconds=0", "data.count_seconds must be a number > 0, got 0"),
    ],
)
def test_bad_counting_setting_is_one_line(tmp_path: Path, override: str, message: str) -> None:
    write_jpeg_shards(tmp_path / "shards", [1])
    args = ["model=tiny", f"data.urls={tmp_path / 'shards'}", f"output_dir={tmp_path / 'out'}"]
    finished = run_predict([*args, override], tmp_path, timeout=120)
    assert finished.returncode == 2
    assert f"error: {message}" in finished.stdout + finished.stderr
    assert "Traceback" not in finished.stdout + finished.stderr
