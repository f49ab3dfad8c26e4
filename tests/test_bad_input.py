"""Mistakes in inputs or settings, through `predict.py` itself: exit 2, one line, no output.

Each case is its own process, as a user would meet it; the config check comes before any model
loads, so each costs about the time to import torch.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from tests.helpers.predict import run_predict

pytestmark = pytest.mark.e2e

TIMEOUT_S = 120


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding one shard of one small image."""
    folder = tmp_path_factory.mktemp("shards")
    data = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 60)).save(data, "PNG")
    with wds.TarWriter(str(folder / "in-000000.tar")) as shard:
        shard.write({"__key__": "red", "png": data.getvalue()})
    return folder


def assert_fails_with_one_line(
    tmp_path: Path, args: list[str], message: str, output_dir: Path | None = None
) -> None:
    """Run `predict.py ARGS`: exit 2, one error line holding `message`, no traceback, no output."""
    output_dir = output_dir or tmp_path / "out"
    finished = run_predict(["model=tiny", f"output_dir={output_dir}", *args], tmp_path, TIMEOUT_S)
    output = finished.stdout + finished.stderr
    assert finished.returncode == 2, output
    assert "Traceback" not in output
    error_lines = [line for line in output.splitlines() if "error" in line.lower()]
    assert len(error_lines) == 1, output
    assert "error: " in error_lines[0]
    assert message in error_lines[0]
    written = [p for p in output_dir.rglob("*") if p.is_file()] if output_dir.is_dir() else []
    assert written == []


def test_pattern_matching_nothing(tmp_path: Path) -> None:
    pattern = tmp_path / "missing-{000000..000002}.tar"
    # Braces must be quoted for Hydra, or its override parser reads them as a dict.
    assert_fails_with_one_line(
        tmp_path,
        [f"data.urls='{pattern}'"],
        f"data.urls matched no shards: {tmp_path / 'missing-000000.tar'}",
    )
    assert not (tmp_path / "out").exists()


def test_folder_without_shards(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no tar here")
    assert_fails_with_one_line(
        tmp_path, [f"data.urls={empty}"], f"data.urls matched no shards: {empty}"
    )
    assert not (tmp_path / "out").exists()


def test_output_dir_that_cannot_be_written(tmp_path: Path, shards: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    output_dir = blocker / "out"
    assert_fails_with_one_line(
        tmp_path,
        [f"data.urls={shards}"],
        f"output_dir {output_dir} cannot be written",
        output_dir=output_dir,
    )
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("pred_iou_thresh=1.5", "pred_iou_thresh must be in [0.0, 1.0], got 1.5"),
        ("points_per_side=0", "points_per_side must be >= 1, got 0"),
        ("crop_n_layers=-1", "crop_n_layers must be >= 0, got -1"),
    ],
)
def test_out_of_range_setting(tmp_path: Path, shards: Path, setting: str, message: str) -> None:
    assert_fails_with_one_line(tmp_path, [f"data.urls={shards}", setting], message)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("pred_iou_threshold=0.8", "Key 'pred_iou_threshold' is not in struct"),
        ("embedding_cache.size=3", "Key 'size' is not in struct"),
        ("points_per_side=[1", "cannot parse override 'points_per_side=[1'"),
    ],
)
def test_hydra_refuses_override(tmp_path: Path, shards: Path, override: str, message: str) -> None:
    """Hydra's own errors: one line and exit 2 like ours, not its several lines and exit 1, and
    no `+KEY=` advice (the project refuses new keys); no Hydra folder in the current one."""
    assert_fails_with_one_line(tmp_path, [f"data.urls={shards}", override], message)
    assert list(tmp_path.iterdir()) == []
    assert "+pred_iou_threshold" not in run_predict([override], tmp_path, TIMEOUT_S).stderr


# SAM 2 and 2.1 in every size, then the tiny random one.
SAM2_TYPES = ", ".join(
    [f"{v}_hiera_{s}" for v in ("sam2.1", "sam2") for s in ("t", "s", "b+", "l")] + ["tiny_sam2"]
)


def test_unknown_model_type(tmp_path: Path, shards: Path) -> None:
    assert_fails_with_one_line(
        tmp_path,
        [f"data.urls={shards}", "model.model_type=vit_x"],
        f"model.model_type must be one of vit_h, vit_l, vit_b, vit_t, tiny, {SAM2_TYPES}, "
        "got 'vit_x'",
    )


def test_checkpoint_of_another_model_type(
    tmp_path: Path, shards: Path, checkpoint_path: Path
) -> None:
    assert_fails_with_one_line(
        tmp_path,
        [f"data.urls={shards}", "model=vit_b", f"model.checkpoint={checkpoint_path}"],
        f"checkpoint {checkpoint_path} is a vit_t checkpoint, but model type is vit_b",
    )


def test_missing_checkpoint(tmp_path: Path, shards: Path) -> None:
    missing = tmp_path / "sam_vit_b.pth"
    assert_fails_with_one_line(
        tmp_path,
        [f"data.urls={shards}", "model=vit_b", f"model.checkpoint={missing}"],
        f"model.checkpoint {missing} is not a file",
    )
    assert not (tmp_path / "out").exists()


def test_corrupt_checkpoint(tmp_path: Path, shards: Path) -> None:
    corrupt = tmp_path / "sam_vit_b.pth"
    corrupt.write_bytes(b"\x80\x04garbage, not a checkpoint" * 100)
    assert_fails_with_one_line(
        tmp_path,
        [f"data.urls={shards}", "model=vit_b", f"model.checkpoint={corrupt}"],
        f"checkpoint {corrupt} is not a readable PyTorch file",
    )
