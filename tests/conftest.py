"""Shared fixtures: a tiny random SAM for fast tests, and the real checkpoint and photos.

The real files come from environment variables that `.ci/run` sets from `../shared`:
AMG_TEST_CHECKPOINT (MobileSAM's mobile_sam.pt) and AMG_TEST_IMAGES (a folder of photos).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from amg_lightning.core.models import build_sam

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_sam() -> torch.nn.Module:
    """A randomly initialised SAM with a 256-pixel input; runs in milliseconds."""
    return build_sam("tiny")


@pytest.fixture(scope="session")
def checkpoint_path() -> Path:
    value = os.environ.get("AMG_TEST_CHECKPOINT")
    if not value or not Path(value).is_file():
        pytest.skip("AMG_TEST_CHECKPOINT is not set to MobileSAM's mobile_sam.pt (see .ci/run)")
    return Path(value)


@pytest.fixture(scope="session")
def images_dir() -> Path:
    value = os.environ.get("AMG_TEST_IMAGES")
    if not value or not Path(value).is_dir():
        pytest.skip("AMG_TEST_IMAGES is not set to a folder of photographs (see .ci/run)")
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
