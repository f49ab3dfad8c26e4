"""Shared fixtures: a tiny random SAM for fast tests, and the real checkpoint and photos.

The checkpoint is found as predict.py finds it: AMG_TEST_CHECKPOINT, else the official
MobileSAM file in the cache (AMG_CACHE_DIR, else ~/.cache/amg_lightning), fetched if missing.
Photos: AMG_TEST_IMAGES (a folder), else the real photos that ship with scikit-image.
A variable that names a missing file is an error, not a skip. With AMG_TEST_STRICT=1 (as
.ci/run sets it) any skip other than a GPU test's fails the run.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from amg_lightning.core.models import CheckpointError, build_sam, sharpen
from amg_lightning.run.checkpoints import resolve_checkpoint

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_sam() -> torch.nn.Module:
    """A randomly initialised SAM with a 256-pixel input; runs in milliseconds."""
    return build_sam("tiny")


@pytest.fixture(scope="session")
def sharp_sam() -> torch.nn.Module:
    """The tiny SAM with its mask logits scaled by 300 (core.models.sharpen): stabilities
    spread from 0.5 to 0.95 and masks differ per point, so every filter has masks to keep and
    to remove."""
    return sharpen(build_sam("tiny"))


@pytest.fixture(scope="session")
def tiny_sam2() -> torch.nn.Module:
    """A randomly initialised SAM 2.1 with a 256-pixel input (core/sam2_models.py)."""
    return build_sam("tiny_sam2")


@pytest.fixture(scope="session")
def sharp_sam2() -> torch.nn.Module:
    """tiny_sam2 sharpened as sharp_sam, and its IoU head's logits scaled by 100 so that
    predicted IoUs (a sigmoid) spread from 0 to 1 instead of all lying near 0.5."""
    return sharpen(build_sam("tiny_sam2"))


@pytest.fixture(scope="session")
def checkpoint_path() -> Path:
    """MobileSAM's mobile_sam.pt: AMG_TEST_CHECKPOINT, else the cache, else downloaded."""
    value = os.environ.get("AMG_TEST_CHECKPOINT")
    if value:
        if not Path(value).is_file():
            pytest.fail(f"AMG_TEST_CHECKPOINT={value} is not a file", pytrace=False)
        return Path(value)
    try:
        return resolve_checkpoint("vit_t")
    except CheckpointError as err:
        pytest.fail(f"no MobileSAM checkpoint: {err}", pytrace=False)


@pytest.fixture(scope="session")
def images_dir() -> Path | None:
    """AMG_TEST_IMAGES, or None when it is unset (tests then use scikit-image's photos)."""
    value = os.environ.get("AMG_TEST_IMAGES")
    if not value:
        return None
    if not Path(value).is_dir():
        pytest.fail(f"AMG_TEST_IMAGES={value} is not a folder", pytrace=False)
    return Path(value)


@pytest.fixture(scope="session")
def mobile_sam(checkpoint_path: Path) -> torch.nn.Module:
    return build_sam("vit_t", checkpoint_path)


@pytest.fixture
def random_image() -> np.ndarray:
    """A smooth random RGB image: blobs of colour, so a random model still finds regions."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, size=(6, 8, 3), dtype=np.uint8)
    return cv2.resize(small, (200, 150), interpolation=cv2.INTER_CUBIC)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Under AMG_TEST_STRICT=1 a skip fails, except a GPU test's on a machine without CUDA
    and a SAM 2 checkpoint test's without AMG_TEST_SAM2_CHECKPOINT (none is fetched)."""
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and os.environ.get("AMG_TEST_STRICT") == "1"
        and item.get_closest_marker("gpu") is None
        and item.get_closest_marker("sam2_checkpoint") is None
    ):
        report.outcome = "failed"
        report.longrepr = f"skipped under AMG_TEST_STRICT=1: {report.longrepr}"
