"""`predict.py --help` shows each setting's value as the yaml files spell it: null, true, false
(Hydra's help template alone would print Python's None, True and False)."""

from __future__ import annotations

import yaml
from omegaconf import DictConfig, OmegaConf


def yaml_value(key: str, *, _root_: DictConfig) -> str:
    """The value at `key` (dotted) of the composed config, written as yaml writes it; the
    `amg_yaml` resolver of conf/hydra/help/predict.yaml."""
    value = OmegaConf.select(_root_, key)
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000).strip()
    return text.removesuffix("\n...")  # yaml ends a document of one plain scalar with "..."
