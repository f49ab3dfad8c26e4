"""Sweep reports: a hand-made multirun directory, and a real Hydra multirun with the callback."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from amg_lightning.results.sweep import latest_multirun, parse_override, read_jobs, write_report


def _job(directory: Path, overrides: list[str], summary: dict[str, Any] | None) -> None:
    (directory / ".hydra").mkdir(parents=True)
    (directory / ".hydra" / "overrides.yaml").write_text(
        "".join(f"- {override}\n" for override in overrides)
    )
    if summary is not None:
        (directory / "summary.json").write_text(json.dumps(summary))


def _summary(masks: int, ar100: float | None, saved: float | None = None) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "images": 10,
        "masks": masks,
        "errors": 0,
        "wall_seconds": 20.0,
        "images_per_second": 0.5,
        "masks_per_second": masks / 20.0,
        "config": {"pred_iou_thresh": 0.88, "model": {"model_type": "vit_t", "checkpoint": "x"}},
    }
    if ar100 is not None:
        summary["eval"] = {"AR@10": ar100 / 2, "AR@100": ar100, "AP": ar100 / 3}
    if saved is not None:
        summary["encoder_seconds_saved"] = saved
    return summary


def _four_jobs(multirun: Path, scored: bool = True) -> None:
    settings = [(16, 0.8), (16, 0.9), (32, 0.8), (32, 0.9)]
    ar100 = [0.30, 0.25, 0.45, 0.40]
    for job, ((points, iou), score) in enumerate(zip(settings, ar100, strict=True)):
        overrides = ["model=vit_t", f"points_per_side={points}", f"pred_iou_thresh={iou}"]
        summary = _summary(masks=points * 10, ar100=score if scored else None, saved=1.5)
        _job(multirun / str(job), overrides, summary)


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_report_of_four_jobs_marks_the_best(tmp_path: Path) -> None:
    _four_jobs(tmp_path)

    markdown = write_report(tmp_path)

    rows = _csv_rows(tmp_path / "sweep.csv")
    assert [row["job"] for row in rows] == ["0", "1", "2", "3"]
    assert [row["best"] for row in rows] == ["False", "False", "True", "False"]
    assert [row["points_per_side"] for row in rows] == ["16", "16", "32", "32"]
    assert "model" not in rows[0]  # the same in every job, so not a swept setting
    assert rows[2]["masks/image"] == "32.0"
    assert rows[2]["images/s"] == "0.5"
    assert rows[2]["wall s"] == "20.0"
    assert rows[2]["encoder s saved"] == "1.5"
    assert rows[2]["AR@100"] == "0.45"
    assert (tmp_path / "sweep.md").read_text() == markdown
    table_lines = markdown.strip().splitlines()
    assert len(table_lines) == 2 + 4
    assert table_lines[0].startswith("| job | points_per_side | pred_iou_thresh | masks/image |")
    assert table_lines[4].endswith("| **best** |")


def test_without_scores_no_row_is_best(tmp_path: Path) -> None:
    _four_jobs(tmp_path, scored=False)

    markdown = write_report(tmp_path)

    assert "**best**" not in markdown
    assert all(row["best"] == "False" for row in _csv_rows(tmp_path / "sweep.csv"))
    assert "AR@100" not in markdown


def test_failed_job_without_summary_still_gets_a_row(tmp_path: Path) -> None:
    for job in range(11):
        summary = None if job == 10 else _summary(masks=job, ar100=job / 20)
        _job(tmp_path / str(job), [f"crop_n_layers={job}"], summary)

    write_report(tmp_path)

    rows = _csv_rows(tmp_path / "sweep.csv")

    assert [row["job"] for row in rows] == [str(job) for job in range(11)]  # numeric order
    assert rows[10]["masks/image"] == ""
    assert rows[9]["best"] == "True"


def test_overrides_with_hydra_prefixes() -> None:
    assert parse_override("+model.checkpoint=a=b.pt") == ("model.checkpoint", "a=b.pt")
    assert parse_override("++crop_n_layers=1") == ("crop_n_layers", "1")
    assert parse_override("~min_mask_region_area") == ("min_mask_region_area", "")


def test_jobs_read_in_order_with_their_summaries(tmp_path: Path) -> None:
    _four_jobs(tmp_path)

    jobs = read_jobs(tmp_path)

    assert [job.overrides["pred_iou_thresh"] for job in jobs] == ["0.8", "0.9", "0.8", "0.9"]
    assert jobs[3].summary["eval"]["AR@100"] == 0.40


def test_latest_multirun_is_the_newest_date_and_time(tmp_path: Path) -> None:
    for sweep in ("2024-05-01/10-00-00", "2024-05-02/09-00-00", "2024-05-02/08-00-00"):
        (tmp_path / sweep).mkdir(parents=True)
        (tmp_path / sweep / "multirun.yaml").write_text("{}\n")

    assert latest_multirun(tmp_path) == tmp_path / "2024-05-02/09-00-00"


TOY_APP = """
import json
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base=None, config_path=".", config_name="toy")
def main(cfg):
    summary = {
        "images": 4,
        "masks": 4 * cfg.points_per_side,
        "errors": 0,
        "wall_seconds": 2.0,
        "images_per_second": 2.0,
        "eval": {"AR@100": cfg.pred_iou_thresh * cfg.points_per_side / 100},
    }
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    (output_dir / "summary.json").write_text(json.dumps(summary))


main()
"""

TOY_CONFIG = """
points_per_side: 32
pred_iou_thresh: 0.88
hydra:
  sweep:
    # Microseconds: a report written to a re-resolved ${now:} would land elsewhere.
    dir: ${oc.env:SWEEP_ROOT}/${now:%Y-%m-%d}/${now:%H-%M-%S-%f}
  callbacks:
    sweep_report:
      _target_: amg_lightning.results.sweep.SweepReportCallback
"""


def test_callback_reports_a_real_hydra_multirun(tmp_path: Path) -> None:
    (tmp_path / "toy_app.py").write_text(TOY_APP)
    (tmp_path / "toy.yaml").write_text(textwrap.dedent(TOY_CONFIG))
    command = [
        sys.executable,
        "toy_app.py",
        "-m",
        "points_per_side=8,16",
        "pred_iou_thresh=0.7,0.9",
    ]
    env = {"SWEEP_ROOT": str(tmp_path / "multirun"), "PATH": "/usr/bin:/bin"}

    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr
    sweep = latest_multirun(tmp_path / "multirun")
    rows = _csv_rows(sweep / "sweep.csv")
    assert len(rows) == 4
    best = [row for row in rows if row["best"] == "True"]
    assert [(row["points_per_side"], row["pred_iou_thresh"]) for row in best] == [("16", "0.9")]
    assert (sweep / "sweep.md").read_text() in done.stdout
