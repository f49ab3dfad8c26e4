"""`predict.py` with two real DDP processes (gloo on the CPU), as a run and inside a multirun.

Lightning starts rank 1 by running the command line again; these check that every image is
segmented exactly once over both ranks, and that a multirun job restarts only itself.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from amg_lightning.results.run_folder import shard_paths
from amg_lightning.results.shards import iter_results
from tests.helpers.jpeg_shards import write_jpeg_shards
from tests.helpers.predict import run_predict

pytestmark = pytest.mark.e2e

DDP = ["model=tiny", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
DDP += ["data.num_workers=1", "points_per_side=4"]
TIMEOUT_S = 240


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    finished = run_predict(args, cwd, TIMEOUT_S, env={"OMP_NUM_THREADS": "1"})  # 2 ranks, 2 cores
    assert finished.returncode == 0, finished.stdout + finished.stderr
    return finished


def assert_complete(output_dir: Path, keys: list[str]) -> None:
    """Every key once, written by both ranks, and a summary over both."""
    counts = Counter(result["image"]["key"] for result in iter_results(output_dir))
    assert counts == Counter(keys)
    ranks = {path.name[: len("masks-r000")] for path in shard_paths(output_dir)}
    assert ranks == {"masks-r000", "masks-r001"}
    summary = json.loads((output_dir / "summary.json").read_text())
    assert (summary["images"], summary["errors"]) == (len(keys), 0)
    assert summary["config"]["trainer"]["devices"] == 2


@pytest.mark.parametrize(
    "sizes, model",
    [
        pytest.param([3, 2, 2], "tiny", id="more-shards-than-readers"),
        pytest.param([7], "tiny", id="one-shard-for-two-readers"),
        pytest.param([3, 2, 2], "tiny_sam2", id="sam2"),
    ],
)
def test_two_ranks_split_the_images(tmp_path: Path, sizes: list[int], model: str) -> None:
    if model == "tiny_sam2":
        pytest.importorskip("sam2")
    keys = write_jpeg_shards(tmp_path / "shards", sizes)
    out = tmp_path / "out"
    args = [f"model={model}", *DDP[1:], f"data.urls={tmp_path / 'shards'}", f"output_dir={out}"]
    finished = run_cli(args, tmp_path)

    assert_complete(out, keys)
    assert json.loads((out / "run.json").read_text())["model"]["model_type"] == model
    assert f"done: {len(keys)} images" in finished.stdout


def test_ddp_multirun_runs_each_job_once(tmp_path: Path) -> None:
    keys = write_jpeg_shards(tmp_path / "shards", [2, 3])
    sweep = tmp_path / "sweep"
    args = ["-m", *DDP, f"data.urls={tmp_path / 'shards'}", "pred_iou_thresh=0.5,0.6"]
    finished = run_cli([*args, f"hydra.sweep.dir={sweep}"], tmp_path)

    for job, threshold in (("0", 0.5), ("1", 0.6)):
        assert_complete(sweep / job, keys)
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["config"]["pred_iou_thresh"] == threshold
        assert summary["config"]["output_dir"] == str(sweep / job)
    # The sweep ran once (rank 1 did not rerun it) and each job once; nothing else was written.
    assert finished.stdout.count("Launching 2 jobs") == 1
    assert finished.stdout.count("| job |") == 1
    assert finished.stdout.count("done: 5 images") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards", "sweep"]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]


def test_ddp_multirun_job_that_fails_ends_with_its_message(tmp_path: Path) -> None:
    """A job's own process fails (a checkpoint only loading can reject): the sweep stops there."""
    write_jpeg_shards(tmp_path / "shards", [1])
    corrupt = tmp_path / "sam_vit_b.pth"
    corrupt.write_bytes(b"not a checkpoint")
    args = ["-m", *DDP, f"data.urls={tmp_path / 'shards'}", "pred_iou_thresh=0.5,0.6"]
    args += ["model=vit_b", f"model.checkpoint={corrupt}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    finished = run_predict(args, tmp_path, TIMEOUT_S)

    output = finished.stdout + finished.stderr
    assert finished.returncode == 2, output
    assert "Traceback" not in output
    assert output.count(f"error: checkpoint {corrupt} is not a readable PyTorch file") == 1
    assert not (tmp_path / "sweep" / "1").exists()
    assert not list((tmp_path / "sweep" / "0").glob("masks-*"))
