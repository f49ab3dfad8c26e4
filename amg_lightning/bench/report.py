"""Benchmark rows as a console table, JSON lines and markdown table rows."""

from __future__ import annotations

import argparse
import json
from typing import Any

from amg_lightning.bench.machine import hardware_label


def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


# (header, row key, format); differences of scores are small, so in scientific notation.
TABLE = (
    ("mode", "mode", ""),
    ("s/image", "seconds_per_image", ".3f"),
    ("images/s", "images_per_second", ".3f"),
    ("speed-up", "speedup_vs_reference", ".2f"),
    ("masks/img", "masks_per_image", ".1f"),
    ("exact", "exact_parity", ""),
    ("mean IoU", "mean_iou", ".4f"),
    ("min IoU", "min_image_mean_iou", ".4f"),
    ("count Δ", "count_mismatch", ".4f"),
    ("max Δiou", "max_delta_predicted_iou", ".1e"),
    ("max Δstab", "max_delta_stability_score", ".1e"),
    ("RSS peak MB", "peak_rss_mb", ".0f"),
    ("RSS Δ MB", "peak_rss_delta_mb", ".0f"),
    ("CUDA MB", "cuda_max_allocated_mb", ".0f"),
)


def model_label(row: dict[str, Any]) -> str:
    """The model type, and what its weights are unless they come from a checkpoint."""
    weights = row.get("weights", "checkpoint")
    return row["model_type"] + ("" if weights == "checkpoint" else f" ({weights} weights)")


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = [(h, k, d) for h, k, d in TABLE if any(r.get(k) is not None for r in rows)]
    cells = [[h for h, _, _ in columns]] + [
        [_fmt(r.get(k), f) for _, k, f in columns] for r in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    hw = rows[0]["hardware"]
    print()
    print(f"hardware: {hardware_label(hw)}; torch {hw['torch']}; commit {rows[0]['git_commit']}")
    against = (
        f"; speed-up and parity against {rows[0]['baseline']}" if "baseline" in rows[0] else ""
    )
    print(
        f"{rows[0]['kind']}: {model_label(rows[0])} on {rows[0]['device']}; "
        f"{rows[0]['image_set']}{against}"
    )
    for i, line in enumerate(cells):
        print(
            "  ".join(
                c.rjust(w) if j else c.ljust(w)
                for j, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if i == 0:
            print("  ".join("-" * w for w in widths))
    if rows[0].get("process_max_rss_mb") is not None:
        who = "predict.py" if rows[0]["kind"] == "pipeline" else "process"
        print(f"{who} max RSS (ru_maxrss): {rows[0]['process_max_rss_mb']} MB")


MARKDOWN_HEADER = (
    "| date | commit | hardware | device | model | images | settings | kind | mode | s/image "
    "| images/s | speed-up | exact | mean IoU | count Δ | max Δiou | max Δstab | RSS Δ MB "
    "| CUDA MB | GPU busy |\n"
    "|---|---|---|---|---|---|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|\n"
)


def _mean(values: list[float | None] | None) -> float | None:
    known = [v for v in values or [] if v is not None]
    return sum(known) / len(known) if known else None


def markdown_rows(rows: list[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        settings = ", ".join(f"{k}={v}" for k, v in row["settings"].items()) or "defaults"
        if row.get("keep_freed_memory"):
            settings += "; keep_freed_memory"
        cells = [
            row["timestamp"][:10],
            row["git_commit"] or "-",
            hardware_label(row["hardware"]),
            row["device"],
            model_label(row),
            row["image_set"],
            settings,
            row["kind"],
            row["mode"],
            _fmt(row.get("seconds_per_image"), ".3f"),
            _fmt(row.get("images_per_second"), ".3f"),
            _fmt(row.get("speedup_vs_reference"), ".2f"),
            _fmt(row.get("exact_parity")),
            _fmt(row.get("mean_iou"), ".4f"),
            _fmt(row.get("count_mismatch"), ".4f"),
            _fmt(row.get("max_delta_predicted_iou"), ".1e"),
            _fmt(row.get("max_delta_stability_score"), ".1e"),
            _fmt(row.get("peak_rss_delta_mb"), ".0f"),
            _fmt(row.get("cuda_max_allocated_mb"), ".0f"),
            _fmt(_mean(row.get("gpu_busy_fraction")), ".0%"),
        ]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |\n")
    return "".join(lines)


def write_outputs(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with args.json.open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        print(f"JSON rows appended to {args.json}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        new = not args.markdown.exists() or args.markdown.stat().st_size == 0
        with args.markdown.open("a") as f:
            f.write((MARKDOWN_HEADER if new else "") + markdown_rows(rows))
        print(f"markdown rows appended to {args.markdown}")
