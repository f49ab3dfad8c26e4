"""CUDA checks: the exact mode matches the CPU, fast mode stays close. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch
from pycocotools import mask as coco_mask

from amg_lightning import AutomaticMaskGenerator, build_sam

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SETTINGS = {
    "points_per_side": 8,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "crop_n_layers": 1,
    "output_mode": "coco_rle",
}


def mean_matched_iou(reference: list[dict], ours: list[dict]) -> float:
    ious = coco_mask.iou(
        [r["segmentation"] for r in reference], [o["segmentation"] for o in ours], [0] * len(ours)
    )
    return float(ious.max(axis=1).mean())


def test_cuda_gives_the_cpu_masks(random_image):
    cpu = AutomaticMaskGenerator(build_sam("tiny"), **SETTINGS).generate(random_image)
    cuda = AutomaticMaskGenerator(build_sam("tiny").cuda(), **SETTINGS).generate(random_image)
    assert len(cuda) == len(cpu) > 0
    assert mean_matched_iou(cpu, cuda) >= 0.99


def test_fast_mode_stays_close_to_exact(random_image):
    sam = build_sam("tiny").cuda()
    exact = AutomaticMaskGenerator(sam, **SETTINGS).generate(random_image)
    fast = AutomaticMaskGenerator(sam, fast=True, **SETTINGS).generate(random_image)
    assert abs(len(fast) - len(exact)) <= max(2, len(exact) // 10)
    assert mean_matched_iou(exact, fast) >= 0.9


def test_lightning_module_on_the_gpu(random_image):
    import lightning as L

    from amg_lightning.run.module import AmgModule

    module = AmgModule("tiny", settings=SETTINGS)
    batch = {"key": ["a"], "url": ["u"], "image": [torch.from_numpy(random_image)], "error": [None]}
    trainer = L.Trainer(accelerator="gpu", devices=1, logger=False, enable_progress_bar=False)
    (results,) = trainer.predict(module, [batch])
    assert results[0]["error"] is None and len(results[0]["annotations"]) > 0
