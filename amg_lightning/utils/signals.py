"""Signals that stop a run, keeping them away from DataLoader workers, and waits they cut short."""

from __future__ import annotations

import atexit
import ctypes
import multiprocessing
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

# SIGUSR2: what submitit (hydra/launcher=submitit_slurm) sends before a time limit or preemption.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h

# Process-wide, as signal handlers are: whether the main process waits for the next batch, and
# whether a stop was asked for during this run.
_waiting_for_data = False
_stop_asked = False


class StopRequested(BaseException):
    """A stop signal ended the main process's wait for the next batch.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way (in a
    DataLoader, an http client) takes it for a failed read.
    """


def forget_stop_request() -> None:
    """A new run starts: no stop has been asked for yet."""
    global _stop_asked
    _stop_asked = False


def request_stop() -> None:
    """For a stop signal's handler: ends the wait for data now, or the next one before it starts.

    A stop is otherwise acted on at the next batch boundary, but a wait for data lasts as long
    as a read that stalled (up to data.read_timeout), so the handler raises StopRequested into it.
    Nothing is lost: what was read but not written is not done, and resume does it.
    """
    global _stop_asked
    _stop_asked = True
    if _waiting_for_data:
        raise StopRequested


@contextmanager
def waiting_for_data() -> Iterator[None]:
    """Marks the main process's wait for the next batch, which `request_stop` ends."""
    global _waiting_for_data
    _waiting_for_data = True  # before the check: a signal between the two still ends the wait
    try:
        if _stop_asked:
            raise StopRequested
        yield
    finally:
        _waiting_for_data = False


def init_worker(worker_id: int = 0) -> None:
    """A DataLoader `worker_init_fn`: the main process alone decides when a run stops, and its
    workers die with it.

    A stop signal sent to the whole process group would otherwise kill the workers, and
    the main process would end in a DataLoader traceback instead of stopping cleanly. The
    workers still end when the main process shuts them down; on Linux the kernel kills them
    when it dies (SIGKILL included), where torch's workers would notice only seconds later, or
    after a stalled read, and print tracebacks of their own.
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@cache
def end_workers_at_exit() -> None:
    """Kills the DataLoader workers still alive when the main process exits (registered once).

    Workers ignore SIGTERM (init_worker), so after an exception multiprocessing's own exit handler,
    which terminates them with SIGTERM and waits, would wait forever. This handler, registered
    after that one, runs before it. A run that ends normally has no workers left by then.
    """
    atexit.register(kill_live_workers)


def kill_live_workers() -> None:
    """Kills this process's DataLoader workers now (from the main thread).

    Also where a stop ends a wait for data: a worker blocked in a stalled read would otherwise
    hold the DataLoader's shutdown for seconds per worker, as it ignores SIGTERM.
    """
    workers = multiprocessing.active_children()
    if workers:
        # torch's SIGCHLD handler would report each killed worker as a failure of its own.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for worker in workers:
        worker.kill()
        worker.join()
