"""Signals that stop a run, and keeping them away from DataLoader workers."""

from __future__ import annotations

import atexit
import multiprocessing
import signal
from functools import cache

# SIGUSR2: what submitit (hydra/launcher=submitit_slurm) sends before a time limit or preemption.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader `worker_init_fn`: the main process alone decides when a run stops.

    A stop signal sent to the whole process group would otherwise kill the workers, and
    the main process would end in a DataLoader traceback instead of stopping cleanly. The
    workers still end when the main process shuts them down or dies.
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


@cache
def end_workers_at_exit() -> None:
    """Kills the DataLoader workers still alive when the main process exits (registered once).

    Workers ignore SIGTERM (above), so after an exception multiprocessing's own exit handler,
    which terminates them with SIGTERM and waits, would wait forever. This handler, registered
    after that one, runs before it. A run that ends normally has no workers left by then.
    """
    atexit.register(_kill_live_workers)


def _kill_live_workers() -> None:
    workers = multiprocessing.active_children()
    if workers:
        # torch's SIGCHLD handler would report each killed worker as a failure of its own.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for worker in workers:
        worker.kill()
        worker.join()
