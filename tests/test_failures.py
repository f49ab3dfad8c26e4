"""Runs that fail end soon, with one line and a non-zero exit status, and lose nothing.

`predict.py` in a subprocess over real shards, as a batch scheduler runs it: a folder that
cannot be written mid-run (file size limit; a full tmpfs where one can be mounted) while
DataLoader workers live, workers that cannot hand their batches over (shared memory limited),
and a run whose every image failed.
"""

from __future__ import annotations

import json
import resource
import subprocess
from pathlib import Path

import pytest

from amg_lightning.results.shards import iter_results
from tests.helpers.jpeg_shards import write_jpeg_shards
from tests.helpers.predict import run_predict
from tests.helpers.shards import write_tar

pytestmark = pytest.mark.e2e

FAST = ["model=tiny", "points_per_side=4", "pred_iou_thresh=0.0", "stability_score_thresh=0.0"]
# A whole run here takes seconds; a hang at exit would take forever.
TIMEOUT_S = 120


def last_line(finished: subprocess.CompletedProcess) -> str:
    """The log's last line (the progress bar's redraws, after a carriage return, left out)."""
    return finished.stdout.replace("\r", "\n").strip().splitlines()[-1]


def failed_line_under_file_size_limit(args: list[str], cwd: Path, kib: int) -> str:
    """predict.py with no file, shared memory included, growing past `kib` KiB (EFBIG;
    Python ignores SIGXFSZ): it must end with exit status 1 and no traceback; its last line."""

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (kib * 1024, kib * 1024))

    finished = run_predict(args, cwd, TIMEOUT_S, preexec_fn=limit_file_size)
    output = finished.stdout + finished.stderr
    assert finished.returncode == 1, output
    assert "Traceback" not in output
    return last_line(finished)


def assert_resume_does_the_rest(args: list[str], cwd: Path, out: Path, keys: list[str]) -> None:
    resumed = run_predict([*args, "resume=true"], cwd, TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert sorted(r["image"]["key"] for r in iter_results(out)) == keys


def test_a_write_error_while_workers_live_ends_the_run_with_one_line(tmp_path: Path) -> None:
    # The workers' batches (the tiny model's 256-pixel crops, 147 KiB) fit under the limit; the
    # output shard of 96 images (about 3 KiB each) does not.
    keys = write_jpeg_shards(tmp_path / "shards", [48, 48])
    out = tmp_path / "out"
    args = [*FAST, f"data.urls={tmp_path / 'shards'}", f"output_dir={out}", "shard_size=100"]
    args += ["data.num_workers=2"]
    line = failed_line_under_file_size_limit(args, tmp_path, 256)
    assert "error: OSError: [Errno 27] File too large" in line
    written = sum(1 for _ in iter_results(out))
    assert line.endswith(f"{written} images written, resume=true continues")
    assert_resume_does_the_rest(args, tmp_path, out, keys)


def test_a_batch_workers_cannot_hand_over_ends_the_run_with_one_line(tmp_path: Path) -> None:
    # 160 x 120 images (57 KiB decoded) cannot go into the shared memory through which workers
    # hand batches over: under the same 16 KiB limit the run must end, not wait forever.
    keys = write_jpeg_shards(tmp_path / "shards", [4, 4], image_size=(160, 120))
    out = tmp_path / "out"
    args = [*FAST, f"data.urls={tmp_path / 'shards'}", f"output_dir={out}", "data.num_workers=2"]
    line = failed_line_under_file_size_limit(args, tmp_path, 16)
    assert "cannot hand a batch of images to the main process" in line, line
    assert "data.num_workers=0" in line and "/dev/shm" in line
    assert line.endswith("0 images written, resume=true continues")
    assert_resume_does_the_rest(args, tmp_path, out, keys)


@pytest.fixture
def full_folder(tmp_path: Path):
    """A 192 KiB tmpfs: the output folder fills up after a few shards (needs root)."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(folder)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_is_named_in_one_line(tmp_path: Path, full_folder: Path) -> None:
    write_jpeg_shards(tmp_path / "shards", [60, 60], image_size=(96, 80))
    args = [*FAST, f"data.urls={tmp_path / 'shards'}", f"output_dir={full_folder / 'out'}"]
    finished = run_predict([*args, "shard_size=5", "data.num_workers=2"], tmp_path, TIMEOUT_S)
    output = finished.stdout + finished.stderr
    assert finished.returncode == 1, output
    assert "Traceback" not in output
    written = sum(1 for _ in iter_results(full_folder / "out"))  # every named shard is whole
    assert "error: output folder full; " in last_line(finished)
    assert last_line(finished).endswith(f"{written} images written, resume=true continues")


def test_a_run_whose_every_image_failed_exits_non_zero(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    write_tar(shards / "bad.tar", [(f"b{i}.jpg", b"not an image") for i in range(3)])
    out = tmp_path / "out"
    args = [*FAST, f"data.urls={shards}", f"output_dir={out}", "data.num_workers=0"]
    finished = run_predict(args, tmp_path, TIMEOUT_S)
    assert finished.returncode == 1, finished.stdout + finished.stderr
    line = last_line(finished)
    assert "failed: 3 of 3 images could not be segmented, more than max_error_fraction=0.5" in line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == 3 and "more than max_error_fraction" in summary["failed"]

    again = run_predict(
        [*args, f"output_dir={tmp_path / 'out2'}", "max_error_fraction=1"], tmp_path, TIMEOUT_S
    )
    assert again.returncode == 0, again.stdout + again.stderr
