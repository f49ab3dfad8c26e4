"""`amg-bench pipeline`: the whole product (`amg-predict`) end to end over shards.

Runs the console script in a subprocess per round and reads the run's summary.json: the
time covers data loading, decoding, generation and the RLE shard writer. The reference has no
such pipeline and is not run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from amg_lightning.bench.generate import PARITY_FIELDS, SETTING_FLAGS, generator_settings
from amg_lightning.bench.machine import mb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", help="WebDataset shards (data.urls), a folder or brace pattern")
    parser.add_argument("--num-workers", type=int, default=2, help="data.num_workers")
    settings = parser.add_argument_group("generator settings (default: the product's)")
    for name in SETTING_FLAGS:
        kind = float if name.endswith("thresh") else int
        settings.add_argument("--" + name.replace("_", "-"), type=kind)


def predict_command(args: argparse.Namespace, output_dir: Path) -> list[str]:
    """`amg-predict` (as a module of this interpreter: it runs from a checkout on PYTHONPATH
    too) with the run's overrides."""
    command = [
        sys.executable,
        "-m",
        "amg_lightning.run.cli",
        f"data.urls={args.shards}",
        f"output_dir={output_dir / 'out'}",
        f"hydra.run.dir={output_dir / 'hydra'}",
        f"model={args.model_type}",
        f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}",
        f"data.num_workers={args.num_workers}",
    ]
    if args.checkpoint:
        command.append(f"model.checkpoint={args.checkpoint.resolve()}")
    command += [f"{name}={value}" for name, value in generator_settings(args).items()]
    command.append(f"keep_freed_memory={str(args.keep_freed_memory).lower()}")
    if args.fast:
        command.append("fast=true")
    return command


def run(args: argparse.Namespace, common: dict[str, Any]) -> list[dict[str, Any]]:
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    runs = []
    for round_index in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="amg-bench-") as tmp:
            command = predict_command(args, Path(tmp))
            print("$ " + " ".join(command), flush=True)
            with GpuBusy(args.device == "cuda") as busy:
                done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp)
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
                raise SystemExit(f"error: amg-predict failed ({done.returncode}):\n{tail}")
            summary = json.loads((Path(tmp) / "out" / "summary.json").read_text())
        summary["gpu_busy_fraction"] = busy.fraction
        runs.append(summary)
        print(
            f"round {round_index + 1}/{args.rounds}: {summary['images']} images in "
            f"{summary['wall_seconds']:.2f} s ({summary['images_per_second']:.3f} images/s)",
            flush=True,
        )
    images = sum(r["images"] for r in runs)
    wall = sum(r["wall_seconds"] for r in runs)
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    return [
        {
            **common,
            "kind": "pipeline",
            "mode": "ours_fast" if args.fast else "ours",
            "precision": "bf16-upscaler" if args.fast else "fp32",
            "image_set": f"shards {args.shards}",
            "n_images": runs[0]["images"],
            "rounds": args.rounds,
            "calls": len(runs),
            "images_per_second": images / wall if wall else None,
            "seconds_per_image": wall / images if images else None,
            "wall_seconds": [r["wall_seconds"] for r in runs],
            "masks_per_image": sum(r.get("masks", 0) for r in runs) / images if images else None,
            "errors": runs[0].get("errors"),
            "speedup_vs_reference": None,
            **dict.fromkeys(PARITY_FIELDS),
            "process_max_rss_mb": mb(child_rss),
            "gpu_busy_fraction": [r["gpu_busy_fraction"] for r in runs],
        }
    ]


class GpuBusy:
    """The GPU's busy fraction while a block runs, from `nvidia-smi`'s utilisation sampled
    every 100 ms (None without a GPU or nvidia-smi)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self.fraction: float | None = None

    def __enter__(self) -> GpuBusy:
        if self.enabled:
            query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            self._sampler = subprocess.Popen(
                [*query, "-lms", "100"], stdout=subprocess.PIPE, text=True
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.enabled:
            return
        self._sampler.terminate()
        samples = [float(v) for v in self._sampler.communicate()[0].split() if v.strip()]
        self.fraction = sum(samples) / len(samples) / 100 if samples else None
