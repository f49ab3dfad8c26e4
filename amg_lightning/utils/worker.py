"""One thread that does slow work (writing to disk) in the order it was handed over."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

# How often an idle worker looks whether the main thread has ended.
POLL_S = 0.2
_END = None  # what `close` queues after the last work


class OrderedWorker:
    """Runs callables one after another on a thread of its own, in the order submitted.

    At most `max_pending` wait to run: `submit` blocks while they do, so a slow disk slows the
    caller down instead of filling memory. The first exception a callable raises is kept and
    raised again in the caller's thread, by the next `submit` and by `close`; what was
    submitted after it is dropped unrun (nothing more is written).
    """

    def __init__(self, max_pending: int, name: str) -> None:
        self._pending: queue.Queue[Callable[[], None] | None] = queue.Queue(max_pending)
        self._error: BaseException | None = None
        # Not a daemon, so that exiting never cuts a write short; `_run` ends by itself once
        # the main thread has ended, even when `close` was never called.
        self._thread = threading.Thread(target=self._run, name=name)
        self._thread.start()

    def submit(self, work: Callable[[], None]) -> None:
        """Queues `work`, after waiting for room; raises the error an earlier work raised."""
        self._raise_error()
        self._pending.put(work)

    def close(self, raise_error: bool = True) -> None:
        """Waits until everything submitted has run (or been dropped), ends the thread, and
        raises the first error a work raised, unless `raise_error` is False."""
        if self._thread.is_alive():
            self._pending.put(_END)  # room comes: the thread takes work until it ends
            self._thread.join()
        if raise_error:
            self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while threading.main_thread().is_alive():
            try:
                work = self._pending.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if work is _END:
                return
            if self._error is not None:
                continue  # taken anyway, so that a `submit` waiting for room goes on
            try:
                work()
            except BaseException as error:  # raised again in the caller's thread
                self._error = error
