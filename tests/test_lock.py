"""One run per output folder: a second run is refused while the first holds `run.lock`, and
a lock its process left behind does not block `resume=true`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from amg_lightning.results.run_folder import shard_paths
from amg_lightning.run import lock as run_lock
from amg_lightning.run.config import ConfigError
from amg_lightning.run.folder import prepare_output_dir
from amg_lightning.run.lock import FolderInUse, RunLock
from tests.helpers.config import forget_config, run_in_process
from tests.helpers.interrupts import PredictProcess, wait_until, written_keys
from tests.helpers.jpeg_shards import write_jpeg_shards
from tests.helpers.predict import run_predict

FAST = ["model=tiny", "points_per_side=4", "data.num_workers=0"]
IDENTITY = {"settings": {"points_per_side": 4}, "model": {"model_type": "tiny"}}


@pytest.fixture(autouse=True)
def _forget_hydra_config():
    yield
    forget_config()


def dead_pid() -> int:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    return finished.pid


def write_lock(output_dir: Path, age_s: float = 0.0, **fields: object) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": "then"}
    holder |= {"run_id": "earlier"} | fields
    path = output_dir / "run.lock"
    path.write_text(json.dumps(holder))
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


@pytest.mark.e2e
def test_second_run_into_a_folder_in_use_is_refused(tmp_path: Path) -> None:
    keys = write_jpeg_shards(tmp_path / "shards", [5, 5])
    # The first run's second shard arrives only when the test says so: it holds the folder.
    gate = tmp_path / "go"
    waiter = tmp_path / "wait.sh"
    waiter.write_text(
        f"while [ ! -e {gate} ]; do sleep 0.05; done; cat {tmp_path / 'shards' / 'in-000001.tar'}"
    )
    urls = f"data.urls=[{tmp_path / 'shards' / 'in-000000.tar'},'pipe:sh {waiter}']"
    out = tmp_path / "out"
    args = [*FAST, "shard_size=4", f"output_dir={out}"]  # 4: one image is read ahead
    first = PredictProcess([*args, urls], tmp_path)
    wait_until(lambda: bool(shard_paths(out)), 240, first)
    holder = (out / "run.lock").read_text()

    for extra in ([], ["resume=true"]):
        second = run_predict([*args, urls, *extra], tmp_path, 240)
        output = second.stdout + second.stderr
        assert second.returncode == 2, output
        assert "Traceback" not in output
        (line,) = [line for line in output.splitlines() if "error" in line.lower()]
        assert f"is in use by another run (host {socket.gethostname()}, " in line
        assert f"pid {first.process.pid}, started " in line
        assert (out / "run.lock").read_text() == holder

    gate.touch()
    assert first.wait(240) == 0, first.output
    assert not (out / "run.lock").exists()
    assert written_keys(out) == Counter(keys)
    assert json.loads((out / "summary.json").read_text())["images"] == len(keys)


def test_lock_of_a_dead_process_on_this_host_needs_resume(tmp_path: Path) -> None:
    write_jpeg_shards(tmp_path / "shards", [2])
    out = tmp_path / "out"
    stale = write_lock(out, pid=dead_pid())
    run = [*FAST, f"data.urls={tmp_path / 'shards'}", f"output_dir={out}"]
    with pytest.raises(ConfigError, match=r"already holds results \(run.lock\): pass resume=true"):
        run_in_process(run)
    assert stale.exists()
    assert run_in_process([*run, "resume=true"])["images"] == 2
    assert not stale.exists()


@pytest.mark.parametrize(
    ("host", "age_s", "stale"),
    [
        pytest.param("this", 0.0, False, id="live-process-here"),
        pytest.param("elsewhere", 10.0, False, id="fresh-heartbeat-elsewhere"),
        pytest.param("elsewhere", run_lock.STALE_AFTER_S + 60, True, id="old-heartbeat-elsewhere"),
    ],
)
def test_lock_holder_is_judged_by_pid_here_and_by_heartbeat_elsewhere(
    tmp_path: Path, host: str, age_s: float, stale: bool
) -> None:
    out = tmp_path / "out"
    host_name = socket.gethostname() if host == "this" else "node-that-is-not-here"
    path = write_lock(out, age_s, host=host_name, pid=os.getpid() if host == "this" else 4242)
    if stale:
        prepared = prepare_output_dir(out, resume=True, identity=IDENTITY)
        assert json.loads(path.read_text())["pid"] == os.getpid()
        prepared.release()
        assert not path.exists()
    else:
        with pytest.raises(FolderInUse, match=f"in use by another run \\(host {host_name}, pid"):
            prepare_output_dir(out, resume=True, identity=IDENTITY)
        assert json.loads(path.read_text())["run_id"] == "earlier"


def test_unreadable_lock_is_stale(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    lock = out / "run.lock"
    lock.write_text("")  # being written, or a crash between creating and writing it
    with pytest.raises(FolderInUse):
        prepare_output_dir(out, resume=True, identity=IDENTITY)
    old = time.time() - run_lock.UNREADABLE_STALE_AFTER_S - 1
    os.utime(lock, (old, old))
    prepare_output_dir(out, resume=True, identity=IDENTITY).release()
    assert not (out / "run.lock").exists()


def test_lock_of_an_earlier_attempt_of_the_same_slurm_job_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    write_lock(out, host="other-node", pid=1, slurm_job="77", slurm_restart="0")
    prepare_output_dir(out, resume=True, identity=IDENTITY).release()
    write_lock(out, host="other-node", pid=1, slurm_job="77", slurm_restart="1")
    with pytest.raises(FolderInUse):
        prepare_output_dir(out, resume=True, identity=IDENTITY)


def test_other_ranks_accept_only_their_runs_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.delenv(run_lock.RUN_ID_ENV, raising=False)  # restored absent afterwards
    lock = RunLock.acquire(out, take_over_stale=False)
    run_id = lock.holder.run_id
    assert os.environ[run_lock.RUN_ID_ENV] == run_id  # what the ranks Lightning starts inherit
    monkeypatch.setenv("LOCAL_RANK", "1")  # as Lightning starts rank 1
    assert prepare_output_dir(out, resume=False, identity=IDENTITY).lock is None
    monkeypatch.setenv(run_lock.RUN_ID_ENV, "another-run")
    monkeypatch.setattr(run_lock, "WAIT_FOR_LOCK_S", 0.2)
    with pytest.raises(FolderInUse, match="is not held by this run"):
        prepare_output_dir(out, resume=False, identity=IDENTITY)
    monkeypatch.setenv(run_lock.RUN_ID_ENV, run_id)
    lock.release()
    assert not (out / "run.lock").exists()
    assert run_lock.RUN_ID_ENV not in os.environ


def test_heartbeat_keeps_the_lock_fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.05)
    monkeypatch.delenv(run_lock.RUN_ID_ENV, raising=False)
    lock = RunLock.acquire(tmp_path, take_over_stale=False)
    long_ago = time.time() - 3600
    os.utime(lock.path, (long_ago, long_ago))
    deadline = time.monotonic() + 10
    while lock.path.stat().st_mtime < long_ago + 60 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lock.path.stat().st_mtime > time.time() - 60
    lock.release()
