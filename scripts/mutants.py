"""Mutation check: break the code on purpose, one small breakage at a time, and see which test
catches it. Each mutant is applied to a scratch copy of the checkout (the files git tracks plus
untracked ones it does not ignore); the working tree is never touched.

    python scripts/mutants.py [--only NAME ...] [--keep]

Prints a table (mutant, file, the first test that failed) and exits 1 if any mutant survived.
Slow: minutes per mutant on two cores, so it is not part of CI.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The fast tests: no subprocess runs, no real checkpoint.
MARKERS = "not e2e and not slow and not gpu"


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = [
    Mutant(
        "dropped filter: no cross-crop NMS",
        "amg_lightning/core/generator.py",
        "if self.settings.crop_n_layers > 0:",
        "if False:",
        ("tests/test_filters.py", "tests/test_generator.py"),
    ),
    Mutant(
        "flipped preference: small-region NMS prefers changed masks",
        "amg_lightning/core/generator.py",
        "return masks.select(box_nms(boxes, unchanged, nms_thresh))",
        "return masks.select(box_nms(boxes, 1 - unchanged, nms_thresh))",
        ("tests/test_filters.py", "tests/test_generator.py"),
    ),
    Mutant(
        "forgotten offset: crop point_coords left in the crop's frame",
        "amg_lightning/core/generator.py",
        "points=points[keep].cpu() + torch.tensor(crop_box[:2]),",
        "points=points[keep].cpu(),",
        ("tests/test_filters.py", "tests/test_generator.py"),
    ),
    Mutant(
        "off-by-one in RLE: a run ending at the last pixel",
        "amg_lightning/core/rle.py",
        "positions[-1] == total:",
        "positions[-1] == total - 1:",
        ("tests/test_core_steps.py", "tests/test_filters.py"),
    ),
    Mutant(
        "wrong crop overlap: half the overlap",
        "amg_lightning/core/grids.py",
        "* (2 / per_side))",
        "* (1 / per_side))",
        ("tests/test_core_steps.py", "tests/test_filters.py"),
    ),
    Mutant(
        "tiled masks: whole tiles inside the mask read at the upper stability cutoff",
        "amg_lightning/core/full_res.py",
        "return TiledMasks(self, counts, above[:, 1] & decided, tiles, binary)",
        "return TiledMasks(self, counts, above[:, 2] & decided, tiles, binary)",
        ("tests/test_full_res.py",),
    ),
    Mutant(
        "tiled masks: a tile's bounds miss its last low-res source",
        "amg_lightning/core/full_res.py",
        "_every_index(read_sources.first[:, 0], read_sources.second[:, -1])",
        "_every_index(read_sources.first[:, 0], read_sources.first[:, -1])",
        ("tests/test_full_res.py",),
    ),
    Mutant(
        "writer drops the last record: the open shard is never finished",
        "amg_lightning/run/writer.py",
        "        self._worker.close()\n        self._finish_shard()\n        wall_seconds",
        "        self._worker.close()\n        wall_seconds",
        ("tests/test_writer.py",),
    ),
    Mutant(
        "writer closes its shard without waiting for its thread's batches",
        "amg_lightning/run/writer.py",
        "        self._worker.close()\n        self._finish_shard()\n        wall_seconds",
        "        self._finish_shard()\n        wall_seconds",
        ("tests/test_writer_thread.py",),
    ),
    Mutant(
        "writer's thread takes every batch handed over, however slow the disk",
        "amg_lightning/utils/worker.py",
        "queue.Queue(max_pending)",
        "queue.Queue()",
        ("tests/test_writer_thread.py",),
    ),
    Mutant(
        "workers leave sharing to the queue's feeder thread: a batch it cannot share is lost",
        "amg_lightning/data/datamodule.py",
        "    if get_worker_info() is not None:\n        _share_tensors(batch)\n",
        "",
        ("tests/test_datamodule.py",),
    ),
    Mutant(
        "resume trusts a damaged shard: one cut at a member boundary reads as complete",
        "amg_lightning/data/tar_reader.py",
        'raise DamagedTar("it ends without tar\'s end-of-archive marker (two zero blocks)")',
        "return",
        ("tests/test_resume.py", "tests/test_damaged_input.py"),
    ),
    Mutant(
        "resume counts a closed but un-renamed *.tar.tmp as done",
        "amg_lightning/run/folder.py",
        "    for path in shard_paths(output_dir):",
        '    for path in [*shard_paths(output_dir), *Path(output_dir).glob("masks-*.tar.tmp")]:',
        ("tests/test_resume.py",),
    ),
    Mutant(
        "progress count skips done samples by their place among the samples still to do",
        "amg_lightning/data/count.py",
        "    for index, (url, key) in enumerate(samples):",
        "    for index, (url, key) in enumerate(s for s in samples if not already_done(*s, skip)):",
        ("tests/test_progress_total.py",),
    ),
    Mutant(
        "rank left out of the ids",
        "amg_lightning/run/ids.py",
        "    return number << RANK_BITS | rank",
        "    return number << RANK_BITS",
        ("tests/test_ids.py",),
    ),
    Mutant(
        "cross-crop NMS reads box_nms_thresh instead of crop_nms_thresh",
        "amg_lightning/core/generator.py",
        "_crop_preference(masks.crop_boxes), self.settings.crop_nms_thresh",
        "_crop_preference(masks.crop_boxes), self.settings.box_nms_thresh",
        ("tests/test_filters.py",),
    ),
    Mutant(
        "predicted-IoU filter keeps a score equal to the threshold",
        "amg_lightning/core/generator.py",
        "iou_preds > s.pred_iou_thresh\n",
        "iou_preds >= s.pred_iou_thresh\n",
        ("tests/test_filters.py",),
    ),
    Mutant(
        "tiling merge keeps both copies of a mask seen whole by two tiles",
        "amg_lightning/core/tiling.py",
        "dropped.add(j if gaps[0] >= gaps[1] else i)",
        "pass",
        ("tests/test_tiling.py",),
    ),
]


def scratch_copy(destination: Path) -> None:
    """The checkout's files as git sees them (tracked, and untracked but not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def run_tests(copy: Path, tests: tuple[str, ...]) -> tuple[bool, str]:
    """(passed, the first failing test or the last output line)."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    command += ["-m", MARKERS, *tests]
    environment = {**os.environ, "PYTHONPATH": str(copy)}
    finished = subprocess.run(command, cwd=copy, env=environment, capture_output=True, text=True)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", finished.stdout, re.MULTILINE)
    last = (finished.stdout.strip().splitlines() or ["no output"])[-1]
    return finished.returncode == 0, failed[0] if failed else last


def mutate(copy: Path, mutant: Mutant) -> None:
    path = copy / mutant.path
    text = path.read_text()
    if text.count(mutant.old) != 1:
        raise SystemExit(f"{mutant.name}: the code to break is not in {mutant.path} exactly once")
    path.write_text(text.replace(mutant.old, mutant.new))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", help="run the mutants whose name contains these")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or any(o in m.name for o in args.only)]
    rows, survivors = [], 0
    for mutant in [None, *chosen]:
        copy = Path(tempfile.mkdtemp(prefix="amg-mutant-"))
        try:
            scratch_copy(copy)
            tests = tuple(sorted({t for m in chosen for t in m.tests}))
            if mutant is not None:
                mutate(copy, mutant)
                tests = mutant.tests
            passed, detail = run_tests(copy, tests)
        finally:
            if not args.keep:
                shutil.rmtree(copy, ignore_errors=True)
        if mutant is None:
            if not passed:
                print(f"the unmutated copy fails its tests: {detail}")
                return 2
            continue
        survivors += passed
        caught = "NOT CAUGHT" if passed else detail
        rows.append(f"| {mutant.name} | `{mutant.path}` | {caught} |")
        print(rows[-1], flush=True)
    print("\n| breakage | file | first failing test |\n|---|---|---|")
    print("\n".join(rows))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
