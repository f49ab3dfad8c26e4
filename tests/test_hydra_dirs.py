"""Hydra writes nothing the user did not name: no `outputs/DATE/TIME` beside a run given an
output_dir, nothing at all for a refused command (`predict.py` run as a user runs it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.predict import run_predict
from tests.helpers.shards import png_bytes, write_tar

pytestmark = pytest.mark.e2e

FAST = ["model=tiny", "points_per_side=4", "pred_iou_thresh=0.0", "stability_score_thresh=0.0"]
TIMEOUT_S = 120


def everything_under(folder: Path) -> dict[str, int]:
    """Every path under `folder` with its modification time in ns (0 for a folder)."""
    return {
        str(path.relative_to(folder)): 0 if path.is_dir() else path.stat().st_mtime_ns
        for path in folder.rglob("*")
    }


def test_refused_commands_write_nothing_and_a_run_only_its_output_dir(tmp_path: Path) -> None:
    write_tar(tmp_path / "in.tar", [("x.png", png_bytes(24, 32, 1))])
    before = everything_under(tmp_path)

    # Refused after Hydra has made its run directory outputs/DATE/TIME: it goes again.
    refused = run_predict([*FAST, "data.urls=in.tar", "points_per_side=0"], tmp_path, TIMEOUT_S)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "points_per_side must be" in refused.stdout
    assert everything_under(tmp_path) == before

    finished = run_predict([*FAST, "data.urls=in.tar", "output_dir=run"], tmp_path, TIMEOUT_S)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tar", "run"]
    assert not (tmp_path / "run" / ".hydra").exists()
    assert not list((tmp_path / "run").glob("*.log"))

    # Refused into an existing run: its files stay as they were, nothing is added.
    after_run = everything_under(tmp_path)
    again = run_predict([*FAST, "data.urls=in.tar", "output_dir=run"], tmp_path, TIMEOUT_S)
    assert again.returncode == 2, again.stdout + again.stderr
    assert "already holds results" in again.stdout
    assert everything_under(tmp_path) == after_run
