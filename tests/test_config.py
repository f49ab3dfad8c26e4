"""Config strictness: switches, unknown keys, ranges; `check_config` only reads.

In-process through Hydra's compose API, and three cases through `predict.py` itself (exit 2,
one line, nothing written, before any model loads).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from amg_lightning.run.config import ConfigError, check_config, with_flags_parsed
from tests.helpers.config import compose_config, forget_config, run_in_process
from tests.helpers.jpeg_shards import write_jpeg_shards
from tests.helpers.predict import run_predict

TINY = ["model=tiny", "points_per_side=4", "data.num_workers=0"]


@pytest.fixture(autouse=True)
def _forget_hydra_config():
    yield
    forget_config()


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    write_jpeg_shards(tmp_path / "shards", [2])
    return tmp_path / "shards"


def checked(tmp_path: Path, shards: Path, overrides: list[str]) -> DictConfig:
    """The composed config, checked, with its switches parsed."""
    where = [f"data.urls={shards}", f"output_dir={tmp_path / 'out'}"]
    cfg = compose_config([*TINY, *where, *overrides])
    check_config(cfg)
    return with_flags_parsed(cfg)


@pytest.mark.parametrize(
    ("override", "name", "value"),
    [
        ("resume=no", "resume", False),
        ("resume=yes", "resume", True),
        ("resume=false", "resume", False),
        ("resume=1", "resume", True),
        ("fast=0", "fast", False),
        ("keep_freed_memory=No", "keep_freed_memory", False),
        ("keep_freed_memory=TRUE", "keep_freed_memory", True),
    ],
)
def test_switches_read_as_booleans(
    tmp_path: Path, shards: Path, override: str, name: str, value: bool
) -> None:
    assert checked(tmp_path, shards, [override])[name] is value


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("resume=maybe", "resume must be true or false (yes/no, 1/0), got 'maybe'"),
        ("resume=2", "resume must be true or false (yes/no, 1/0), got 2"),
        ("fast=0.0", "fast must be true or false (yes/no, 1/0), got 0.0"),
        ("+pointz_per_side=8", "unknown setting pointz_per_side"),
        ("+extra=1", "unknown setting extra"),
        ("shard_size=0", "shard_size must be an integer >= 1, got 0"),
        ("shard_size=many", "shard_size must be an integer >= 1, got 'many'"),
        ("data.batch_size=0", "data.batch_size must be auto or an integer >= 1, got 0"),
        ("data.batch_size=many", "data.batch_size must be auto or an integer >= 1, got 'many'"),
        ("data.num_workers=-1", "data.num_workers must be an integer >= 0, got -1"),
        ("output_mode=binary_mask", "output_mode must be coco_rle"),
        ("max_error_fraction=2", "max_error_fraction must be a number in [0, 1], got 2"),
        ("resume_changed_shards=maybe", "resume_changed_shards must be refuse or redo"),
        ("trainer.precision=bf16-mixed", "trainer.precision=bf16-mixed is not supported"),
        ("eval.gt=/no/such/gt.json", "eval.gt /no/such/gt.json cannot be read"),
        *(
            []
            if torch.cuda.is_available()
            else [("trainer=gpu", "trainer.accelerator=gpu but no CUDA GPU is visible")]
        ),
    ],
)
def test_bad_settings_are_refused(
    tmp_path: Path, shards: Path, override: str, message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        checked(tmp_path, shards, [override])
    assert message in str(refused.value)


def test_ground_truth_that_is_not_coco_is_refused(tmp_path: Path, shards: Path) -> None:
    gt = tmp_path / "gt.json"
    gt.write_text('{"images": []}')
    with pytest.raises(ConfigError, match=r"is not a COCO instances json"):
        checked(tmp_path, shards, [f"eval.gt={gt}"])
    gt.write_text("not json")
    with pytest.raises(ConfigError, match=r"is not json"):
        checked(tmp_path, shards, [f"eval.gt={gt}"])


def test_check_config_writes_nothing(tmp_path: Path, shards: Path) -> None:
    checked(tmp_path, shards, ["output_dir=" + str(tmp_path / "new" / "out")])
    assert not (tmp_path / "new").exists()


def test_resume_no_is_no_resume(tmp_path: Path, shards: Path) -> None:
    out = tmp_path / "out"
    run = [*TINY, f"data.urls={shards}", f"output_dir={out}"]
    assert run_in_process(run)["config"]["resume"] is False
    with pytest.raises(ConfigError, match="already holds results"):
        run_in_process([*run, "resume=no"])
    summary = run_in_process([*run, "resume=yes"])
    assert (summary["images"], summary["images_already_done"], summary["config"]["resume"]) == (
        0,
        2,
        True,
    )


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("resume=maybe", "error: resume must be true or false (yes/no, 1/0), got 'maybe'"),
        ("+pointz_per_side=8", "error: unknown setting pointz_per_side"),
        ("shard_size=0", "error: shard_size must be an integer >= 1, got 0"),
        ("trainer.precision=16-mixed", "error: trainer.precision=16-mixed is not supported"),
        ("eval.gt=missing.json", "error: eval.gt missing.json cannot be read"),
    ],
)
def test_predict_refuses_in_one_line_before_the_model_loads(
    tmp_path: Path, shards: Path, override: str, message: str
) -> None:
    out = tmp_path / "out"
    finished = run_predict(
        ["model=vit_h", f"data.urls={shards}", f"output_dir={out}", override], tmp_path, 120
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode == 2, output
    assert "Traceback" not in output
    (line,) = [line for line in output.splitlines() if "error" in line.lower()]
    assert message in line
    assert not out.exists()
