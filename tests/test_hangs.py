"""Runs that could hang end within seconds: SIGTERM during a stalled remote read, a dead rank.

Real `predict.py` processes; the time limits are far below what the hang would take (the
60 s `data.read_timeout`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from amg_lightning.results.run_folder import error_paths, shard_paths, unfinished_shard_paths
from tests.helpers.http_shards import serving
from tests.helpers.interrupts import (
    PredictProcess,
    assert_only_complete_shards,
    resume_and_check,
    wait_until,
    written_keys,
)
from tests.helpers.jpeg_shards import write_jpeg_shards

pytestmark = pytest.mark.e2e

RUN = ["model=tiny", "points_per_side=4", "shard_size=1"]
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.num_workers=1"]
TIMEOUT_S = 240
# From the signal to the exit: closing the shard, the summary, and the interpreter's exit.
STOP_S = 15


@pytest.mark.parametrize("workers", [0, 2], ids=["reading-in-main-process", "reading-in-worker"])
def test_sigterm_ends_a_stalled_read_within_seconds(tmp_path: Path, workers: int) -> None:
    """The main process waits for an http shard that never answers (in its own read, or on the
    worker reading it); SIGTERM ends the run at once, and resume reads the shard again."""
    keys = write_jpeg_shards(tmp_path / "shards", [3, 2])
    local, remote = sorted((tmp_path / "shards").iterdir())
    out = tmp_path / "out"
    with serving(b"") as server:  # accepts the connection, never answers
        args = [*RUN, f"data.urls=[{local},{server.url}]", f"output_dir={out}"]
        args.append(f"data.num_workers={workers}")
        run = PredictProcess(args, tmp_path)
        wait_until(server.requested.is_set, TIMEOUT_S, run)
        time.sleep(1)  # the main process is waiting for the remote shard's first batch
        signalled = time.monotonic()
        run.signal_process(signal.SIGTERM)

        assert run.wait(TIMEOUT_S) == 128 + signal.SIGTERM, run.output
        assert time.monotonic() - signalled < STOP_S, run.output
        summary = json.loads((out / "summary.json").read_text())
        assert summary["interrupted"] is True and summary["errors"] == 0
        lines = [line for line in run.output.splitlines() if "interrupted after" in line]
        assert len(lines) == 1, run.output
        assert lines[0].endswith(
            f"interrupted after {summary['images']} images; rerun with resume=true"
        )
        assert "Traceback" not in run.output
        assert not error_paths(out) and not unfinished_shard_paths(out)
        assert not (out / "run.lock").exists()
        assert_only_complete_shards(out)
        assert sum(written_keys(out).values()) == summary["images"] < len(keys)

        server.answer_with(remote.read_bytes())
        resume_and_check(args, tmp_path, keys)


def rank_1_pid(main_pid: int) -> int | None:
    """The process Lightning started for rank 1 (started with LOCAL_RANK=1), if it runs yet.

    The main process's other children are its DataLoader workers, forked without it.
    """
    children = Path(f"/proc/{main_pid}/task/{main_pid}/children").read_text().split()
    for pid in children:
        with contextlib.suppress(OSError):
            if b"LOCAL_RANK=1" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return int(pid)
    return None


def has_ended(pid: int) -> bool:
    """Whether a process that is not our child has ended (gone, or a zombie nobody reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("dead_rank", [1, 0])
def test_dead_ddp_rank_ends_the_other_with_one_line(tmp_path: Path, dead_rank: int) -> None:
    """SIGKILL one of two DDP ranks mid-run: the other ends within seconds with one line
    naming the dead rank, exit status 1 (seen where it is the main process), the lock released
    or left by a dead process; resume then does every image once.

    Each rank reads one shard of 150 images, so the survivor has many seconds of work left.
    """
    keys = write_jpeg_shards(tmp_path / "shards", [150, 150])
    out = tmp_path / "out"
    args = [*RUN, *DDP, f"data.urls={tmp_path / 'shards'}", f"output_dir={out}"]
    run = PredictProcess(args, tmp_path)
    wait_until(lambda: len({p.name[:10] for p in shard_paths(out)}) == 2, TIMEOUT_S, run)
    rank_1 = rank_1_pid(run.process.pid)
    assert rank_1 is not None
    survivor = run.process.pid if dead_rank else rank_1
    os.kill(rank_1 if dead_rank else run.process.pid, signal.SIGKILL)
    killed = time.monotonic()

    if dead_rank == 1:
        assert run.wait(TIMEOUT_S) == 1, run.output
    else:
        run.wait(TIMEOUT_S)
        wait_until_ended = time.monotonic() + TIMEOUT_S
        while not has_ended(survivor) and time.monotonic() < wait_until_ended:
            time.sleep(0.1)
    assert time.monotonic() - killed < STOP_S, run.output
    lines = [line for line in run.output.splitlines() if "resume=true" in line]
    assert len(lines) == 1, run.output
    assert re.search(
        rf"error: rank {dead_rank} died(?: \(killed by SIGKILL\))?; \d+ images written, "
        "resume=true continues$",
        lines[0],
    ), run.output
    # Only the killed rank's DataLoader worker may print one, as it dies with its rank.
    tracebacks = [line for line in run.output.splitlines() if "Traceback" in line]
    assert all(line.startswith(f"[rank{dead_rank}]") for line in tracebacks), run.output
    assert not (out / "run.lock").exists() if dead_rank else (out / "run.lock").exists()
    assert_only_complete_shards(out)

    resume_and_check(args, tmp_path, keys)
