"""Preparing a run's output folder before the model loads: the lock, the settings, resume.

Global rank 0 refuses a folder another run holds, or one with results but no resume=true;
takes the lock; checks the settings a resumed folder was made with (`run.json`); and finds
the samples already done, moving aside shards that do not read back. The other ranks of the
same run check the lock is their run's and read the same done samples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from amg_lightning.core.models import model_family
from amg_lightning.core.settings import (
    MEMORY_SETTING_NAMES,
    PLACEMENT_SETTING_NAMES,
    SAM2_SETTING_NAMES,
    SETTING_NAMES,
    AmgSettings,
)
from amg_lightning.results.run_folder import (
    damaged_path,
    files_of_ours,
    run_record_path,
    shard_paths,
    write_json_atomically,
)
from amg_lightning.results.shards import drop_samples, shard_samples
from amg_lightning.run.checkpoints import checkpoint_sha256
from amg_lightning.run.config import ConfigError
from amg_lightning.run.inputs import ShardStamp, match_inputs, read_stamps, record_stamps, stamps
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
            "family": model_family(cfg.model.model_type),
            "checkpoint_sha256": checkpoint_sha256(checkpoint) if checkpoint else None,
        },
    }


@dataclass
class PreparedFolder:
    """The lock (rank 0 only), the (url, key) of every sample of this run's input shards that
    complete shards hold, and the stamps of this run's local input shards."""

    lock: RunLock | None
    done: set[tuple[str, str]] = field(default_factory=set)
    inputs: dict[str, ShardStamp] = field(default_factory=dict)

    def record_identity(self, identity: dict[str, Any]) -> None:
        """Rank 0 writes run.json and inputs.json once the model has loaded (a failed start
        leaves no trace)."""
        if self.lock is None:
            return
        output_dir = self.lock.path.parent
        if not run_record_path(output_dir).is_file():
            write_json_atomically(run_record_path(output_dir), identity)
        record_stamps(output_dir, self.inputs)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def prepare_output_dir(
    output_dir: Path,
    resume: bool,
    identity: dict[str, Any],
    urls: Sequence[str] = (),
    changed_shards: str = "refuse",
) -> PreparedFolder:
    """Raises ConfigError (one line) for a folder this run must not write; see the module.

    `urls` are this run's input shards; `changed_shards` says what a resume does with one that
    changed since the folder's records were made from it: "refuse" or "redo" its samples.
    """
    if not is_primary_process():
        check_same_run(output_dir)
        done = completed_samples(output_dir, move_damaged=False)
        return _with_inputs(PreparedFolder(None), output_dir, done, urls, changed_shards)
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
        done = completed_samples(output_dir, move_damaged=True)
        return _with_inputs(prepared, output_dir, done, urls, changed_shards)
    except BaseException:
        prepared.release()
        raise


def _with_inputs(
    prepared: PreparedFolder,
    output_dir: Path,
    done: set[tuple[str, str]],
    urls: Sequence[str],
    changed_shards: str,
) -> PreparedFolder:
    """Fills in the done samples of this run's shards, however their paths are spelled now,
    after refusing (or, with changed_shards="redo", dropping the records of) changed shards.
    Samples of shards this run does not read are reported, not counted as done."""
    prepared.inputs = stamps(urls)
    match = match_inputs(read_stamps(output_dir), prepared.inputs)
    if match.changed and changed_shards != "redo":
        raise ConfigError(
            f"input shard {match.changed[0]} changed since output_dir {output_dir} was made from "
            f"it ({len(match.changed)} changed shard(s): size or modification time differ): "
            "restore it, or pass resume_changed_shards=redo to segment its images again"
        )
    if match.changed and prepared.lock is not None:
        recorded = {old for old, new in match.aliases.items() if new in match.changed}
        dropped = sum(
            drop_samples(path, {*match.changed, *recorded}) for path in shard_paths(output_dir)
        )
        log.warning(
            f"{len(match.changed)} input shard(s) changed ({match.changed[0]}, ...): "
            f"dropped their {dropped} old records, their images are done again"
        )
    prepared.done, vanished = match.translate(done, set(urls))
    if vanished and prepared.lock is not None:
        log.warning(
            f"{len(vanished)} images in output_dir come from shards not in data.urls "
            f"(e.g. {vanished[0][0]}): their records stay, they are not counted as done"
        )
    return prepared


# What a run.json from before SAM 2 support holds implicitly: a SAM 1 model, SAM 2's own
# settings at their defaults.
_IMPLICIT = {
    "family": "sam",
    **{name: getattr(AmgSettings(), name) for name in SAM2_SETTING_NAMES},
}


def _recorded(recorded: dict[str, Any], group: str, name: str) -> Any:
    return recorded.get(group, {}).get(name, _IMPLICIT.get(name))


def check_identity(output_dir: Path, identity: dict[str, Any]) -> None:
    """Refuses a folder whose run.json records other mask settings or another model."""
    path = run_record_path(output_dir)
    if not path.is_file():
        return
    recorded = json.loads(path.read_text())
    changes = [
        f"{name} {_recorded(recorded, group, name)!r} -> {value!r}"
        for group in ("settings", "model")
        for name, value in identity[group].items()
        if _recorded(recorded, group, name) != value
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
