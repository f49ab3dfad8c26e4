"""Resuming a run folder in-process: damaged shards, repeated keys, changed settings, leftovers.

Each case is a real run (tiny random SAM, real Trainer, real shards) through `predict`, then
a change to the folder as a crash or a user would make it, then `resume=true`.
"""

from __future__ import annotations

import json
import logging
import tarfile
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


def samples(output_dir: Path) -> Counter:
    """How often each (url, key) is in the complete shards of `output_dir`."""
    return Counter((r["image"]["url"], r["image"]["key"]) for r in iter_results(output_dir))


def folder_state(output_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(output_dir.iterdir()) if p.is_file()}


def end_of_last_member(path: Path) -> int:
    """The offset just after the last member's data: a cut there loses no member's bytes."""
    with tarfile.open(path) as shard:
        last = shard.getmembers()[-1]
    return last.offset_data + -(-last.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


@pytest.fixture
def finished_run(tmp_path: Path) -> tuple[list[str], Path, Counter]:
    """A complete run over 2 shards of 4 images, 2 images per output shard."""
    write_jpeg_shards(tmp_path / "shards", [4, 4])
    out = tmp_path / "out"
    run = [*FAST, f"data.urls={tmp_path / 'shards'}", f"output_dir={out}"]
    assert run_in_process(run)["images"] == 8
    return run, out, samples(out)


@pytest.mark.parametrize("cut", ["inside-a-member", "at-a-member-boundary", "empty-file"])
def test_damaged_output_shard_is_moved_aside_and_redone(
    finished_run: tuple[list[str], Path, Counter], cut: str, caplog: pytest.LogCaptureFixture
) -> None:
    run, out, complete = finished_run
    damaged = shard_paths(out)[1]
    lost = {(r["image"]["url"], r["image"]["key"]) for r in iter_results(damaged)}
    size = {
        "inside-a-member": end_of_last_member(damaged) - 700,
        "at-a-member-boundary": end_of_last_member(damaged),
        "empty-file": 0,
    }[cut]
    data = damaged.read_bytes()[:size]
    damaged.write_bytes(data)

    with caplog.at_level(logging.WARNING):
        summary = run_in_process([*run, "resume=true"])
    aside = damaged.with_name(damaged.name + ".damaged")
    assert aside.read_bytes() == data  # moved, not deleted
    assert f"result shard {damaged} is damaged" in caplog.text
    assert f"moved aside to {aside.name}" in caplog.text
    assert samples(out) == complete
    assert summary["images"] == len(lost)
    assert summary["images_already_done"] == 8 - len(lost)


def test_closed_but_unrenamed_shard_is_redone(
    finished_run: tuple[list[str], Path, Counter],
) -> None:
    """A kill between a shard's close() and its rename leaves a complete `*.tar.tmp`, urls and
    all: it is not a finished shard, so its samples are done again, once."""
    run, out, complete = finished_run
    last = shard_paths(out)[-1]
    redone = {(r["image"]["url"], r["image"]["key"]) for r in iter_results(last)}
    last.rename(last.with_name(last.name + ".tmp"))

    summary = run_in_process([*run, "resume=true"])
    assert summary["images"] == len(redone) == 2
    assert summary["images_already_done"] == 6
    assert samples(out) == complete


def test_same_key_in_two_shards_survives_an_interruption(tmp_path: Path) -> None:
    """Done-ness is (url, key): the second `dup` is not skipped because the first is done."""
    contents = {tmp_path / "in-0.tar": ["a0", "dup", "a1"], tmp_path / "in-1.tar": ["dup", "b0"]}
    for number, (path, keys) in enumerate(contents.items()):
        with wds.TarWriter(str(path)) as shard:
            for i, key in enumerate(keys):
                shard.write({"__key__": key, "jpg": blob_jpeg(10 * number + i)})
    expected = Counter((str(path), key) for path, keys in contents.items() for key in keys)
    out = tmp_path / "out"
    urls = ",".join(str(path) for path in contents)
    run = [*FAST, "shard_size=1", f"data.urls=[{urls}]", f"output_dir={out}"]
    run_in_process(run)
    assert samples(out) == expected

    # Killed after its third shard: the first `dup` is done, the second is not.
    for later in shard_paths(out)[3:]:
        later.unlink()
    assert samples(out)[(str(tmp_path / "in-0.tar"), "dup")] == 1
    summary = run_in_process([*run, "resume=true"])
    assert summary["images"] == 2
    assert samples(out) == expected


def test_resume_with_other_mask_settings_is_refused_with_the_differences(
    finished_run: tuple[list[str], Path, Counter],
) -> None:
    run, out, _ = finished_run
    before = folder_state(out)
    with pytest.raises(ConfigError) as refused:
        run_in_process([*run, "resume=true", "points_per_side=8", "pred_iou_thresh=0.5"])
    message = str(refused.value)
    assert "was made with other settings" in message
    assert "points_per_side 4 -> 8" in message
    assert "pred_iou_thresh 0.88 -> 0.5" in message
    assert folder_state(out) == before


def test_resume_may_change_what_does_not_change_masks(
    finished_run: tuple[list[str], Path, Counter],
) -> None:
    run, out, complete = finished_run
    shard_paths(out)[-1].unlink()
    changed = ["shard_size=5", "data.batch_size=3", "points_per_batch=7", "crops_per_batch=2"]
    summary = run_in_process([*run, "resume=true", *changed])
    assert summary["images"] == 2
    assert samples(out) == complete
    recorded = json.loads((out / "run.json").read_text())
    assert recorded["settings"]["points_per_side"] == 4
    assert recorded["model"] == {"model_type": "tiny", "family": "sam", "checkpoint_sha256": None}
    assert summary["run"] == recorded


@pytest.mark.parametrize(
    "leftovers",
    [
        pytest.param(["errors-r000.jsonl", "summary.json"], id="errors-and-summary"),
        pytest.param(["counts-r001.json"], id="counts"),
        pytest.param(["masks-r000-000003.tar.tmp"], id="unfinished-shard"),
        pytest.param(["masks-r000-000000.tar.damaged"], id="damaged-shard"),
        pytest.param(["run.json"], id="run-record"),
        pytest.param([".summary.json.123.tmp"], id="summary-temporary"),
    ],
)
def test_leftovers_need_resume_and_are_kept(tmp_path: Path, leftovers: list[str]) -> None:
    write_jpeg_shards(tmp_path / "shards", [2])
    out = tmp_path / "out"
    out.mkdir()
    for name in leftovers:
        (out / name).write_text('{"key": "old", "url": "x", "error": "kept"}\n')
    before = folder_state(out)
    with pytest.raises(ConfigError, match=r"already holds results .*: pass resume=true"):
        run_in_process([*FAST, f"data.urls={tmp_path / 'shards'}", f"output_dir={out}"])
    assert folder_state(out) == before


def test_a_folder_with_files_of_others_only_is_not_ours_to_refuse(tmp_path: Path) -> None:
    """Hydra's run directory holds its .hydra/ and log before the run starts."""
    write_jpeg_shards(tmp_path / "shards", [2])
    out = tmp_path / "out"
    (out / ".hydra").mkdir(parents=True)
    (out / "predict.log").write_text("")
    summary = run_in_process([*FAST, f"data.urls={tmp_path / 'shards'}", f"output_dir={out}"])
    assert summary["images"] == 2
