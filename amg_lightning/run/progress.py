"""A prediction progress bar that shows images/s and masks/s (rank 0 only, as all bars), and
a total with an ETA where the datamodule can count its batches before the run."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class ThroughputProgressBar(TQDMProgressBar):
    """Lightning's bar, whose total is the datamodule's `count_predict_batches()` if it has one.

    An iterable dataset has no length, so Lightning's own total is unknown (`n/?`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._counted_batches: int | None = None

    @property
    def total_predict_batches_current_dataloader(self) -> int | float:
        if self._counted_batches is not None:
            return self._counted_batches
        return super().total_predict_batches_current_dataloader

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_predict_start(trainer, pl_module)
        self._images, self._masks, self._start = 0, 0, time.perf_counter()
        # Only a shown bar needs the count; the other ranks' bars are disabled.
        count = getattr(trainer.datamodule, "count_predict_batches", None)
        self._counted_batches = count() if count is not None and self.is_enabled else None

    def on_predict_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._images += len(outputs)
        self._masks += sum(len(result["annotations"]) for result in outputs)
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        self.predict_progress_bar.set_postfix(
            {
                "images/s": f"{self._images / elapsed:.2f}",
                "masks/s": f"{self._masks / elapsed:.1f}",
            },
            refresh=False,
        )
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # Closed now, so its last redraw comes before the line that says what went wrong.
        if self._predict_progress_bar is not None:
            self._predict_progress_bar.close()
