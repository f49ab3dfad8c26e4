"""Thin images are refused by one rule (as SAM refuses them) and error records carry no memory
addresses, so the same failure reads the same on every run."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from amg_lightning.core.generator import AutomaticMaskGenerator
from amg_lightning.data.samples import ShardSample, decode_sample
from amg_lightning.run.module import AmgModule

# The tiny SAM's input is 256 pixels: the long side may be at most 512 times the short side.
LONG_SIDE = 256


@pytest.mark.parametrize("shape", [(1, 600), (600, 1)])
def test_thin_image_is_refused_in_words(tiny_sam: torch.nn.Module, shape: tuple[int, int]) -> None:
    generator = AutomaticMaskGenerator(tiny_sam, points_per_side=2)
    with pytest.raises(ValueError, match=r"^image too thin: .* at most 512 times the short side$"):
        generator.generate(np.zeros((*shape, 3), np.uint8))


@pytest.mark.parametrize("shape", [(2, 600), (600, 2)])
def test_thin_image_within_the_rule_is_segmented(
    tiny_sam: torch.nn.Module, shape: tuple[int, int]
) -> None:
    """2 x 600 resizes to 1 x 256, as segment_anything's ResizeLongestSide does: it runs."""
    generator = AutomaticMaskGenerator(tiny_sam, points_per_side=2, pred_iou_thresh=0.0)
    records = generator.generate(np.full((*shape, 3), 128, np.uint8))
    assert all(r["segmentation"].shape == shape for r in records)


def test_error_records_carry_no_memory_addresses() -> None:
    """Pillow names the unreadable BytesIO by its repr; the record names its type only."""
    sample = ShardSample("shards/a.tar", "k", first=1, last=1, members={"png": b"not a png"})
    sample.names.append("k.png")
    decoded = decode_sample(sample)
    assert re.search(r"at 0x[0-9a-f]+", decoded["error"])  # what Pillow says, as the case needs
    thin = torch.zeros((1, 600, 3), dtype=torch.uint8)
    batch = {
        "key": ["k", "thin"],
        "url": ["shards/a.tar", "shards/a.tar"],
        "file_name": ["k.png", "thin.png"],
        "image": [None, thin],
        "inputs": [None, None],
        "error": [decoded["error"], None],
    }
    module = AmgModule("tiny", settings={"points_per_side": 2})
    records = module.predict_step(batch)
    assert records[0]["error"] == "cannot decode image: cannot identify image file <_io.BytesIO>"
    assert records[1]["error"].startswith("ValueError: image too thin: 600x1 ")
    assert not any(re.search(r"at 0x[0-9a-f]+", r["error"]) for r in records)
