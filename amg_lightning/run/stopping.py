"""Stopping a run on SIGTERM, SIGINT or SIGUSR2 at the next batch boundary, complete shards."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

import lightning
from lightning.pytorch.callbacks import Callback

from amg_lightning.utils.signals import STOP_SIGNALS, forget_stop_request, request_stop


class RunInterrupted(Exception):
    """Prediction ended early on a signal; the results written so far are complete.

    `earlier_handler` is the signal's handler from before the run, if the program had one
    (submitit's, which requeues the job): `pass_on` calls it once the run has stopped.
    """

    def __init__(
        self, signum: int | None, summary: dict[str, Any] | None, earlier_handler: Any = None
    ) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum
        self.summary = summary
        self.earlier_handler = earlier_handler

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process the signal ended; else 1."""
        return 128 + self.signum if self.signum else 1

    def pass_on(self) -> None:
        """Calls the earlier handler (submitit's requeue exits the process), if there is one."""
        if self.signum is not None and _is_programs_own(self.earlier_handler):
            self.earlier_handler(self.signum, None)


def _is_programs_own(handler: Any) -> bool:
    """Whether a handler is one a program installed, not Python's or the system's default."""
    return callable(handler) and handler is not signal.default_int_handler


class StopOnSignal(Callback):
    """Turns SIGTERM, SIGINT and SIGUSR2 into an early but ordinary end of prediction.

    The handler only notes the signal, and passes it on to the rank processes Lightning
    started, or to the job's own process (a signal sent to the main process alone does not
    reach them). At the next batch boundary the prediction loop ends as if the data had, so
    on every rank the writer closes its open shard, writes its counts and rank 0 the summary;
    a wait for the next batch (a stalled read) ends at once (utils/signals.py). Further
    signals are ignored. Lightning's own SIGTERM handler is replaced while
    predicting: it would broadcast from inside the handler, which can deadlock against the
    writer's closing barrier.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._forward: Callable[[int], None] | None = None
        self._previous: dict[int, Any] = {}
        self._owner = os.getpid()
        forget_stop_request()

    def install(self) -> None:
        """Handle the stop signals from now on (the handlers found first are kept to restore)."""
        for signum in STOP_SIGNALS:
            self._previous.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self._handle)

    def forward_to(self, send: Callable[[int], None]) -> None:
        """Pass the signal on with `send` (a child's send_signal), also one caught already."""
        self._forward = send
        if self.signum is not None:
            send(self.signum)

    def interruption(self, summary: dict[str, Any] | None) -> RunInterrupted:
        """The exception that ends a stopped run, with the handler that was there before it."""
        return RunInterrupted(self.signum, summary, self._previous.get(self.signum))

    def restore(self) -> None:
        """Put back the handlers found first (kept: `interruption` names the signal's); this
        run's stop no longer ends waits for data."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        forget_stop_request()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._owner or self.signum is not None:
            return  # a forked worker before it ignores signals, or a repeat
        self.signum = signum
        if self._forward is not None:
            self._forward(signum)
        request_stop()  # raises StopRequested if the main process is waiting for data

    def on_predict_start(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule
    ) -> None:
        launcher = trainer.strategy.launcher
        if launcher is not None:
            self._forward = launcher.kill
        self.install()

    def on_predict_batch_start(self, *args: Any, **kwargs: Any) -> None:
        self._stop_if_asked()

    def on_predict_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._stop_if_asked()

    def _stop_if_asked(self) -> None:
        if self.signum is not None:
            # Lightning's prediction loop catches StopIteration around each step and ends
            # there, then runs on_predict_end as after the last batch (Lightning 2.6).
            raise StopIteration
