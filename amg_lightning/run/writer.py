"""Streams predictions to WebDataset shards of COCO-RLE masks, one set of shards per rank.

A shard is written as `*.tar.tmp`, flushed to disk and only then renamed, so a final-named
shard is always complete, whatever kills the run; `run.resume` reads them back. The writing
is done on a thread of its own, so that the main process goes on to the next batch.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import lightning
import torch
import webdataset as wds
from lightning.pytorch.callbacks import BasePredictionWriter

from amg_lightning.results.names import UniqueNames
from amg_lightning.results.run_folder import (
    RANK_FILE,
    counts_path,
    error_paths,
    errors_path,
    shard_name,
    shard_paths,
    shard_rank_and_number,
    unfinished_path,
    unfinished_shard_paths,
    write_summary,
)
from amg_lightning.run.ids import MAX_SHARD_SIZE, annotation_id, image_id
from amg_lightning.utils.worker import OrderedWorker

COUNT_NAMES = ("images", "masks", "errors")
# Batches handed to the writing thread and not yet written: a few, so that memory stays
# bounded and a slow disk slows prediction down.
PENDING_BATCHES = 4


class RleShardWriter(BasePredictionWriter):
    """Writes each batch's results as they come; nothing is kept in memory.

    Successful images go to `masks-r{rank:03d}-{n:06d}.tar`, `shard_size` per shard;
    failed ones to `errors-r{rank:03d}.jsonl`. Rank 0 writes `summary.json` at the end, with
    `"interrupted": true` when any rank was stopped early (`interrupted()` says so per rank).

    Batches are written in order by an `OrderedWorker` thread, which alone touches the open
    shard and the counts until the run ends: `on_predict_end` and `on_exception` wait for it
    before closing the shard. A write that failed there (a full disk) is raised from the next
    batch, or at the end. A process ended outright (SIGKILL, a dead rank's `os._exit`) leaves
    the open shard `*.tar.tmp`, as without the thread.
    """

    def __init__(
        self,
        output_dir: str,
        shard_size: int = 1000,
        config: dict | None = None,
        interrupted: Callable[[], bool] = lambda: False,
    ) -> None:
        super().__init__(write_interval="batch")
        if not 1 <= shard_size <= MAX_SHARD_SIZE:
            raise ValueError(f"shard_size must be in 1..{MAX_SHARD_SIZE}, got {shard_size}")
        self.output_dir = Path(output_dir)
        self.shard_size = shard_size
        self.config = config or {}
        self.interrupted = interrupted
        self.rank = 0
        self._next_number = 0
        self._shard: wds.TarWriter | None = None
        self._stream: BinaryIO | None = None
        self._shard_path: Path | None = None
        self._shard_images = 0
        self._shard_masks = 0
        self._counts = dict.fromkeys(COUNT_NAMES, 0)
        self._started = 0.0
        self._worker: OrderedWorker | None = None

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
        self._worker = OrderedWorker(PENDING_BATCHES, name=f"shard-writer-r{self.rank}")

    def _leftovers(self, world_size: int) -> list[Path]:
        """A killed run's unfinished shards and an earlier run's error records, for this rank.

        Their images are not in complete shards, so this run does them again and records them
        anew (a folder holding them is only accepted with resume=true). Files of ranks an
        earlier, larger run had are cleared by rank % world_size.
        """
        candidates = [*unfinished_shard_paths(self.output_dir), *error_paths(self.output_dir)]
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
        self._worker.submit(lambda: self._write_batch(prediction))

    def _write_batch(self, prediction: list[dict[str, Any]]) -> None:
        for result in prediction:
            if result["error"] is None:
                self._write_image(result)
            else:
                self._write_error(result)

    def on_predict_end(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule
    ) -> None:
        self._worker.close()
        self._finish_shard()
        wall_seconds = time.perf_counter() - self._started
        counts = {**self._counts, "wall_seconds": wall_seconds, "interrupted": self.interrupted()}
        counts_path(self.output_dir, self.rank).write_text(json.dumps(counts))
        _wait_for_every_rank(trainer)
        if trainer.is_global_zero:
            self._write_summary(trainer.world_size)

    def on_exception(
        self,
        trainer: lightning.Trainer,
        pl_module: lightning.LightningModule,
        exception: BaseException,
    ) -> None:
        # Images already written are complete records; keep them rather than redo them. A
        # shard that cannot be finished (the folder is full) stays `*.tar.tmp`, redone on
        # resume, and the run ends on the exception that came first. The batches handed over
        # are written first (unless writing failed), as they would have been without a thread.
        if self._worker is not None:
            self._worker.close(raise_error=False)
        with contextlib.suppress(OSError):
            self._finish_shard()

    def _record(self, result: dict[str, Any]) -> dict[str, Any]:
        """The json an image's shard sample holds; `image` identifies it (url and key).

        Ids come from the record's place in its shard, so they are unique in the folder
        (see run/ids.py).
        """
        _, number = shard_rank_and_number(self._shard_path)
        image = {name: result[name] for name in ("key", "url", "file_name", "height", "width")}
        image["image_id"] = image_id(self.rank, number, self._shard_images)
        annotations = [
            {"id": annotation_id(self.rank, number, self._shard_masks + index), **record}
            for index, record in enumerate(result["annotations"])
        ]
        return {"image": image, "annotations": annotations}

    def _write_image(self, result: dict[str, Any]) -> None:
        if self._shard is None:
            self._open_shard()
        # Keys are data: the member is named safely; the record's `image` keeps the real key.
        member = self._member_names.name_for(result["key"])
        sample = self._record(result)
        try:
            self._shard.write({"__key__": member, "json": sample})
        except BaseException:
            # Part of a member may be on disk: this shard must never get its final name.
            self._abandon_shard()
            raise
        self._shard_masks += len(sample["annotations"])
        self._counts["images"] += 1
        self._counts["masks"] += len(sample["annotations"])
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
        self._stream = unfinished_path(self._shard_path).open("wb")
        self._shard = wds.TarWriter(self._stream)
        self._member_names = UniqueNames()
        self._next_number += 1
        self._shard_images = 0
        self._shard_masks = 0

    def _finish_shard(self) -> None:
        """Close the open shard, flush it to disk, and only then give it its final name.

        A shard that fails on the way (a full disk) is abandoned as `*.tar.tmp`, never
        renamed: a retry could flush what is left of its buffers and name a cut tar complete.
        """
        if self._shard is None:
            return
        try:
            self._shard.close()  # writes tar's end-of-archive blocks; the stream stays ours
            self._stream.flush()
            os.fsync(self._stream.fileno())
            self._stream.close()
        except BaseException:
            self._abandon_shard()
            raise
        unfinished_path(self._shard_path).replace(self._shard_path)
        _fsync_folder(self.output_dir)
        self._shard = self._stream = None

    def _abandon_shard(self) -> None:
        """Leaves the open shard as `*.tar.tmp` (a resume does its images again)."""
        shard, stream = self._shard, self._stream
        self._shard = self._stream = None
        # webdataset's tar stream would otherwise flush its buffer when collected.
        shard.tarstream.closed = shard.tarstream.fileobj.closed = True
        with contextlib.suppress(OSError):
            stream.close()

    def _write_summary(self, world_size: int) -> None:
        """Totals over this run's ranks, from the counts file each rank wrote."""
        per_rank = [
            json.loads(counts_path(self.output_dir, r).read_text()) for r in range(world_size)
        ]
        totals = {name: sum(counts[name] for counts in per_rank) for name in COUNT_NAMES}
        wall_seconds = max(counts["wall_seconds"] for counts in per_rank)
        summary = {
            **totals,
            "interrupted": any(counts["interrupted"] for counts in per_rank),
            "wall_seconds": wall_seconds,
            "images_per_second": totals["images"] / wall_seconds if wall_seconds else 0.0,
            "masks_per_second": totals["masks"] / wall_seconds if wall_seconds else 0.0,
            "config": self.config,
        }
        write_summary(self.output_dir, summary)


def _wait_for_every_rank(trainer: lightning.Trainer) -> None:
    """The strategy's barrier, but waited for in Python: a rank that has finished its share
    still handles a stop signal meanwhile (and rank 0 passes it on to the others)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        trainer.strategy.barrier("rle_shard_writer_summary")
        return
    arrived = torch.distributed.barrier(async_op=True)
    while not arrived.is_completed():
        time.sleep(0.05)
    arrived.wait()


def _fsync_folder(folder: Path) -> None:
    """Makes a rename in `folder` durable (where the platform allows opening a folder)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
