"""Runs that could hang end within seconds: SIGTERM during a stalled remote read.

Real `predict.py` processes; the time limits are far below what the hang would take (the
60 s `data.read_timeout`).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from amg_lightning.results.run_folder import error_paths, unfinished_shard_paths
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
