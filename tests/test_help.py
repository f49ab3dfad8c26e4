"""`python predict.py --help` lists every setting with its meaning and value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.config import compose_config, forget_config
from tests.helpers.predict import run_predict

pytestmark = pytest.mark.e2e


def test_help_lists_every_setting_with_its_value(tmp_path: Path) -> None:
    cfg = compose_config([])
    forget_config()
    finished = run_predict(["--help", "pred_iou_thresh=0.5"], tmp_path, timeout=120)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    lines = [line.strip() for line in finished.stdout.splitlines()]
    # A setting's line: `name=value  meaning`.
    names = [m[1] for line in lines if (m := re.match(r"([a-z0-9_.]+)=\S*  \w", line))]
    top_level = {name.split(".")[0] for name in names}
    assert sorted(key for key in cfg if key != "hydra" and key not in top_level) == []
    data_keys = {f"data.{key}" for key in cfg.data if key != "_target_"}
    assert sorted(data_keys - set(names)) == []
    assert "pred_iou_thresh=0.5  drop masks whose predicted IoU is not above this" in lines
    assert "data.num_workers=2  data-loading processes per rank" in lines
    # Values as the yaml files spell them, not as Python prints them.
    assert "tile_size=null  cut images larger than this (pixels) into tiles (null: off)" in lines
    assert "fast=false  mask upscaler in bfloat16: faster, not exact" in lines
    assert any(line.startswith("keep_freed_memory=true  ") for line in lines)
    assert not [line for line in lines if re.search(r"=(None|True|False)\b", line)]
    assert list(tmp_path.iterdir()) == []  # --help writes nothing
