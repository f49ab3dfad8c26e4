"""`amg-bench generate`: our generator against SAM's reference, side by side in one process.

The reference is the model family's own: segment_anything's SamAutomaticMaskGenerator
(mobile_sam's copy for vit_t), sam2's SAM2AutomaticMaskGenerator for SAM 2 models.

Both run on the same model object, images and settings: one untimed warm-up call of each on
the first image, then per round and image the reference, ours and (with --fast) our fast mode,
one after another, so load from other work falls on all of them alike. Reported per mode:
seconds per image, ratio to the reference, peak memory, and parity with the reference
(`amg_lightning.bench.parity`: exact twins for the exact mode, matched IoU and counts for all).
With `--against exact`, our exact mode takes the reference's place.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amg_lightning.bench import parity
from amg_lightning.bench.images import Image, image_set_label, load_images
from amg_lightning.bench.machine import Call, hardware_label, mb, measure, process_max_rss
from amg_lightning.core.models import model_family

# Flag -> generator argument; only the flags given are passed (else the reference's defaults).
SETTING_FLAGS = (
    "points_per_side",
    "crop_n_layers",
    "points_per_batch",
    "pred_iou_thresh",
    "stability_score_thresh",
    "min_mask_region_area",
    "stability_score_offset",
    "crop_n_points_downscale_factor",
    "use_m2m",
)
PRECISION = {"ours_fast": "bf16-upscaler", "ours_fast_tf32": "bf16-upscaler, tf32"}
PARITY_FIELDS = (
    "exact_parity",
    "mean_iou",
    "min_image_mean_iou",
    "count_mismatch",
    "max_count_mismatch",
    "max_delta_predicted_iou",
    "max_delta_stability_score",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    for name in SETTING_FLAGS:
        flag = "--" + name.replace("_", "-")
        if name == "use_m2m":  # absent: None, so the reference's default applies
            settings.add_argument(flag, action="store_true", default=None, help="SAM 2 only")
        else:
            kind = float if name.endswith(("thresh", "offset")) else int
            settings.add_argument(flag, type=kind)
    parser.add_argument(
        "--sharpen",
        action="store_true",
        help="random weights made to segment (core.models.sharpen): scaled mask logits, and "
        "SAM 2's IoU logits, so that masks differ per point and pass the default thresholds",
    )
    parser.add_argument(
        "--stages",
        action="store_true",
        help="after the timed rounds, profile one more call of our modes per image and "
        "report the seconds spent in each stage (the generator's amg.* profiler ranges)",
    )
    parser.add_argument(
        "--against",
        choices=("reference", "exact"),
        default="reference",
        help="what the other modes are timed and matched against: SAM's reference generator "
        "(default), or our exact mode, whose records are the reference's (the exact rows show "
        "it), to check fast mode on many images without the reference's minutes per image",
    )
    parser.add_argument(
        "--tf32",
        action="store_true",
        help="with --fast on CUDA, also time fast mode with TF32 products allowed during its "
        "calls (mode ours_fast_tf32); every other mode keeps TF32 off",
    )
    parser.add_argument(
        "--reference-rounds",
        type=int,
        help="timed rounds of the reference (default --rounds; 1 when it is slow)",
    )


def parse_size(text: str) -> tuple[int, int]:
    """'4000x3000' -> (width, height)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return width, height


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.reference_rounds is None:
        args.reference_rounds = args.rounds
    if not 1 <= args.reference_rounds <= args.rounds:
        parser.error("--reference-rounds must be in [1, --rounds]")
    if not args.images and args.synthetic_size is None:
        parser.error("give --images and/or --synthetic-size")
    if args.against == "exact" and not args.fast:
        parser.error("--against exact compares fast mode with exact mode: add --fast")
    if args.tf32 and not args.fast:
        parser.error("--tf32 times fast mode with TF32 products: add --fast")
    if args.sharpen and args.checkpoint is not None:
        parser.error("--sharpen changes random weights: leave out --checkpoint")
    if args.use_m2m and model_family(args.model_type) != "sam2":
        parser.error(f"--use-m2m is a SAM 2 setting; {args.model_type} is a SAM 1 model")


def generator_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        name: getattr(args, name) for name in SETTING_FLAGS if getattr(args, name, None) is not None
    }


@dataclass
class Mode:
    name: str  # reference | ours | ours_fast; the first mode is what the others are matched to
    generate: Callable[[np.ndarray], list[dict]]
    rounds: int
    # The same generator with 2 points per side: a full warm-up of the reference would cost
    # as much as the measurement itself.
    warm_up: Callable[[np.ndarray], list[dict]]
    calls: list[Call] = field(default_factory=list)
    per_image: list[dict[str, Any]] = field(default_factory=list)
    stages: dict[str, float] | None = None  # seconds per image in each amg.* range


def sam2_reference(model: torch.nn.Module, **settings: Any):
    """sam2's SAM2AutomaticMaskGenerator on `model`. Its image predictor assumes a 1024-pixel
    input for the feature map sizes; they are set to the model's own (tiny_sam2: 256)."""
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    generator = SAM2AutomaticMaskGenerator(model, **settings)
    side = model.image_size // 4
    generator.predictor._bb_feat_sizes = [(side, side), (side // 2, side // 2), (side // 4,) * 2]
    return generator


def reference_generator(model_type: str) -> Callable[..., Any]:
    """The family's reference generator class (or factory) for `model_type`."""
    if model_family(model_type) == "sam2":
        return sam2_reference
    if model_type == "vit_t":
        from amg_lightning.core.models import quiet_mobile_sam_import

        with quiet_mobile_sam_import():
            from mobile_sam import SamAutomaticMaskGenerator
    else:
        from segment_anything import SamAutomaticMaskGenerator
    return SamAutomaticMaskGenerator


def build_modes(model: torch.nn.Module, args: argparse.Namespace) -> list[Mode]:
    from amg_lightning import AutomaticMaskGenerator

    reference_class = reference_generator(args.model_type)
    settings = {**generator_settings(args), "output_mode": "coco_rle"}
    light = {**settings, "points_per_side": 2}
    modes = [
        Mode(
            "ours",
            AutomaticMaskGenerator(model, **settings).generate,
            args.rounds,
            AutomaticMaskGenerator(model, **light).generate,
        ),
    ]
    if args.against == "reference":
        reference = Mode(
            "reference",
            reference_class(model, **settings).generate,
            args.reference_rounds,
            reference_class(model, **light).generate,
        )
        modes.insert(0, reference)
    if args.fast:
        fast = AutomaticMaskGenerator(model, fast=True, **settings)
        fast_light = AutomaticMaskGenerator(model, fast=True, **light)
        modes.append(Mode("ours_fast", fast.generate, args.rounds, fast_light.generate))
        if args.tf32:
            modes.append(
                Mode(
                    "ours_fast_tf32",
                    with_tf32(fast.generate),
                    args.rounds,
                    with_tf32(fast_light.generate),
                )
            )
    return modes


def with_tf32(generate: Callable[[np.ndarray], list[dict]]) -> Callable[[np.ndarray], list[dict]]:
    """`generate` with TF32 products allowed during each call (the flags are process-wide)."""

    def call(image: np.ndarray) -> list[dict]:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            return generate(image)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    return call


def compare(reference: list[dict], ours: list[dict]) -> dict[str, Any]:
    """Parity of one image's records with the reference's (or the baseline mode's)."""
    exact = parity.exact_parity(reference, ours)
    close = parity.fast_parity(reference, ours)
    return {
        "n_reference": exact.n_reference,
        "n_ours": exact.n_ours,
        "n_twinned": exact.n_twinned,
        "exact_parity": exact.ok,
        "mean_iou": close.mean_iou,
        "count_mismatch": close.count_mismatch,
        "fast_parity": close.ok,
        "max_delta_predicted_iou": exact.max_delta_predicted_iou,
        "max_delta_stability_score": exact.max_delta_stability_score,
    }


def summarise_parity(per_image: list[dict[str, Any]]) -> dict[str, Any]:
    def values(key: str) -> list[float]:
        return [p[key] for p in per_image]

    return {
        "exact_parity": all(values("exact_parity")),
        "mean_iou": statistics.fmean(values("mean_iou")),
        "min_image_mean_iou": min(values("mean_iou")),
        "count_mismatch": statistics.fmean(values("count_mismatch")),
        "max_count_mismatch": max(values("count_mismatch")),
        "max_delta_predicted_iou": max(values("max_delta_predicted_iou")),
        "max_delta_stability_score": max(values("max_delta_stability_score")),
    }


def run_rounds(images: list[Image], modes: list[Mode], args: argparse.Namespace) -> None:
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
                call.image = image.name
                mode.calls.append(call)
                if round_index > 0:
                    del records
                elif mode is reference:
                    ref_records = records
                    mode.per_image.append({"image": image.name, "n_masks": len(records)})
                    print(
                        f"  {image.name}: {mode.name} {call.seconds:.3f} s, {len(records)} masks",
                        flush=True,
                    )
                else:
                    found = compare(ref_records, records)
                    del records
                    mode.per_image.append({"image": image.name, **found})
                    print(
                        f"  {image.name}: {mode.name} {call.seconds:.3f} s, "
                        f"{found['n_ours']} masks ({reference.name} {found['n_reference']}), "
                        f"exact {found['exact_parity']}, mean IoU {found['mean_iou']:.4f}",
                        flush=True,
                    )
            del ref_records
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)


def stage_seconds(mode: Mode, images: list[Image]) -> dict[str, float]:
    """Seconds per image in each of the generator's `amg.*` profiler ranges (one more call
    per image, under torch.profiler: its own overhead is in the numbers)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for image in images:
            mode.generate(image.pixels)
    return {
        event.key.removeprefix("amg."): event.cpu_time_total / 1e6 / len(images)
        for event in profiler.key_averages()
        if event.key.startswith("amg.")
    }


def mode_row(mode: Mode, reference: Mode, common: dict[str, Any]) -> dict[str, Any]:
    seconds = [c.seconds for c in mode.calls]
    per_image = statistics.fmean(seconds)
    ref_per_image = statistics.fmean(c.seconds for c in reference.calls)
    kernel = [c.kernel_peak for c in mode.calls if c.kernel_peak is not None]
    cuda = [c.cuda_allocated for c in mode.calls if c.cuda_allocated is not None]
    found = dict.fromkeys(PARITY_FIELDS) if mode is reference else summarise_parity(mode.per_image)
    n_masks = [p.get("n_masks", p.get("n_ours")) for p in mode.per_image]
    return {
        **common,
        "mode": mode.name,
        "precision": PRECISION.get(mode.name, "fp32"),
        "rounds": mode.rounds,
        "calls": len(seconds),
        "seconds_per_image": per_image,
        "seconds_per_image_std": statistics.stdev(seconds) if len(seconds) > 1 else 0.0,
        "seconds_min": min(seconds),
        "seconds_max": max(seconds),
        "seconds_per_call": [{"image": c.image, "seconds": c.seconds} for c in mode.calls],
        "images_per_second": 1.0 / per_image if per_image > 0 else None,
        "speedup_vs_reference": ref_per_image / per_image if per_image > 0 else None,
        "masks_per_image": statistics.fmean(n_masks) if n_masks else None,
        **found,
        "peak_rss_mb": mb(max(c.rss_peak for c in mode.calls)),
        "peak_rss_delta_mb": mb(max(c.rss_peak - c.rss_start for c in mode.calls)),
        "peak_kernel_rss_mb": mb(max(kernel)) if kernel else None,
        "cuda_max_allocated_mb": mb(max(cuda)) if cuda else None,
        "per_image": mode.per_image,
        "stage_seconds": mode.stages,
    }


def run(args: argparse.Namespace, common: dict[str, Any]) -> list[dict[str, Any]]:
    from amg_lightning import build_sam
    from amg_lightning.core.models import sharpen

    images = load_images(args.images, args.max_images, args.resize_long_side, args.synthetic_size)
    # Exactness on CUDA is defined with TF32 off for both sides (cuDNN's default is on).
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    model = build_sam(args.model_type, args.checkpoint)
    if args.sharpen:
        sharpen(model)
    model = model.to(args.device)
    modes = build_modes(model, args)
    hw = common["hardware"]
    print(
        f"{args.model_type} ({common['weights']} weights) on {args.device} "
        f"({hardware_label(hw)}), torch {hw['torch']}; "
        f"{image_set_label(images)}; settings {generator_settings(args) or 'defaults'}",
        flush=True,
    )
    run_rounds(images, modes, args)
    if args.stages:
        for mode in (m for m in modes if m.name != "reference"):
            mode.stages = stage_seconds(mode, images)
            split = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in mode.stages.items())
            print(f"{mode.name} stages per image: {split}", flush=True)
    common = {
        **common,
        "kind": "generate",
        "baseline": modes[0].name,  # what speedup_vs_reference and parity are measured against
        "image_set": image_set_label(images),
        "images": [
            {"name": i.name, "height": i.pixels.shape[0], "width": i.pixels.shape[1]}
            for i in images
        ],
        "n_images": len(images),
        "process_max_rss_mb": mb(process_max_rss()),
    }
    return [mode_row(mode, modes[0], common) for mode in modes]
