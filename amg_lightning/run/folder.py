"""Preparing a run's output folder before the model loads: the lock, the settings, resume.

Global rank 0 refuses a folder another run holds, or one with results but no resume=true;
takes the lock; checks the settings a resumed folder was made with (`run.json`); and finds
the samples already done, moving aside shards that do not read back. The other ranks of the
same run check the lock is their run's and read the same done samples.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from amg_lightning.core.settings import (
    MEMORY_SETTING_NAMES,
    PLACEMENT_SETTING_NAMES,
    SETTING_NAMES,
)
from amg_lightning.results.run_folder import (
    damaged_path,
    files_of_ours,
    run_record_path,
    shard_paths,
    write_json_atomically,
)
from amg_lightning.results.shards import shard_samples
from amg_lightning.run.checkpoints import checkpoint_sha256
from amg_lightning.run.config import ConfigError
from amg_lightning.run.lock import RunLock, check_same_run, refuse_if_in_use
from amg_lightning.utils.logging import get_logger

log = get_logger(__name__)

# Settings that change the masks: the generator's, less those that only bound memory or place
# the post-processing, and bf16.
_NOT_MASK_SETTINGS = (*MEMORY_SETTING_NAMES, *PLACEMENT_SETTING_NAMES, "output_mode")
MASK_SETTING_NAMES = (
    *(n for n in SETTING_NAMES if n not in _NOT_MASK_SETTINGS),
    "fast",
)
# Launchers name a process's rank in these; rank 0 of node 0 has only zeros (or none).
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def is_primary_process() -> bool:
    """Whether this process is global rank 0 (or the only one), from what launchers set."""
    return all(os.environ.get(name, "0") in ("", "0") for name in _RANK_VARIABLES)


def run_identity(cfg: DictConfig, checkpoint: Path | None) -> dict[str, Any]:
    """What decides a run's masks: the mask settings, the model type and weights."""
    return {
        "settings": {name: cfg[name] for name in MASK_SETTING_NAMES if name in cfg},
        "model": {
            "model_type": cfg.model.model_type,
            "checkpoint_sha256": checkpoint_sha256(checkpoint) if checkpoint else None,
        },
    }


@dataclass
class PreparedFolder:
    """The lock (rank 0 only) and the (url, key) of every sample complete shards hold."""

    lock: RunLock | None
    done: set[tuple[str, str]] = field(default_factory=set)

    def record_identity(self, identity: dict[str, Any]) -> None:
        """Rank 0 writes run.json once the model has loaded (a failed start leaves no trace)."""
        if self.lock is not None and not run_record_path(self.lock.path.parent).is_file():
            write_json_atomically(run_record_path(self.lock.path.parent), identity)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def prepare_output_dir(output_dir: Path, resume: bool, identity: dict[str, Any]) -> PreparedFolder:
    """Raises ConfigError (one line) for a folder this run must not write; see the module."""
    if not is_primary_process():
        check_same_run(output_dir)
        return PreparedFolder(None, completed_samples(output_dir, move_damaged=False))
    refuse_if_in_use(output_dir)
    ours = files_of_ours(output_dir)
    if ours and not resume:
        raise ConfigError(
            f"output_dir {output_dir} already holds results ({ours[0].name}): "
            "pass resume=true to continue them, or choose another output_dir"
        )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock.acquire(output_dir, take_over_stale=resume)
    except OSError as err:
        raise ConfigError(f"output_dir {output_dir} cannot be written: {err.strerror}") from None
    prepared = PreparedFolder(lock)
    try:
        check_identity(output_dir, identity)
        prepared.done = completed_samples(output_dir, move_damaged=True)
    except BaseException:
        prepared.release()
        raise
    return prepared


def check_identity(output_dir: Path, identity: dict[str, Any]) -> None:
    """Refuses a folder whose run.json records other mask settings or another model."""
    path = run_record_path(output_dir)
    if not path.is_file():
        return
    recorded = json.loads(path.read_text())
    changes = [
        f"{name} {recorded.get(group, {}).get(name)!r} -> {value!r}"
        for group in ("settings", "model")
        for name, value in identity[group].items()
        if recorded.get(group, {}).get(name) != value
    ]
    if changes:
        raise ConfigError(
            f"output_dir {output_dir} was made with other settings ({', '.join(changes)}): "
            "resume with the settings in its run.json, or choose another output_dir"
        )


def completed_samples(output_dir: Path, move_damaged: bool) -> set[tuple[str, str]]:
    """The (url, key) of every sample in the complete shards of `output_dir`.

    A shard that does not read back completely counts for nothing: rank 0 moves it aside
    (renamed `*.damaged`, never deleted) and names it in the log, so its samples are redone.
    """
    done: set[tuple[str, str]] = set()
    for path in shard_paths(output_dir):
        try:
            done.update(shard_samples(path))
        except ValueError as error:
            if move_damaged:
                aside = damaged_path(path)
                path.rename(aside)
                log.warning(f"{error}; moved aside to {aside.name}, its images are done again")
    return done
