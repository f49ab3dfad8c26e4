"""Time our automatic mask generator against SAM's reference one, and check they agree.

Both run on the same model object, images and settings, in one process: one untimed warm-up
call of each on the first image, then per round and image the reference, ours (and, with
--fast on CUDA, our bfloat16 mode) one after another. Reported per implementation: seconds per
image, speed-up over the reference, peak memory (RSS sampled during each call, the kernel's
peak RSS, CUDA peak allocation), and parity with the reference on each image: every reference
mask matched to our mask of highest IoU (COCO RLE, pycocotools), count mismatch, and the largest
differences of predicted IoU and stability score between matched masks.

--pipeline SHARDS instead times the whole product pipeline (predict.py) end to end over a
WebDataset and reads its summary.json; the reference is not run in that mode.

    python scripts/benchmark.py --images ../shared/images \\
        --checkpoint ../shared/weights/mobile_sam.pt --points-per-side 16
    python scripts/benchmark.py --model-type vit_h --synthetic-size 4000x3000 --fast --rounds 3 \\
        --reference-rounds 1 --json bench.jsonl --markdown docs/bench.md
    python scripts/benchmark.py --pipeline 'shards/images-{000000..000003}.tar' --model-type vit_t
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pycocotools import mask as coco_mask

REPO = Path(__file__).resolve().parents[1]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
MB = 1024 * 1024
# Benchmark flag -> generator argument; only the flags given are passed (else the defaults).
SETTING_FLAGS = (
    "points_per_side",
    "crop_n_layers",
    "points_per_batch",
    "pred_iou_thresh",
    "stability_score_thresh",
    "min_mask_region_area",
)
PARITY_FIELDS = (
    "mean_iou",
    "min_image_mean_iou",
    "count_mismatch",
    "max_count_mismatch",
    "max_delta_predicted_iou",
    "max_delta_stability_score",
    "unique_match_fraction",
)

warnings.filterwarnings("ignore", category=FutureWarning, module="timm")
warnings.filterwarnings("ignore", message="Overwriting tiny_vit")


# --------------------------------------------------------------------------- arguments


def parse_size(text: str) -> tuple[int, int]:
    """'4000x3000' -> (width, height)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return width, height


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model-type",
        default="vit_t",
        choices=("vit_h", "vit_l", "vit_b", "vit_t", "tiny"),
        help="SAM model (default vit_t, MobileSAM)",
    )
    model.add_argument(
        "--checkpoint",
        type=Path,
        help="weights file; absent: random weights (fine for timing; in --pipeline mode the "
        "product's official checkpoint is used instead)",
    )
    model.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="default: cuda if available",
    )
    model.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    model.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="glibc keeps freed memory (as predict.py does by default); applies to both "
        "implementations, since they share the process",
    )
    model.add_argument(
        "--fast",
        action="store_true",
        help="also time our fast mode (bfloat16 autocast; CUDA only)",
    )

    images = parser.add_argument_group("images")
    images.add_argument("--images", nargs="+", type=Path, default=[], help="image files or folders")
    images.add_argument("--max-images", type=int, help="use at most N of the image files")
    images.add_argument(
        "--resize-long-side",
        type=int,
        help="shrink image files so their longer side is at most this (not synthetic images)",
    )
    images.add_argument(
        "--synthetic-size",
        type=parse_size,
        metavar="WxH",
        help="add a synthetic image of this size, e.g. 4000x3000",
    )

    settings = parser.add_argument_group("generator settings (default: the reference's)")
    settings.add_argument("--points-per-side", type=int)
    settings.add_argument("--crop-n-layers", type=int)
    settings.add_argument("--points-per-batch", type=int)
    settings.add_argument("--pred-iou-thresh", type=float)
    settings.add_argument("--stability-score-thresh", type=float)
    settings.add_argument("--min-mask-region-area", type=int)

    timing = parser.add_argument_group("timing and output")
    timing.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    timing.add_argument(
        "--reference-rounds",
        type=int,
        help="timed rounds of the reference (default --rounds; 1 when it is slow)",
    )
    timing.add_argument(
        "--pipeline",
        metavar="SHARDS",
        help="time predict.py end to end over these shards (data.urls) instead",
    )
    timing.add_argument("--json", type=Path, help="append one JSON row per mode to this file")
    timing.add_argument("--markdown", type=Path, help="append table rows to this markdown file")
    args = parser.parse_args(argv)

    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.reference_rounds is None:
        args.reference_rounds = args.rounds
    if not 1 <= args.reference_rounds <= args.rounds:
        parser.error("--reference-rounds must be in [1, --rounds]")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but CUDA is not available")
    if args.pipeline is None and not args.images and args.synthetic_size is None:
        parser.error("give --images and/or --synthetic-size (or --pipeline SHARDS)")
    return args


def generator_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in SETTING_FLAGS if getattr(args, name) is not None}


# --------------------------------------------------------------------------- images


@dataclass
class Image:
    name: str
    pixels: np.ndarray  # HWC uint8 RGB


def image_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS))
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"error: no such image file or folder: {path}")
    return files


def read_image(path: Path, long_side: int | None) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"error: cannot read image {path}")
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if long_side and max(image.shape[:2]) > long_side:
        scale = long_side / max(image.shape[:2])
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image)


def synthetic_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth blobs of colour with a few hard-edged shapes: regions a model can segment."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, size=(max(2, height // 250), max(2, width // 250), 3))
    image = cv2.resize(cells.astype(np.uint8), (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(12):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(width // 40 + 1, width // 6 + 2)),) * 2
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        cv2.ellipse(image, center, axes, 0, 0, 360, color, thickness=-1)
    return image


def load_images(args: argparse.Namespace) -> list[Image]:
    files = image_files(args.images)
    if args.max_images is not None:
        files = files[: args.max_images]
    images = [Image(p.name, read_image(p, args.resize_long_side)) for p in files]
    if args.synthetic_size is not None:
        width, height = args.synthetic_size
        images.append(Image(f"synthetic-{width}x{height}", synthetic_image(width, height)))
    if not images:
        raise SystemExit("error: no images found")
    return images


def image_set_label(images: list[Image]) -> str:
    if len(images) <= 4:
        return ", ".join(f"{i.name} {i.pixels.shape[1]}x{i.pixels.shape[0]}" for i in images)
    sides = [max(i.pixels.shape[:2]) for i in images]
    return f"{len(images)} images, long side {min(sides)}-{max(sides)}"


# --------------------------------------------------------------------------- hardware


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    try:
        run = lambda *cmd: subprocess.run(  # noqa: E731
            ["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        commit = run("rev-parse", "--short", "HEAD")
        return commit + ("-dirty" if run("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def hardware(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": None,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_memory_gb=round(props.total_memory / 1024**3, 1),
            cuda=torch.version.cuda,
        )
    return info


def hardware_label(hw: dict[str, Any]) -> str:
    if hw.get("gpu"):
        return hw["gpu"]
    return f"{hw['cpu']} ({hw['cpus_usable'] or hw['cpu_count']} cores, {hw['torch_threads']} thr)"


# --------------------------------------------------------------------------- memory


def _rss_bytes() -> int | None:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


_process_peak = 0  # ru_maxrss seen before each VmHWM reset (a reset lowers ru_maxrss too)


def process_max_rss() -> int:
    """The process's peak RSS so far (bytes): ru_maxrss, kept across VmHWM resets."""
    global _process_peak
    ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _process_peak = max(_process_peak, ru_maxrss * (1 if sys.platform == "darwin" else 1024))
    return _process_peak


def _reset_kernel_peak() -> bool:
    """Resets VmHWM (the kernel's peak RSS of this process); Linux >= 4.0."""
    process_max_rss()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _kernel_peak_bytes() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


class RssSampler:
    """Samples this process's RSS every `interval` seconds in a thread while in the block."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.start = self.peak = _rss_bytes() or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes() or 0)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.start = self.peak = _rss_bytes() or 0
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes() or 0)


@dataclass
class Call:
    seconds: float
    rss_start: int
    rss_peak: int
    kernel_peak: int | None
    cuda_allocated: int | None
    cuda_reserved: int | None


def measure(fn: Callable[[], Any], cuda: bool) -> tuple[Any, Call]:
    """Runs fn once: wall time (perf_counter, CUDA synchronised) and peak memory."""
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    kernel = _reset_kernel_peak()
    with RssSampler() as rss:
        start = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return out, Call(
        seconds=seconds,
        rss_start=rss.start,
        rss_peak=rss.peak,
        kernel_peak=_kernel_peak_bytes() if kernel else None,
        cuda_allocated=torch.cuda.max_memory_allocated() if cuda else None,
        cuda_reserved=torch.cuda.max_memory_reserved() if cuda else None,
    )


# --------------------------------------------------------------------------- parity


def compare(reference: list[dict], ours: list[dict]) -> dict[str, Any]:
    """Each reference mask matched to our mask of highest IoU (coco_rle records)."""
    n_ref, n_ours = len(reference), len(ours)
    out: dict[str, Any] = {"n_reference": n_ref, "n_ours": n_ours}
    if n_ref == 0:
        # Nothing to match: agreement only if we found nothing either.
        return {
            **out,
            "mean_iou": None if n_ours == 0 else 0.0,
            "count_mismatch": 0.0 if n_ours == 0 else None,
            "max_delta_predicted_iou": None,
            "max_delta_stability_score": None,
            "unique_match_fraction": None,
        }
    if n_ours == 0:
        return {
            **out,
            "mean_iou": 0.0,
            "count_mismatch": 1.0,
            "max_delta_predicted_iou": None,
            "max_delta_stability_score": None,
            "unique_match_fraction": 0.0,
        }
    ious = np.asarray(
        coco_mask.iou(
            [r["segmentation"] for r in reference], [o["segmentation"] for o in ours], [0] * n_ours
        )
    ).reshape(n_ref, n_ours)
    best = ious.argmax(axis=1)
    pairs = [(r, ours[j]) for r, j in zip(reference, best, strict=True)]
    return {
        **out,
        "mean_iou": float(ious.max(axis=1).mean()),
        "count_mismatch": abs(n_ours - n_ref) / n_ref,
        "max_delta_predicted_iou": max(
            abs(float(r["predicted_iou"]) - float(o["predicted_iou"])) for r, o in pairs
        ),
        "max_delta_stability_score": max(
            abs(float(r["stability_score"]) - float(o["stability_score"])) for r, o in pairs
        ),
        "unique_match_fraction": len(set(best.tolist())) / n_ref,
    }


def _values(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [r[key] for r in rows if r.get(key) is not None]


def summarise_parity(per_image: list[dict[str, Any]]) -> dict[str, float | None]:
    def agg(key: str, fn: Callable[[list[float]], float]) -> float | None:
        values = _values(per_image, key)
        return float(fn(values)) if values else None

    return {
        "mean_iou": agg("mean_iou", statistics.fmean),
        "min_image_mean_iou": agg("mean_iou", min),
        "count_mismatch": agg("count_mismatch", statistics.fmean),
        "max_count_mismatch": agg("count_mismatch", max),
        "max_delta_predicted_iou": agg("max_delta_predicted_iou", max),
        "max_delta_stability_score": agg("max_delta_stability_score", max),
        "unique_match_fraction": agg("unique_match_fraction", min),
    }


# --------------------------------------------------------------------------- benchmark


@dataclass
class Mode:
    name: str  # reference | ours | ours_fast
    generate: Callable[[np.ndarray], list[dict]]
    rounds: int
    # The same generator with 2 points per side: a full warm-up of the reference would cost
    # as much as the measurement itself.
    warm_up: Callable[[np.ndarray], list[dict]]
    calls: list[Call] = field(default_factory=list)
    per_image: list[dict[str, Any]] = field(default_factory=list)


def build_modes(model: torch.nn.Module, args: argparse.Namespace) -> list[Mode]:
    from amg_lightning import AutomaticMaskGenerator

    if args.model_type == "vit_t":
        from mobile_sam import SamAutomaticMaskGenerator
    else:
        from segment_anything import SamAutomaticMaskGenerator

    settings = {**generator_settings(args), "output_mode": "coco_rle"}
    light = {**settings, "points_per_side": 2}
    modes = [
        Mode(
            "reference",
            SamAutomaticMaskGenerator(model, **settings).generate,
            args.reference_rounds,
            SamAutomaticMaskGenerator(model, **light).generate,
        ),
        Mode(
            "ours",
            AutomaticMaskGenerator(model, **settings).generate,
            args.rounds,
            AutomaticMaskGenerator(model, **light).generate,
        ),
    ]
    if args.fast:
        if args.device == "cuda":
            fast = AutomaticMaskGenerator(model, fast=True, **settings)
            fast_light = AutomaticMaskGenerator(model, fast=True, **light)
            modes.append(Mode("ours_fast", fast.generate, args.rounds, fast_light.generate))
        else:
            print("note: --fast is CUDA only (it has no effect on the CPU); not timed", flush=True)
    return modes


def run_benchmark(
    model: torch.nn.Module, images: list[Image], modes: list[Mode], args: argparse.Namespace
) -> None:
    cuda = args.device == "cuda"
    for mode in modes:  # untimed warm-up of each: lazy initialisation, allocator
        mode.warm_up(images[0].pixels)
    reference = modes[0]
    for round_index in range(args.rounds):
        for image in images:
            ref_records = None
            for mode in modes:
                if round_index >= mode.rounds:
                    continue
                records, call = measure(lambda m=mode, i=image: m.generate(i.pixels), cuda)
                mode.calls.append(call)
                if round_index > 0:
                    del records
                elif mode is reference:
                    ref_records = records
                    mode.per_image.append({"image": image.name, "n_masks": len(records)})
                    print(
                        f"  {image.name}: reference {call.seconds:.3f} s, {len(records)} masks",
                        flush=True,
                    )
                else:
                    parity = compare(ref_records, records)
                    del records
                    mode.per_image.append({"image": image.name, **parity})
                    print(
                        f"  {image.name}: {mode.name} {call.seconds:.3f} s, "
                        f"{parity['n_ours']} masks (reference {parity['n_reference']}), "
                        f"mean IoU {_fmt(parity['mean_iou'], '.4f')}",
                        flush=True,
                    )
            del ref_records
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)


def _mb(value: float | None) -> float | None:
    return None if value is None else round(value / MB, 1)


def mode_row(mode: Mode, reference: Mode, common: dict[str, Any]) -> dict[str, Any]:
    seconds = [c.seconds for c in mode.calls]
    per_image = statistics.fmean(seconds)
    ref_per_image = statistics.fmean(c.seconds for c in reference.calls)
    kernel = [c.kernel_peak for c in mode.calls if c.kernel_peak is not None]
    cuda = [c.cuda_allocated for c in mode.calls if c.cuda_allocated is not None]
    cuda_reserved = [c.cuda_reserved for c in mode.calls if c.cuda_reserved is not None]
    is_reference = mode is reference
    parity = dict.fromkeys(PARITY_FIELDS) if is_reference else summarise_parity(mode.per_image)
    n_masks = [p.get("n_masks", p.get("n_ours")) for p in mode.per_image]
    return {
        **common,
        "mode": mode.name,
        "precision": "bf16-autocast" if mode.name == "ours_fast" else "fp32",
        "rounds": mode.rounds,
        "calls": len(seconds),
        "seconds_per_image": per_image,
        "seconds_per_image_std": statistics.stdev(seconds) if len(seconds) > 1 else 0.0,
        "seconds_min": min(seconds),
        "seconds_max": max(seconds),
        "images_per_second": 1.0 / per_image if per_image > 0 else None,
        "speedup_vs_reference": ref_per_image / per_image if per_image > 0 else None,
        "masks_per_image": statistics.fmean(n_masks) if n_masks else None,
        **parity,
        "peak_rss_mb": _mb(max(c.rss_peak for c in mode.calls)),
        "peak_rss_delta_mb": _mb(max(c.rss_peak - c.rss_start for c in mode.calls)),
        "peak_kernel_rss_mb": _mb(max(kernel)) if kernel else None,
        "cuda_max_allocated_mb": _mb(max(cuda)) if cuda else None,
        "cuda_max_reserved_mb": _mb(max(cuda_reserved)) if cuda_reserved else None,
        "per_image": mode.per_image,
    }


def benchmark(args: argparse.Namespace) -> list[dict[str, Any]]:
    from amg_lightning import build_sam

    images = load_images(args)
    model = build_sam(args.model_type, args.checkpoint).to(args.device)
    modes = build_modes(model, args)
    hw = hardware(args.device)
    print(
        f"{args.model_type} on {args.device} ({hardware_label(hw)}), torch {hw['torch']}; "
        f"{image_set_label(images)}; settings {generator_settings(args) or 'defaults'}",
        flush=True,
    )
    run_benchmark(model, images, modes, args)
    common = {
        **common_fields(args, hw),
        "kind": "generate",
        "image_set": image_set_label(images),
        "images": [
            {"name": i.name, "height": i.pixels.shape[0], "width": i.pixels.shape[1]}
            for i in images
        ],
        "n_images": len(images),
        "process_max_rss_mb": _mb(process_max_rss()),
    }
    return [mode_row(mode, modes[0], common) for mode in modes]


def common_fields(args: argparse.Namespace, hw: dict[str, Any]) -> dict[str, Any]:
    return {
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "model_type": args.model_type,
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "device": args.device,
        "settings": generator_settings(args),
        "keep_freed_memory": bool(args.keep_freed_memory),
        "hardware": hw,
    }


# --------------------------------------------------------------------------- pipeline


def pipeline_command(args: argparse.Namespace, output_dir: Path) -> list[str]:
    command = [
        sys.executable,
        str(REPO / "predict.py"),
        f"data.urls={args.pipeline}",
        f"output_dir={output_dir / 'out'}",
        f"hydra.run.dir={output_dir / 'hydra'}",
        f"model={args.model_type}",
        f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}",
    ]
    if args.checkpoint:
        command.append(f"model.checkpoint={args.checkpoint.resolve()}")
    command += [f"{name}={value}" for name, value in generator_settings(args).items()]
    command.append(f"keep_freed_memory={str(args.keep_freed_memory).lower()}")
    if args.fast:
        command.append("fast=true")
    return command


def run_predict(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)


def pipeline(args: argparse.Namespace) -> list[dict[str, Any]]:
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    runs = []
    for round_index in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="amg-bench-") as tmp:
            command = pipeline_command(args, Path(tmp))
            print("$ " + " ".join(command), flush=True)
            done = run_predict(command, env)
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
                raise SystemExit(f"error: predict.py failed ({done.returncode}):\n{tail}")
            summary = json.loads((Path(tmp) / "out" / "summary.json").read_text())
        runs.append(summary)
        print(
            f"round {round_index + 1}/{args.rounds}: {summary['images']} images in "
            f"{summary['wall_seconds']:.2f} s ({summary['images_per_second']:.3f} images/s)",
            flush=True,
        )
    fast = args.fast and args.device == "cuda"  # the product ignores fast on the CPU
    images = sum(r["images"] for r in runs)
    wall = sum(r["wall_seconds"] for r in runs)
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    row = {
        **common_fields(args, hardware(args.device)),
        "kind": "pipeline",
        "mode": "ours_fast" if fast else "ours",
        "precision": "bf16-autocast" if fast else "fp32",
        "image_set": f"shards {args.pipeline}",
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
        "process_max_rss_mb": _mb(child_rss),
    }
    if args.max_images is not None:
        print("note: --max-images does not apply to --pipeline (every image is run)")
    return [row]


# --------------------------------------------------------------------------- reporting


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
    ("mean IoU", "mean_iou", ".4f"),
    ("min IoU", "min_image_mean_iou", ".4f"),
    ("count Δ", "count_mismatch", ".4f"),
    ("max Δiou", "max_delta_predicted_iou", ".1e"),
    ("max Δstab", "max_delta_stability_score", ".1e"),
    ("RSS peak MB", "peak_rss_mb", ".0f"),
    ("RSS Δ MB", "peak_rss_delta_mb", ".0f"),
    ("CUDA MB", "cuda_max_allocated_mb", ".0f"),
)


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = [(h, k, d) for h, k, d in TABLE if any(r.get(k) is not None for r in rows)]
    cells = [[h for h, _, _ in columns]] + [
        [_fmt(r.get(k), f) for _, k, f in columns] for r in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    hw = rows[0]["hardware"]
    print()
    print(f"hardware: {hardware_label(hw)}; torch {hw['torch']}; commit {rows[0]['git_commit']}")
    print(
        f"{rows[0]['kind']}: {rows[0]['model_type']} on {rows[0]['device']}; {rows[0]['image_set']}"
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
    "| images/s | speed-up | mean IoU | count Δ | max Δiou | max Δstab | RSS Δ MB | CUDA MB |\n"
    "|---|---|---|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
)


def markdown_rows(rows: list[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        settings = ", ".join(f"{k}={v}" for k, v in row["settings"].items()) or "defaults"
        cells = [
            row["timestamp"][:10],
            row["git_commit"] or "-",
            hardware_label(row["hardware"]),
            row["device"],
            row["model_type"],
            row["image_set"],
            settings,
            row["kind"],
            row["mode"],
            _fmt(row.get("seconds_per_image"), ".3f"),
            _fmt(row.get("images_per_second"), ".3f"),
            _fmt(row.get("speedup_vs_reference"), ".2f"),
            _fmt(row.get("mean_iou"), ".4f"),
            _fmt(row.get("count_mismatch"), ".4f"),
            _fmt(row.get("max_delta_predicted_iou"), ".1e"),
            _fmt(row.get("max_delta_stability_score"), ".1e"),
            _fmt(row.get("peak_rss_delta_mb"), ".0f"),
            _fmt(row.get("cuda_max_allocated_mb"), ".0f"),
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


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory and not args.pipeline:  # predict.py applies it itself
        from amg_lightning.utils.allocator import keep_freed_memory

        print(f"keep_freed_memory: {keep_freed_memory()}", flush=True)
    rows = pipeline(args) if args.pipeline else benchmark(args)
    print_table(rows)
    write_outputs(rows, args)
    return rows


if __name__ == "__main__":
    main()
