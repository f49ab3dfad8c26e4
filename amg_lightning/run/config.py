"""Checking a prediction config before any model loads: one message naming the key at fault."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from amg_lightning.core.models import MODEL_TYPES
from amg_lightning.core.settings import SETTING_NAMES, AmgSettings
from amg_lightning.data.count import is_count_mode
from amg_lightning.data.datamodule import resolve_urls
from amg_lightning.results.run_folder import shard_paths


class ConfigError(ValueError):
    """A config value or input that cannot work; the message says which and what to do."""


def generator_settings(cfg: DictConfig) -> dict[str, Any]:
    """The generator settings among the config's top-level keys."""
    return {name: cfg[name] for name in SETTING_NAMES if name in cfg}


def check_config(cfg: DictConfig) -> None:
    """Raises ConfigError for the first problem found, before anything expensive happens."""
    try:
        AmgSettings(**generator_settings(cfg))
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None
    if cfg.output_mode != "coco_rle":
        raise ConfigError(
            "output_mode must be coco_rle for prediction shards; "
            "amg-export turns them into PNG masks or a COCO json"
        )
    if cfg.model.model_type not in MODEL_TYPES:
        raise ConfigError(
            f"model.model_type must be one of {', '.join(MODEL_TYPES)}, "
            f"got {cfg.model.model_type!r}"
        )
    checkpoint = cfg.model.get("checkpoint")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ConfigError(f"model.checkpoint {checkpoint} is not a file")
    _check_data(cfg.data)
    _check_output_dir(Path(cfg.output_dir), cfg.resume)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _output_dir_is_fixed():
        raise ConfigError(
            "processes started by torchrun or SLURM must share one output_dir: pass output_dir=PATH"
        )


def _check_data(data: DictConfig) -> None:
    if OmegaConf.is_missing(data, "urls"):
        raise ConfigError(
            "data.urls is required: a shard pattern, a list, or a folder of .tar shards"
        )
    try:
        resolve_urls(
            OmegaConf.to_object(data.urls) if OmegaConf.is_config(data.urls) else data.urls
        )
    except ValueError as err:
        raise ConfigError(f"{err}; make shards with amg-shards") from None
    for key, low in (("batch_size", 1), ("num_workers", 0)):
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"data.{key} must be an integer >= {low}, got {value!r}")
    _check_counting(data)


def _check_counting(data: DictConfig) -> None:
    if not is_count_mode(data.count_samples):
        raise ConfigError(
            f"data.count_samples must be auto, true or false, got {data.count_samples!r}"
        )
    seconds = data.count_seconds
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        raise ConfigError(f"data.count_seconds must be a number > 0, got {seconds!r}")


def _check_output_dir(output_dir: Path, resume: bool) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"output_dir {output_dir} cannot be written: {err.strerror}") from None
    if not resume and shard_paths(output_dir):
        raise ConfigError(
            f"output_dir {output_dir} already holds results: "
            "pass resume=true to continue them, or choose another output_dir"
        )


def _output_dir_is_fixed() -> bool:
    """Whether every process resolves the same output_dir (not one stamped with its start time)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return True
    overrides = HydraConfig.get().overrides
    return any(o.startswith("output_dir=") for o in overrides.task) or any(
        o.startswith("hydra.run.dir=") for o in overrides.hydra
    )
