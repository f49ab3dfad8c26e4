"""The config `predict.py` would get, built in-process with Hydra's compose API."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from amg_lightning.run.cli import CONFIG_DIR, predict
from amg_lightning.run.config import check_config


def compose_config(overrides: list[str]) -> DictConfig:
    """Composes predict.yaml with `overrides` and makes it Hydra's current config (undo with
    `forget_config`)."""
    # Importing sam2 initialises Hydra's global state for sam2's own configs, which
    # initialize_config_dir refuses to replace; the generator never composes through it.
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("predict", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    return cfg


def forget_config() -> None:
    HydraConfig.instance().cfg = None


def run_in_process(overrides: list[str]) -> dict | None:
    """`main` without the process: check the config, then predict."""
    cfg = compose_config(overrides)
    check_config(cfg)
    return predict(cfg)
