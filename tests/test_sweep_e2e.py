"""A real 4-job Hydra sweep of predict.py, scored against synthetic ground truth."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from amg_lightning.data.synthetic import SceneSpec, write_dataset
from tests.helpers.predict import PREDICT

pytestmark = pytest.mark.e2e


def test_threshold_sweep_with_evaluation_reports_every_job(tmp_path):
    dataset = write_dataset(
        tmp_path / "data", count=2, seed=3, spec=SceneSpec(height=96, width=128)
    )
    sweep_dir = tmp_path / "sweep"
    command = [
        sys.executable,
        str(PREDICT),
        "-m",
        "model=tiny",
        f"data.urls={dataset.shards[0].parent}",
        "data.num_workers=0",
        "points_per_side=4",
        "pred_iou_thresh=0.0,0.5",
        "stability_score_thresh=0.0,0.5",
        f"eval.gt={dataset.annotations}",
        f"embedding_cache.dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    summaries = [json.loads((sweep_dir / str(n) / "summary.json").read_text()) for n in range(4)]
    for summary in summaries:
        assert summary["images"] == 2
        assert 0.0 <= summary["eval"]["AR@100"] <= 1.0
    # Looser thresholds can only keep more masks.
    masks = {
        (s["config"]["pred_iou_thresh"], s["config"]["stability_score_thresh"]): s["masks"]
        for s in summaries
    }
    assert masks[(0.0, 0.0)] >= max(masks.values())

    with open(sweep_dir / "sweep.csv", newline="") as table:
        rows = list(csv.DictReader(table))
    assert len(rows) == 4
    assert {"pred_iou_thresh", "stability_score_thresh", "AR@100"} <= set(rows[0])
    assert (sweep_dir / "sweep.md").read_text().count("\n|") >= 5  # header rule and 4 rows
    # Four jobs over two images encoded each image once: the later jobs' lookups were hits.
    # (What a hit saved is a measured time, so only its presence is checked.)
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 2
    assert summaries[0]["encoder_seconds_saved"] == 0.0
    assert all("encoder_seconds_saved" in s for s in summaries[1:])
    assert "encoder s saved" in (sweep_dir / "sweep.md").read_text()
    assert not (tmp_path / "outputs").exists()
