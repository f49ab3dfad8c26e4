"""One table for a Hydra multirun: what each job swept, how fast it ran, how well it scored.

A multirun directory holds one subdirectory per job, each with `.hydra/overrides.yaml` and the
`summary.json` the prediction run wrote (with scores under "eval" once evaluated).
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from amg_lightning.results.run_folder import read_summary

BEST_BY = "AR@100"
# summary.json field -> column; masks per image is derived.
_SPEED_COLUMNS = {
    "images_per_second": "images/s",
    "wall_seconds": "wall s",
    "errors": "errors",
    "encoder_seconds_saved": "encoder s saved",
}
MASKS_PER_IMAGE = "masks/image"


@dataclass(frozen=True)
class JobResult:
    """One job of the sweep: its directory name, its overrides, its summary (None if absent)."""

    name: str
    overrides: dict[str, str]
    summary: dict[str, Any] | None


@dataclass(frozen=True)
class SweepTable:
    """Rows of cells by column name; `best` is the index of the best row, if any scored."""

    columns: list[str]
    rows: list[dict[str, Any]]
    best: int | None


def parse_override(override: str) -> tuple[str, str]:
    """`key=value` (with Hydra's +, ++ or ~ prefix) as (key, value)."""
    key, _, value = override.lstrip("+~").partition("=")
    return key, value


def _job_order(job: JobResult) -> tuple[int, int | str]:
    """Numbered jobs by number, then any others by name."""
    return (0, int(job.name)) if job.name.isdigit() else (1, job.name)


def read_jobs(multirun_dir: str | Path) -> list[JobResult]:
    """Every job directory (one holding `.hydra/overrides.yaml`) in job-number order."""
    jobs = []
    for overrides_file in Path(multirun_dir).glob("*/.hydra/overrides.yaml"):
        job_dir = overrides_file.parent.parent
        overrides = dict(
            parse_override(o) for o in yaml.safe_load(overrides_file.read_text()) or []
        )
        jobs.append(JobResult(job_dir.name, overrides, read_summary(job_dir)))
    return sorted(jobs, key=_job_order)


def swept_keys(jobs: list[JobResult]) -> list[str]:
    """Override keys whose value differs between jobs; all of them when none differ."""
    keys = list(dict.fromkeys(key for job in jobs for key in job.overrides))
    differing = [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]
    return differing or keys


def _measures(summary: dict[str, Any] | None) -> dict[str, Any]:
    """The speed and score cells of one job."""
    if summary is None:
        return {}
    cells: dict[str, Any] = {}
    if summary.get("images"):
        cells[MASKS_PER_IMAGE] = summary["masks"] / summary["images"]
    for field, column in _SPEED_COLUMNS.items():
        if field in summary:
            cells[column] = summary[field]
    cells.update(summary.get("eval") or {})
    return cells


def _best_row(rows: list[dict[str, Any]]) -> int | None:
    scored = [i for i, row in enumerate(rows) if isinstance(row.get(BEST_BY), (int, float))]
    return max(scored, key=lambda i: rows[i][BEST_BY], default=None)


def build_table(jobs: list[JobResult]) -> SweepTable:
    """One row per job: swept settings, then speed, then any scores; the best by AR@100."""
    settings = swept_keys(jobs)
    rows = []
    for job in jobs:
        row = {"job": job.name} | {key: job.overrides.get(key, "") for key in settings}
        rows.append(row | _measures(job.summary))
    columns = list(dict.fromkeys(column for row in rows for column in row))
    best = _best_row(rows)
    for i, row in enumerate(rows):
        row["best"] = i == best
    return SweepTable(columns=[*columns, "best"], rows=rows, best=best)


def _markdown_cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "**best**" if value else ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def to_markdown(table: SweepTable) -> str:
    """A GitHub-flavoured markdown table, the best row flagged in the last column."""
    lines = [
        "| " + " | ".join(table.columns) + " |",
        "|" + "---|" * len(table.columns),
    ]
    for row in table.rows:
        cells = [_markdown_cell(row.get(column)) for column in table.columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(table: SweepTable, path: Path) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=table.columns)
        writer.writeheader()
        writer.writerows(table.rows)


def write_report(multirun_dir: str | Path) -> str:
    """Write `sweep.md` and `sweep.csv` into the multirun directory; return the markdown."""
    directory = Path(multirun_dir)
    table = build_table(read_jobs(directory))
    markdown = to_markdown(table)
    (directory / "sweep.md").write_text(markdown)
    write_csv(table, directory / "sweep.csv")
    return markdown


def latest_multirun(root: str | Path = "multirun") -> Path:
    """The newest `<date>/<time>` sweep under Hydra's multirun root."""
    sweeps = sorted(path.parent for path in Path(root).glob("*/*/multirun.yaml"))
    if not sweeps:
        raise FileNotFoundError(f"no Hydra multirun (multirun.yaml) under {root}")
    return sweeps[-1]


class SweepReportCallback(Callback):
    """Hydra callback: once every job of a multirun is done, write and print its sweep report."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        print(write_report(config.hydra.sweep.dir))


def main(argv: list[str] | None = None) -> None:
    """`amg-sweep-report [MULTIRUN_DIR]`: writes sweep.md and sweep.csv and prints the table.

    Scores appear where a job's summary.json holds them under "eval": run the sweep with
    eval.gt=..., or afterwards `amg-evaluate --update-summary` on each job.
    """
    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument(
        "multirun_dir",
        nargs="?",
        help="multirun/<date>/<time>; the newest one under ./multirun when left out",
    )
    args = parser.parse_args(argv)
    print(write_report(args.multirun_dir or latest_multirun()))
