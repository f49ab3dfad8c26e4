"""Two real DDP ranks (gloo on the CPU) give the same masks as one process, also after a rank
was killed and the run resumed. Thresholds are opened so each image has a hundred masks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from amg_lightning.results.run_folder import shard_paths
from amg_lightning.results.shards import iter_results
from tests.helpers.jpeg_shards import write_jpeg_shards
from tests.helpers.predict import PREDICT, run_predict

pytestmark = pytest.mark.e2e

OPEN = ["model=tiny", "points_per_side=6", "pred_iou_thresh=0", "stability_score_thresh=0"]
OPEN += ["box_nms_thresh=1.0", "data.num_workers=1", "shard_size=1"]
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
# One thread per process: two ranks on two cores, and the same float sums in every run.
ENV = {"OMP_NUM_THREADS": "1"}
TIMEOUT_S = 300


def by_key(output_dir: Path) -> dict[str, list[dict]]:
    """Annotations per key, without their ids (which say where a record was written: see
    run/ids.py); a key written twice fails."""
    found: dict[str, list[dict]] = {}
    for result in iter_results(output_dir):
        key = result["image"]["key"]
        assert key not in found, f"{key} written twice"
        found[key] = [
            {name: value for name, value in annotation.items() if name != "id"}
            for annotation in result["annotations"]
        ]
    return found


def run_ok(args: list[str], cwd: Path) -> None:
    finished = run_predict(args, cwd, TIMEOUT_S, env=ENV)
    assert finished.returncode == 0, finished.stdout + finished.stderr


@pytest.fixture(scope="module")
def single_process(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Shards of 16 images and the masks one process makes of them."""
    root = tmp_path_factory.mktemp("ddp_content")
    keys = write_jpeg_shards(root / "shards", [4, 4, 4, 4], image_size=(128, 96))
    run_ok([*OPEN, f"data.urls={root / 'shards'}", f"output_dir={root / 'one'}"], root)
    masks = by_key(root / "one")
    assert sorted(masks) == keys
    assert all(len(records) >= 50 for records in masks.values())
    return root / "shards", masks


def test_two_ranks_write_the_masks_of_one_process(tmp_path: Path, single_process) -> None:
    shards, expected = single_process
    run_ok([*OPEN, *DDP, f"data.urls={shards}", f"output_dir={tmp_path / 'two'}"], tmp_path)
    ranks = {path.name[: len("masks-r000")] for path in shard_paths(tmp_path / "two")}
    assert ranks == {"masks-r000", "masks-r001"}
    two = by_key(tmp_path / "two")
    assert sorted(two) == sorted(expected)
    for key in expected:
        assert two[key] == expected[key], key


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is `pid`, from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


def rank1_pid(main: subprocess.Popen) -> int | None:
    """Lightning starts rank 1 as a child of rank 0 running predict.py again."""
    for pid in child_pids(main.pid):
        try:
            if str(PREDICT) in Path(f"/proc/{pid}/cmdline").read_text():
                return pid
        except OSError:
            continue
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds rank 1 through /proc")
def test_resume_after_a_rank_is_killed(tmp_path: Path, single_process) -> None:
    shards, expected = single_process
    out = tmp_path / "out"
    args = [*OPEN, *DDP, f"data.urls={shards}", f"output_dir={out}"]
    main = subprocess.Popen(
        [sys.executable, str(PREDICT), *args],
        cwd=tmp_path,
        env={**os.environ, **ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        # Kill rank 1 once it has completed two shards, in the middle of the run.
        while len(list(out.glob("masks-r001-*.tar"))) < 2:
            assert main.poll() is None, "the run ended before rank 1 could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        pid = rank1_pid(main)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        # Rank 0 may wait for its peer forever; the run is dead either way.
        with contextlib.suppress(subprocess.TimeoutExpired):
            main.wait(timeout=20)
    finally:
        os.killpg(main.pid, signal.SIGKILL)
        main.wait()
    partial = by_key(out)
    assert 0 < len(partial) < len(expected)
    for key, records in partial.items():
        assert records == expected[key], key

    run_ok([*args, "resume=true"], tmp_path)
    resumed = by_key(out)
    assert sorted(resumed) == sorted(expected)
    for key in expected:
        assert resumed[key] == expected[key], key
