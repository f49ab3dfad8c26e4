"""CUDA checks: the exact mode matches the CPU, fast mode stays close. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

from amg_lightning import AutomaticMaskGenerator, build_sam
from amg_lightning.bench.parity import fast_parity

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


def test_cuda_gives_the_cpu_masks(random_image):
    cpu = AutomaticMaskGenerator(build_sam("tiny"), **SETTINGS).generate(random_image)
    cuda = AutomaticMaskGenerator(build_sam("tiny").cuda(), **SETTINGS).generate(random_image)
    assert len(cuda) == len(cpu) > 0
    assert fast_parity(cpu, cuda).ok  # other kernels, other rounding: the fast tolerance


def test_fast_mode_stays_close_to_exact(random_image):
    sam = build_sam("tiny").cuda()
    exact = AutomaticMaskGenerator(sam, **SETTINGS).generate(random_image)
    fast = AutomaticMaskGenerator(sam, fast=True, **SETTINGS).generate(random_image)
    found = fast_parity(exact, fast)
    # A random tiny model's logits sit near the thresholds far more than a trained one's.
    assert abs(found.n_ours - found.n_reference) <= max(2, found.n_reference // 10)
    assert found.mean_iou >= 0.9


def test_lightning_module_on_the_gpu(random_image):
    import lightning as L

    from amg_lightning.run.module import AmgModule

    module = AmgModule("tiny", settings=SETTINGS)
    batch = {"key": ["a"], "url": ["u"], "image": [torch.from_numpy(random_image)], "error": [None]}
    trainer = L.Trainer(accelerator="gpu", devices=1, logger=False, enable_progress_bar=False)
    (results,) = trainer.predict(module, [batch])
    assert results[0]["error"] is None and len(results[0]["annotations"]) > 0
