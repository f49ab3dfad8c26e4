"""Stopping a run on SIGTERM or SIGINT at the next batch boundary, with complete shards."""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import Any

import lightning
from lightning.pytorch.callbacks import Callback

from amg_lightning.utils.signals import STOP_SIGNALS, forget_stop_request, request_stop


class RunInterrupted(Exception):
    """Prediction ended early on a signal; the results written so far are complete."""

    def __init__(self, signum: int | None, summary: dict[str, Any] | None) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum
        self.summary = summary

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process the signal ended; else 1."""
        return 128 + self.signum if self.signum else 1


class StopOnSignal(Callback):
    """Turns SIGTERM and SIGINT into an early but ordinary end of prediction.

    The handler only notes the signal, and passes it on to the rank processes Lightning
    started (a signal sent to the main process alone does not reach them). At the next batch
    boundary the prediction loop ends as if the data had, so on every rank the writer closes
    its open shard, writes its counts and rank 0 the summary; a wait for the next batch (a
    stalled read) ends at once (utils/signals.py). Further signals are ignored.
    Lightning's own SIGTERM handler is replaced while predicting: it would broadcast from
    inside the handler, which can deadlock against the writer's closing barrier.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._launcher: Any = None
        self._previous: dict[int, Any] = {}
        self._owner = os.getpid()
        forget_stop_request()

    def install(self) -> None:
        """Handle the stop signals from now on (the handlers found first are kept to restore)."""
        for signum in STOP_SIGNALS:
            self._previous.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self._handle)

    def restore(self) -> None:
        """Puts the handlers found first back; this run's stop no longer ends waits for data."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        forget_stop_request()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._owner or self.signum is not None:
            return  # a forked worker before it ignores signals, or a repeat
        self.signum = signum
        if self._launcher is not None:
            self._launcher.kill(signum)
        request_stop()  # raises StopRequested if the main process is waiting for data

    def on_predict_start(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule
    ) -> None:
        self._launcher = trainer.strategy.launcher
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
