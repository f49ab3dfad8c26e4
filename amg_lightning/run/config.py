"""Checking a prediction config before any model loads: one message naming the key at fault.

`check_config` only reads: it creates, writes and deletes nothing (the output folder is
checked where the run starts, in `run.folder`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from amg_lightning.core.models import MODEL_TYPES, model_family
from amg_lightning.core.settings import SETTING_NAMES, AmgSettings, family_errors
from amg_lightning.data.count import is_count_mode
from amg_lightning.results.run_folder import SHARD_OUTPUT_MODE
from amg_lightning.run.hydra_dirs import output_dir_is_named
from amg_lightning.run.inputs import CHANGED_SHARD_POLICIES


def _config_dir() -> Path:
    """conf/ of the checkout this module is in, else the copy installed with the package."""
    checkout = Path(__file__).resolve().parents[2] / "conf"
    if (checkout / "predict.yaml").is_file():
        return checkout
    return Path(__file__).resolve().parents[1] / "conf"


CONFIG_DIR = _config_dir()
# Settings that are switches: true/false, yes/no or 1/0, nothing else.
FLAG_NAMES = ("resume", "fast", "keep_freed_memory")
_FLAG_VALUES = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


class ConfigError(ValueError):
    """A config value or input that cannot work; the message says which and what to do."""


def known_keys() -> set[str]:
    """The top-level keys predict.yaml defines: its own, its config groups, and hydra."""
    primary = OmegaConf.load(CONFIG_DIR / "predict.yaml")
    groups = {
        next(iter(entry)) for entry in primary.get("defaults", []) if OmegaConf.is_dict(entry)
    }
    return {key for key in primary if key != "defaults"} | groups | {"hydra"}


def generator_settings(cfg: DictConfig) -> dict[str, Any]:
    """The generator settings among the config's top-level keys."""
    return {name: cfg[name] for name in SETTING_NAMES if name in cfg}


def parse_flag(name: str, value: Any) -> bool:
    """A switch's value as a bool; ConfigError for anything but true/false, yes/no, 1/0."""
    if isinstance(value, bool):
        return value
    parsed = _FLAG_VALUES.get(str(value).strip().lower())
    if parsed is None or isinstance(value, float):
        raise ConfigError(f"{name} must be true or false (yes/no, 1/0), got {value!r}")
    return parsed


def with_flags_parsed(cfg: DictConfig) -> DictConfig:
    """A copy of `cfg` whose switches are bools (after check_config has accepted them)."""
    copy = cfg.copy()
    for name in FLAG_NAMES:
        copy[name] = parse_flag(name, cfg[name])
    return copy


def check_config(cfg: DictConfig) -> None:
    """Raises ConfigError for the first problem found, before anything expensive happens."""
    unknown = sorted(set(cfg) - known_keys())
    if unknown:
        raise ConfigError(
            f"unknown setting {', '.join(unknown)}: see conf/predict.yaml for the settings"
        )
    for name in FLAG_NAMES:
        parse_flag(name, cfg[name])
    try:
        settings = AmgSettings(**generator_settings(cfg))
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None
    if cfg.output_mode != SHARD_OUTPUT_MODE:
        raise ConfigError(
            f"output_mode must be {SHARD_OUTPUT_MODE} for prediction shards; "
            "amg-export turns them into PNG masks or a COCO json"
        )
    _check_integer("shard_size", cfg.shard_size, 1)
    fraction = cfg.max_error_fraction
    is_number = isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
    if not is_number or not 0 <= fraction <= 1:
        raise ConfigError(f"max_error_fraction must be a number in [0, 1], got {fraction!r}")
    if cfg.resume_changed_shards not in CHANGED_SHARD_POLICIES:
        raise ConfigError(
            f"resume_changed_shards must be {' or '.join(CHANGED_SHARD_POLICIES)}, "
            f"got {cfg.resume_changed_shards!r}"
        )
    if cfg.model.model_type not in MODEL_TYPES:
        raise ConfigError(
            f"model.model_type must be one of {', '.join(MODEL_TYPES)}, "
            f"got {cfg.model.model_type!r}"
        )
    for error in family_errors(model_family(cfg.model.model_type), settings):
        raise ConfigError(error)
    checkpoint = cfg.model.get("checkpoint")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ConfigError(f"model.checkpoint {checkpoint} is not a file")
    _check_data(cfg.data)
    _check_trainer(cfg.trainer)
    if cfg.eval.gt is not None:
        _check_ground_truth(cfg.eval.gt)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not output_dir_is_named():
        raise ConfigError(
            "processes started by torchrun or SLURM must share one output_dir: pass output_dir=PATH"
        )


def _check_trainer(trainer: DictConfig) -> None:
    """What would otherwise fail only once the model has loaded, or break every image."""
    if str(trainer.get("precision", "32-true")) not in ("32", "32-true"):
        raise ConfigError(
            f"trainer.precision={trainer.precision} is not supported: the generator computes in "
            "float32 to give the reference's masks (fast=true runs its mask upscaler in bfloat16)"
        )
    if str(trainer.accelerator) in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={trainer.accelerator} but no CUDA GPU is visible: "
            "use trainer=cpu, or check CUDA_VISIBLE_DEVICES and the driver"
        )


def _check_ground_truth(path: str) -> None:
    """eval.gt must be a readable COCO instances json before hours of prediction."""
    try:
        gt = json.loads(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"eval.gt {path} cannot be read: {err.strerror}") from None
    except ValueError as err:
        raise ConfigError(f"eval.gt {path} is not json: {err}") from None
    if not isinstance(gt, dict) or not {"images", "annotations"} <= gt.keys():
        raise ConfigError(f"eval.gt {path} is not a COCO instances json (images, annotations)")


def _check_integer(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_data(data: DictConfig) -> None:
    """The data keys that can be judged without reading anything (urls resolve in the
    DataModule, once)."""
    if OmegaConf.is_missing(data, "urls"):
        raise ConfigError(
            "data.urls is required: a shard pattern, a list, or a folder of .tar shards"
        )
    size = data.batch_size
    if size != "auto" and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ConfigError(f"data.batch_size must be auto or an integer >= 1, got {size!r}")
    _check_integer("data.num_workers", data.num_workers, 0)
    _check_integer("data.max_image_pixels", data.max_image_pixels, 1)
    _check_seconds("data.read_timeout", data.read_timeout)
    _check_counting(data)


def _check_counting(data: DictConfig) -> None:
    if not is_count_mode(data.count_samples):
        raise ConfigError(
            f"data.count_samples must be auto, true or false, got {data.count_samples!r}"
        )
    _check_seconds("data.count_seconds", data.count_seconds)


def _check_seconds(name: str, seconds: Any) -> None:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        raise ConfigError(f"{name} must be a number > 0, got {seconds!r}")
