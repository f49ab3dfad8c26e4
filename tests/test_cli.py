"""The prediction entry point end to end: Hydra's compose API in-process, `predict.py` as a process.

Real tar shards of real image files, the tiny random SAM, a real Lightning Trainer on the CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from amg_lightning.data import shards as make_shards
from amg_lightning.results.run_folder import shard_paths
from amg_lightning.results.shards import iter_results
from amg_lightning.run.config import ConfigError
from tests.helpers.config import forget_config, run_in_process
from tests.helpers.predict import AMG_PREDICT, PREDICT, run_predict

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
# Small images, a 4x4 point grid and no quality filter: a run takes a second, and finds masks.
FAST = ["model=tiny", "points_per_side=4", "pred_iou_thresh=0.0", "stability_score_thresh=0.0"]
TIMEOUT_S = 120


def save_image(path: Path, mode: str, size: tuple[int, int], seed: int = 0) -> None:
    """Smooth random colour blobs (so even a random SAM finds regions) in Pillow `mode`."""
    rng = np.random.default_rng(seed)
    blobs = Image.fromarray(rng.integers(0, 255, size=(6, 8, 3), dtype=np.uint8))
    blobs.resize(size, Image.BICUBIC).convert(mode).save(path)


def write_raw_shard(path: Path, samples: list[dict]) -> None:
    with wds.TarWriter(str(path)) as shard:
        for sample in samples:
            shard.write(sample)


@pytest.fixture(scope="module")
def mixed_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of shards: RGB jpg, grayscale png, RGBA png; a corrupt jpg; an empty shard."""
    root = tmp_path_factory.mktemp("mixed")
    images = root / "images"
    images.mkdir()
    save_image(images / "rgb.jpg", "RGB", (64, 48), seed=1)
    save_image(images / "gray.png", "L", (40, 56), seed=2)
    save_image(images / "rgba.png", "RGBA", (50, 50), seed=3)
    shards = root / "shards"
    assert make_shards.make_shards(images, shards, maxcount=1000) == (3, 1)
    write_raw_shard(shards / "corrupt.tar", [{"__key__": "corrupt", "jpg": b"\xff\xd8 not a jpeg"}])
    write_raw_shard(shards / "empty.tar", [])
    return shards


@pytest.fixture(autouse=True)
def _forget_hydra_config():
    yield
    forget_config()


def key_counts(output_dir: Path) -> Counter:
    return Counter(result["image"]["key"] for result in iter_results(output_dir))


def run_cli(
    args: list[str], cwd: Path, timeout: float = TIMEOUT_S, **kwargs: Any
) -> subprocess.CompletedProcess:
    return run_predict(args, cwd, timeout, **kwargs)


def test_mixed_inputs_counts_keys_and_errors(mixed_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = run_in_process(
        [*FAST, f"data.urls={mixed_shards}", "data.num_workers=0", f"output_dir={out}"]
    )

    results = list(iter_results(out))
    assert key_counts(out) == Counter({"rgb": 1, "gray": 1, "rgba": 1})
    sizes = {r["image"]["key"]: (r["image"]["height"], r["image"]["width"]) for r in results}
    assert sizes == {"rgb": (48, 64), "gray": (56, 40), "rgba": (50, 50)}
    masks = sum(len(r["annotations"]) for r in results)
    assert masks > 0

    errors = [json.loads(line) for line in (out / "errors-r000.jsonl").read_text().splitlines()]
    assert [e["key"] for e in errors] == ["corrupt"]
    assert errors[0]["url"].endswith("corrupt.tar")
    assert "cannot decode image" in errors[0]["error"]

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    assert (summary["images"], summary["masks"], summary["errors"]) == (3, masks, 1)
    assert summary["config"]["output_dir"] == str(out)
    assert summary["config"]["points_per_side"] == 4


def test_resume_after_interruption(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        save_image(images / f"im{i}.jpg", "RGB", (32, 32), seed=i)
    shards = tmp_path / "shards"
    make_shards.make_shards(images, shards, maxcount=2)
    out = tmp_path / "out"
    run = [*FAST, f"data.urls={shards}", "data.num_workers=0", f"output_dir={out}", "shard_size=1"]
    assert run_in_process(run)["images"] == 5
    written = shard_paths(out)
    assert len(written) == 5

    # The run was killed while writing its last shard: that shard is not complete yet.
    lost_key = next(iter(key_counts(written[-1])))
    written[-1].unlink()
    leftover = out / "masks-r000-000004.tar.tmp"
    leftover.write_bytes(b"half a tar")

    with pytest.raises(ConfigError, match=r"already holds results .*: pass resume=true"):
        run_in_process(run)
    assert leftover.exists()

    summary = run_in_process([*run, "resume=true"])
    assert summary["images"] == 1  # only the lost image was segmented again
    assert summary["images_already_done"] == 4
    assert key_counts(out) == Counter({f"im{i}": 1 for i in range(5)})
    assert lost_key in key_counts(shard_paths(out)[-1])
    assert not list(out.glob("*.tmp"))


@pytest.mark.parametrize(
    "command", [(sys.executable, str(PREDICT)), (str(AMG_PREDICT),)], ids=["predict.py", "script"]
)
def test_entry_point_run(mixed_shards: Path, tmp_path: Path, command: tuple[str, ...]) -> None:
    out = tmp_path / "out"
    args = [*FAST, f"data.urls={mixed_shards}", f"output_dir={out}", "data.num_workers=0"]
    finished = run_cli(args, cwd=tmp_path, command=command)

    assert finished.returncode == 0, finished.stdout + finished.stderr
    last_line = finished.stdout.strip().splitlines()[-1]
    summary = json.loads((out / "summary.json").read_text())
    assert f"done: 3 images, {summary['masks']} masks, 1 errors in " in last_line
    assert last_line.endswith(f"-> {out}")
    assert key_counts(out) == Counter({"rgb": 1, "gray": 1, "rgba": 1})


def test_multirun_writes_each_job_into_its_directory(mixed_shards: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["-m", *FAST, f"data.urls={mixed_shards}", "data.num_workers=0"]
    args += ["pred_iou_thresh=0.5,0.6", f"hydra.sweep.dir={sweep}"]
    finished = run_cli(args, cwd=tmp_path)

    assert finished.returncode == 0, finished.stdout + finished.stderr
    for job, threshold in (("0", 0.5), ("1", 0.6)):
        job_dir = sweep / job
        summary = json.loads((job_dir / "summary.json").read_text())
        assert (summary["images"], summary["errors"]) == (3, 1)
        assert summary["config"]["pred_iou_thresh"] == threshold
        assert summary["config"]["output_dir"] == str(job_dir)
        assert key_counts(job_dir) == Counter({"rgb": 1, "gray": 1, "rgba": 1})
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert "| 0.6 |" in (sweep / "sweep.md").read_text()
    assert not (tmp_path / "outputs").exists()
    assert not (tmp_path / "multirun").exists()
