"""A prediction progress bar that shows images/s and masks/s (rank 0 only, as all bars)."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class ThroughputProgressBar(TQDMProgressBar):
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_predict_start(trainer, pl_module)
        self._images, self._masks, self._start = 0, 0, time.perf_counter()

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
