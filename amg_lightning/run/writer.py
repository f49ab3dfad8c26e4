"""Streams predictions to WebDataset shards of COCO-RLE masks, one set of shards per rank.

Shards are written as `*.tar.tmp` and renamed when complete, so a killed run leaves only
complete shards behind; `completed_keys` lists their images so a resumed run can skip them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning
import webdataset as wds
from lightning.pytorch.callbacks import BasePredictionWriter

from amg_lightning.results.run_folder import (
    RANK_FILE,
    counts_path,
    errors_path,
    shard_name,
    shard_paths,
    shard_rank_and_number,
    summary_path,
    unfinished_path,
    write_json_atomically,
)
from amg_lightning.results.shards import shard_keys
from amg_lightning.run.ids import MAX_SHARD_SIZE, annotation_id, image_id

COUNT_NAMES = ("images", "masks", "errors")


def completed_keys(output_dir: str | Path) -> set[str]:
    """Keys of the images in the complete shards of `output_dir` (empty if it does not exist)."""
    return {key for path in shard_paths(output_dir) for key in shard_keys(path)}


class RleShardWriter(BasePredictionWriter):
    """Writes each batch's results as they come; nothing is kept in memory.

    Successful images go to `masks-r{rank:03d}-{n:06d}.tar`, `shard_size` per shard;
    failed ones to `errors-r{rank:03d}.jsonl`. Rank 0 writes `summary.json` at the end.
    """

    def __init__(self, output_dir: str, shard_size: int = 1000, config: dict | None = None) -> None:
        super().__init__(write_interval="batch")
        if not 1 <= shard_size <= MAX_SHARD_SIZE:
            raise ValueError(f"shard_size must be in 1..{MAX_SHARD_SIZE}, got {shard_size}")
        self.output_dir = Path(output_dir)
        self.shard_size = shard_size
        self.config = config or {}
        self.rank = 0
        self._next_number = 0
        self._shard: wds.TarWriter | None = None
        self._shard_path: Path | None = None
        self._shard_images = 0
        self._shard_masks = 0
        self._counts = dict.fromkeys(COUNT_NAMES, 0)
        self._started = 0.0

    def on_predict_start(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule
    ) -> None:
        self.rank = trainer.global_rank
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self._leftovers(trainer.world_size):
            leftover.unlink()
        own_numbers = [
            number
            for rank, number in map(shard_rank_and_number, shard_paths(self.output_dir))
            if rank == self.rank
        ]
        self._next_number = max(own_numbers, default=-1) + 1
        self._counts = dict.fromkeys(COUNT_NAMES, 0)
        self._started = time.perf_counter()

    def _leftovers(self, world_size: int) -> list[Path]:
        """A killed run's unfinished shards and an earlier run's error records, for this rank.

        Their images are not in complete shards, so this run does them again and records them
        anew. Files of ranks an earlier, larger run had are cleared by rank % world_size.
        """
        candidates = [*self.output_dir.glob("masks-r*.tar.tmp"), *self.output_dir.glob("errors-r*")]
        return [
            path
            for path in candidates
            if (match := RANK_FILE.match(path.name)) and int(match[1]) % world_size == self.rank
        ]

    def write_on_batch_end(
        self,
        trainer: lightning.Trainer,
        pl_module: lightning.LightningModule,
        prediction: list[dict[str, Any]],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        for result in prediction:
            if result["error"] is None:
                self._write_image(result)
            else:
                self._write_error(result)

    def on_predict_end(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule
    ) -> None:
        self._finish_shard()
        wall_seconds = time.perf_counter() - self._started
        counts = {**self._counts, "wall_seconds": wall_seconds}
        counts_path(self.output_dir, self.rank).write_text(json.dumps(counts))
        trainer.strategy.barrier("rle_shard_writer_summary")
        if trainer.is_global_zero:
            self._write_summary(trainer.world_size)

    def on_exception(
        self,
        trainer: lightning.Trainer,
        pl_module: lightning.LightningModule,
        exception: BaseException,
    ) -> None:
        # Images already written are complete records; keep them rather than redo them.
        self._finish_shard()

    def _write_image(self, result: dict[str, Any]) -> None:
        if self._shard is None:
            self._open_shard()
            self._shard_masks = 0
        # Ids from the record's place in its shard: unique in the folder (see run/ids.py).
        _, number = shard_rank_and_number(self._shard_path)
        image = {name: result[name] for name in ("key", "url", "file_name", "height", "width")}
        image["image_id"] = image_id(self.rank, number, self._shard_images)
        annotations = [
            {"id": annotation_id(self.rank, number, self._shard_masks + index), **record}
            for index, record in enumerate(result["annotations"])
        ]
        sample = {"image": image, "annotations": annotations}
        self._shard.write({"__key__": result["key"], "json": sample})
        self._shard_masks += len(annotations)
        self._counts["images"] += 1
        self._counts["masks"] += len(annotations)
        self._shard_images += 1
        if self._shard_images >= self.shard_size:
            self._finish_shard()

    def _write_error(self, result: dict[str, Any]) -> None:
        line = json.dumps({name: result[name] for name in ("key", "url", "error")})
        with errors_path(self.output_dir, self.rank).open("a") as errors:
            errors.write(line + "\n")
        self._counts["errors"] += 1

    def _open_shard(self) -> None:
        self._shard_path = self.output_dir / shard_name(self.rank, self._next_number)
        self._shard = wds.TarWriter(str(unfinished_path(self._shard_path)))
        self._next_number += 1
        self._shard_images = 0

    def _finish_shard(self) -> None:
        """Close the open shard and give it its final name, so it counts as complete."""
        if self._shard is None:
            return
        self._shard.close()
        unfinished_path(self._shard_path).rename(self._shard_path)
        self._shard = None

    def _write_summary(self, world_size: int) -> None:
        """Totals over this run's ranks, from the counts file each rank wrote."""
        per_rank = [
            json.loads(counts_path(self.output_dir, r).read_text()) for r in range(world_size)
        ]
        totals = {name: sum(counts[name] for counts in per_rank) for name in COUNT_NAMES}
        wall_seconds = max(counts["wall_seconds"] for counts in per_rank)
        summary = {
            **totals,
            "wall_seconds": wall_seconds,
            "images_per_second": totals["images"] / wall_seconds if wall_seconds else 0.0,
            "masks_per_second": totals["masks"] / wall_seconds if wall_seconds else 0.0,
            "config": self.config,
        }
        write_json_atomically(summary_path(self.output_dir), summary)
