"""Sweeps under hydra-submitit-launcher (`hydra/launcher=submitit_local`), DDP jobs included,
and submitit's preemption signal (SIGUSR2) with its requeue: real submitit job processes."""

from __future__ import annotations

import csv
import json
import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.interrupts import PredictProcess, wait_until, written_keys
from tests.helpers.jpeg_shards import write_jpeg_shards
from tests.helpers.predict import run_predict

pytestmark = pytest.mark.e2e

SUBMITIT = ["-m", "hydra/launcher=submitit_local", "model=tiny", "data.num_workers=0"]
DDP = ["trainer=ddp", "trainer.accelerator=cpu"]
TIMEOUT_S = 300


def test_submitit_sweep_of_ddp_jobs_writes_every_job_and_the_report(tmp_path: Path) -> None:
    keys = write_jpeg_shards(tmp_path / "shards", [3])
    sweep_dir = tmp_path / "sweep"
    args = [*SUBMITIT, *DDP, f"data.urls={tmp_path / 'shards'}", "points_per_side=4"]
    # Job 0 is one DDP process, job 1 two: each runs in its own submitit job process.
    args += ["trainer.devices=1,2", f"hydra.sweep.dir={sweep_dir}"]
    done = run_predict(args, cwd=tmp_path, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]

    for job, ranks in (("0", 1), ("1", 2)):
        assert written_keys(sweep_dir / job) == Counter(keys)
        summary = json.loads((sweep_dir / job / "summary.json").read_text())
        assert (summary["images"], summary["interrupted"]) == (len(keys), False)
        assert len(list((sweep_dir / job).glob("counts-r*.json"))) == ranks
    with open(sweep_dir / "sweep.csv", newline="") as table:
        assert [row["trainer.devices"] for row in csv.DictReader(table)] == ["1", "2"]
    assert (sweep_dir / "sweep.md").is_file()
    assert not (tmp_path / "outputs").exists()


def _job_process(sweep_dir: Path) -> int | None:
    """The pid of the process running the sweep's one job: the child of submitit's local
    controller, whose pid names the job's folder under .submitit/."""
    for folder in (sweep_dir / ".submitit").glob("[0-9]*"):
        children = Path(f"/proc/{folder.name}/task/{folder.name}/children")
        if children.is_file() and children.read_text().split():
            return int(children.read_text().split()[0])
    return None


def test_sigusr2_stops_the_job_cleanly_then_submitit_requeues_it(tmp_path: Path) -> None:
    """SIGUSR2 (what submitit_slurm sends before the time limit) stops the job at a batch
    boundary, then submitit's handler requeues it; with resume=true the requeued job
    finishes the rest: every image exactly once."""
    keys = write_jpeg_shards(tmp_path / "shards", [25, 25, 25, 25])
    sweep_dir = tmp_path / "sweep"
    args = [*SUBMITIT, *DDP, "trainer.devices=1", f"data.urls={tmp_path / 'shards'}"]
    args += ["points_per_side=8", "shard_size=5", "resume=true", f"hydra.sweep.dir={sweep_dir}"]
    sweep = PredictProcess(args, tmp_path, name="sweep")
    job_dir = sweep_dir / "0"
    wait_until(lambda: (job_dir / "masks-r000-000000.tar").is_file(), TIMEOUT_S, sweep)
    job = _job_process(sweep_dir)
    assert job is not None, sweep.output
    os.kill(job, signal.SIGUSR2)
    assert sweep.wait(TIMEOUT_S) == 0, sweep.output

    logs = "".join(path.read_text() for path in (sweep_dir / ".submitit").rglob("*_log.*"))
    assert "interrupted after" in logs and "Requeued job" in logs
    assert logs.index("interrupted after") < logs.index("Requeued job")
    assert written_keys(job_dir) == Counter(keys)
    summary = json.loads((job_dir / "summary.json").read_text())
    assert summary["interrupted"] is False
    assert summary["images_already_done"] >= 5
    assert summary["images"] + summary["images_already_done"] == len(keys)
