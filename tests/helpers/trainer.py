"""The Lightning Trainer the in-process prediction tests run: one CPU process, no logger."""

from __future__ import annotations

from collections.abc import Iterable

import lightning


def cpu_trainer(callbacks: Iterable[lightning.Callback]) -> lightning.Trainer:
    """A real Trainer on one CPU device, without logger or progress bar."""
    return lightning.Trainer(
        accelerator="cpu",
        devices=1,
        callbacks=list(callbacks),
        logger=False,
        enable_progress_bar=False,
    )
