"""`amg-bench`: time the generator against SAM's reference, or the whole pipeline.

    amg-bench generate --images photos/dog.jpg --checkpoint mobile_sam.pt --fast
    amg-bench generate --model-type vit_h --synthetic-size 4000x3000 --rounds 3 \\
        --reference-rounds 1 --json bench.jsonl --markdown bench.md
    amg-bench pipeline 'shards/images-{000000..000003}.tar' --checkpoint mobile_sam.pt
    amg-bench tiling --checkpoint mobile_sam.pt --points-per-side 8   (tiled against untiled)
    amg-bench tiling-figure docs/images/tiling.png
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

import torch

from amg_lightning.bench import generate, pipeline, tiling, tiling_figure
from amg_lightning.bench.machine import git_commit, hardware
from amg_lightning.bench.report import print_table, write_outputs
from amg_lightning.core.models import MODEL_TYPES, RANDOM_MODEL_TYPES


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model and machine")
    model.add_argument(
        "--model-type", default="vit_t", choices=MODEL_TYPES, help="SAM model (default vit_t)"
    )
    model.add_argument(
        "--checkpoint", type=Path, help="weights file; absent: random weights (fine for timing)"
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
        help="glibc keeps freed memory (utils/allocator.py); process-wide, so it applies "
        "to every implementation in the run alike",
    )
    model.add_argument(
        "--fast",
        action="store_true",
        help="also time our fast mode (bfloat16 mask upscaler)",
    )
    out = parser.add_argument_group("timing and output")
    out.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    out.add_argument("--json", type=Path, help="append one JSON row per mode to this file")
    out.add_argument("--markdown", type=Path, help="append table rows to this markdown file")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="amg-bench",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, module in (("generate", generate), ("pipeline", pipeline)):
        sub = commands.add_parser(
            name,
            help=module.__doc__.split("\n")[0],
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _common_arguments(sub)
        module.add_arguments(sub)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but CUDA is not available")
    if args.command == "generate":
        generate.check_arguments(parser, args)
    return args


def weights_label(args: argparse.Namespace) -> str:
    """What the model's weights are: "checkpoint", "random" or "sharpened random"."""
    if args.checkpoint is not None:
        return "checkpoint"
    if args.command == "pipeline" and args.model_type not in RANDOM_MODEL_TYPES:
        return "checkpoint"  # predict.py resolves the official file
    return "sharpened random" if getattr(args, "sharpen", False) else "random"


def common_fields(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "model_type": args.model_type,
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "weights": weights_label(args),
        "device": args.device,
        "settings": generate.generator_settings(args),
        "keep_freed_memory": bool(args.keep_freed_memory),
        "hardware": hardware(args.device),
    }


# Commands with arguments of their own, outside the reference comparison's common ones.
OWN_COMMANDS = {"tiling": tiling.main, "tiling-figure": tiling_figure.main}


def main(argv: list[str] | None = None) -> int:
    """`amg-bench`: exit status 0 (a console script exits with what this returns)."""
    run(sys.argv[1:] if argv is None else argv)
    return 0


def run(argv: list[str]) -> list[dict[str, Any]]:
    """The command's rows (none for the commands with their own output)."""
    if argv and argv[0] in OWN_COMMANDS:
        OWN_COMMANDS[argv[0]](argv[1:])
        return []
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory and args.command == "generate":  # amg-predict applies it itself
        from amg_lightning.utils.allocator import keep_freed_memory

        print(f"keep_freed_memory: {keep_freed_memory()}", flush=True)
    module = generate if args.command == "generate" else pipeline
    rows = module.run(args, common_fields(args))
    print_table(rows)
    write_outputs(rows, args)
    return rows


if __name__ == "__main__":
    main()
