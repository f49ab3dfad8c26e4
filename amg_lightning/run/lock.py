"""One run per output folder: `run.lock`, created atomically, naming its holder.

Global rank 0 creates the lock with O_CREAT | O_EXCL before any rank writes, and refreshes
its modification time every HEARTBEAT_S seconds while the run lasts. The other ranks of the
same run recognise it by the run id in AMG_RUN_ID (set by rank 0 for the processes Lightning
starts; taken from SLURM's job or torchrun's rendezvous id where those start the ranks).

A lock is stale, and does not block `resume=true`, when its process is gone: on this host
when its pid no longer runs, on another host when its heartbeat is older than STALE_AFTER_S,
or when it was left by an earlier attempt of the same SLURM job (a requeue). A lock without
a readable holder is stale after UNREADABLE_STALE_AFTER_S.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from amg_lightning.results.run_folder import lock_path
from amg_lightning.run.config import ConfigError

RUN_ID_ENV = "AMG_RUN_ID"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
# A lock with no readable holder is being written (microseconds) or was left by a crash.
UNREADABLE_STALE_AFTER_S = 10.0
_UNREADABLE = "unreadable"
# How long another rank waits for rank 0's lock to appear (torchrun and srun start all at once).
WAIT_FOR_LOCK_S = 120.0


class FolderInUse(ConfigError):
    """Another run holds the output folder."""


@dataclass(frozen=True)
class LockHolder:
    """What a lock file says about the run that holds it."""

    host: str
    pid: int
    started: str
    run_id: str
    slurm_job: str | None = None
    slurm_restart: str | None = None

    @classmethod
    def this_process(cls, run_id: str) -> LockHolder:
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            run_id=run_id,
            slurm_job=os.environ.get("SLURM_JOB_ID"),
            slurm_restart=os.environ.get("SLURM_RESTART_COUNT", "0"),
        )

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, started {self.started}"

    def is_stale(self, heartbeat: float) -> bool:
        """Whether the holder is gone (see the module's docstring)."""
        if self.run_id == _UNREADABLE:
            return time.time() - heartbeat > UNREADABLE_STALE_AFTER_S
        job = os.environ.get("SLURM_JOB_ID")
        if job is not None and job == self.slurm_job:
            return self.slurm_restart != os.environ.get("SLURM_RESTART_COUNT", "0")
        if self.host == socket.gethostname():
            return not _process_exists(self.pid)
        return time.time() - heartbeat > STALE_AFTER_S


def read_holder(output_dir: Path) -> tuple[LockHolder, float, str] | None:
    """The lock's holder, heartbeat time and text, or None without a lock.

    A lock that cannot be parsed (a crash between creating and writing it) counts as stale
    once it is UNREADABLE_STALE_AFTER_S old.
    """
    path = lock_path(output_dir)
    try:
        heartbeat = path.stat().st_mtime
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return _parse_holder(text), heartbeat, text


def _parse_holder(text: str) -> LockHolder:
    try:
        return LockHolder(**json.loads(text))
    except (ValueError, TypeError):
        return LockHolder("unknown", -1, "unknown", _UNREADABLE)


def refuse_if_in_use(output_dir: Path) -> None:
    """Raises FolderInUse when a live run holds `output_dir`."""
    found = read_holder(output_dir)
    if found is not None and not found[0].is_stale(found[1]):
        raise FolderInUse(
            f"output_dir {output_dir} is in use by another run ({found[0].describe()}); "
            "wait for it, or choose another output_dir"
        )


def shared_run_id() -> str | None:
    """The run id every rank of this run knows without talking to the others, if any."""
    if os.environ.get(RUN_ID_ENV):
        return os.environ[RUN_ID_ENV]
    if "SLURM_JOB_ID" in os.environ and "SLURM_STEP_ID" in os.environ:
        return f"slurm-{os.environ['SLURM_JOB_ID']}.{os.environ['SLURM_STEP_ID']}"
    if os.environ.get("TORCHELASTIC_RUN_ID", "none") != "none":
        return f"torchelastic-{os.environ['TORCHELASTIC_RUN_ID']}"
    return None


class RunLock:
    """The lock rank 0 holds for a run; `release()` removes it if it is still this run's."""

    def __init__(self, output_dir: Path, holder: LockHolder) -> None:
        self.path = lock_path(output_dir)
        self.holder = holder
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="run-lock", daemon=True)

    @classmethod
    def acquire(cls, output_dir: Path, take_over_stale: bool) -> RunLock:
        """Creates the lock, taking over a stale one if allowed; raises FolderInUse if held.

        The run id is exported in AMG_RUN_ID so that rank processes started later know it.
        """
        run_id = shared_run_id() or uuid.uuid4().hex
        lock = cls(output_dir, LockHolder.this_process(run_id))
        try:
            lock._create()
        except FileExistsError:
            found = read_holder(output_dir)
            if found is None or not (take_over_stale and found[0].is_stale(found[1])):
                refuse_if_in_use(output_dir)
                raise FolderInUse(
                    f"output_dir {output_dir} holds the lock of a run that ended without "
                    f"removing it ({found[0].describe() if found else 'unknown'}): "
                    "pass resume=true to continue it"
                ) from None
            lock._take_over(found[2])
        os.environ[RUN_ID_ENV] = run_id
        lock._heartbeat.start()
        return lock

    def _create(self) -> None:
        handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(handle, "w") as stream:
            stream.write(json.dumps(asdict(self.holder)))
            stream.flush()
            os.fsync(stream.fileno())

    def _take_over(self, stale_text: str) -> None:
        """Moves the stale lock aside, checks it is the one judged stale, and creates ours."""
        aside = self.path.with_name(f"{self.path.name}.{os.getpid()}.stale")
        self.path.rename(aside)
        if aside.read_text() != stale_text:  # another run took it over in between: give it back
            os.link(aside, self.path)
            aside.unlink()
            raise FolderInUse(f"output_dir {self.path.parent} was taken by another run")
        aside.unlink()
        self._create()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        found = read_holder(self.path.parent)
        if found is not None and found[0].run_id == self.holder.run_id:
            self.path.unlink(missing_ok=True)
        if os.environ.get(RUN_ID_ENV) == self.holder.run_id:
            del os.environ[RUN_ID_ENV]  # a next run in this process (a multirun job) is another


def check_same_run(output_dir: Path) -> None:
    """For ranks other than 0: the lock, once rank 0 made it, must be this run's."""
    run_id = shared_run_id()
    if run_id is None:
        return  # nothing to recognise it by: rank 0 holds it for all (see docs/running.md)
    deadline = time.monotonic() + WAIT_FOR_LOCK_S
    while (found := read_holder(output_dir)) is None or found[0].run_id != run_id:
        if time.monotonic() > deadline:
            holder = found[0].describe() if found else "nobody"
            raise FolderInUse(f"output_dir {output_dir} is not held by this run ({holder})")
        time.sleep(0.5)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return pid > 0
