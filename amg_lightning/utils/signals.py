"""Signals that stop a run, and keeping them away from DataLoader workers."""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader `worker_init_fn`: the main process alone decides when a run stops.

    A SIGTERM or SIGINT sent to the whole process group would otherwise kill the workers, and
    the main process would end in a DataLoader traceback instead of stopping cleanly. The
    workers still end when the main process shuts them down or dies.
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
