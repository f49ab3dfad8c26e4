"""CUDA checks: the exact mode matches the CPU, fast mode stays close. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

from amg_lightning import AutomaticMaskGenerator, build_sam
from amg_lightning.bench.parity import fast_parity
from amg_lightning.core.full_res import crop_resize
from tests.test_full_res import GEOMETRIES

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


@pytest.mark.parametrize(("input_size", "crop_size"), GEOMETRIES)
def test_tiled_resize_is_exact_on_cuda(input_size, crop_size):
    """The device post-processing resizes tile by tile only where that is F.interpolate's
    own arithmetic on the device; elsewhere it resizes every pixel (slower, same masks)."""
    assert crop_resize(256, 1024, input_size, crop_size).exact(torch.device("cuda"))


def test_cuda_sizes_batches_by_free_memory():
    from amg_lightning.core.memory import full_res_bytes, prompts_per_batch

    cuda = torch.device("cuda")
    # More prompts than the CPU's points_per_batch, and full-resolution slices up to the
    # setting: one mask per slice made the GPU wait on the host.
    assert prompts_per_batch(4096, 256, cuda, 64) > 64
    assert full_res_bytes(cuda, 2**30) > 32 * 2**20


def test_fast_mode_stays_close_to_exact(random_image):
    sam = build_sam("tiny").cuda()
    exact = AutomaticMaskGenerator(sam, **SETTINGS).generate(random_image)
    fast = AutomaticMaskGenerator(sam, fast=True, **SETTINGS).generate(random_image)
    found = fast_parity(exact, fast)
    # A random tiny model's logits sit near the thresholds far more than a trained one's.
    assert abs(found.n_ours - found.n_reference) <= max(2, found.n_reference // 10)
    assert found.mean_iou >= 0.9


def test_lightning_predicts_shards_on_the_gpu(tmp_path, random_image):
    """A real shard through the DataModule, the module on the GPU and the shard writer."""
    import cv2
    import lightning as L

    from amg_lightning.data.datamodule import WebDatasetDataModule
    from amg_lightning.results.shards import iter_results
    from amg_lightning.run.module import AmgModule
    from amg_lightning.run.writer import RleShardWriter
    from tests.helpers.shards import write_tar

    png = cv2.imencode(".png", random_image[..., ::-1])[1].tobytes()
    write_tar(tmp_path / "in-000000.tar", [("a.png", png), ("b.png", png)])
    out = tmp_path / "out"
    devices = []  # where each batch ran: Lightning moves the module back to the CPU at the end

    class RecordDevice(L.Callback):
        def on_predict_batch_end(self, trainer, pl_module, *args) -> None:
            devices.append(pl_module.generator.device.type)

    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        callbacks=[RleShardWriter(str(out)), RecordDevice()],
        logger=False,
        enable_progress_bar=False,
    )
    module = AmgModule("tiny", settings=SETTINGS)
    data = WebDatasetDataModule(str(tmp_path / "in-000000.tar"), batch_size=2)
    trainer.predict(module, datamodule=data, return_predictions=False)

    assert devices == ["cuda"]
    module.sam.cuda()
    expected = module.generator.generate(random_image)
    assert len(expected) > 0
    results = {r["image"]["key"]: r["annotations"] for r in iter_results(out)}
    assert sorted(results) == ["a", "b"]
    # The two images shared encoder passes, whose CUDA kernels may round otherwise than
    # one image's: the fast tolerance, as against the CPU.
    for records in results.values():
        assert len(records) == len(expected)
        assert fast_parity(expected, records).ok


@pytest.fixture
def tf32_off():
    """Exactness on CUDA is defined with TF32 off (cuDNN's default is on)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize(("crop_n_layers", "crop"), [(0, 0), (1, 2)], ids=["image", "sub-crop"])
def test_device_postprocessing_is_the_references_on_its_cuda_decoder_outputs(
    checkpoint_path, images_dir, tf32_off, crop_n_layers, crop
):
    """Bit-equal: the same decoder outputs through the reference's post-processing and ours."""
    from tests.helpers.images import read_photo
    from tests.test_device_post import assert_reference_postprocessing

    sam = build_sam("vit_t", checkpoint_path).cuda()
    image = read_photo("dog.jpg" if images_dir else "skimage:astronaut", images_dir, 1024)
    settings = {"points_per_side": 16, "crop_n_layers": crop_n_layers}
    assert_reference_postprocessing(sam, image, settings, crop)


def test_device_postprocessing_syncs_a_bounded_number_of_times(checkpoint_path, images_dir):
    """CUDA's own count of synchronising calls (set_sync_debug_mode), and the host-read
    counter of the CPU test, per image: bounded per decode batch, crop and image."""
    import math
    import warnings

    from amg_lightning.core.memory import prompts_per_batch
    from tests.helpers.host_reads import count_host_reads
    from tests.helpers.images import read_photo
    from tests.test_host_reads import PER_BATCH, PER_CROP, PER_IMAGE

    sam = build_sam("vit_t", checkpoint_path).cuda()
    image = read_photo("dog.jpg" if images_dir else "skimage:astronaut", images_dir, 1024)
    generator = AutomaticMaskGenerator(sam, output_mode="coco_rle")
    assert generator.postprocess_on_device  # "auto" on CUDA
    generator.generate(image)  # warm-up: resize tables, allocator
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            records = generator.generate(image)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    with count_host_reads() as reads:
        generator.generate(image)
    step = prompts_per_batch(4096, 256, torch.device("cuda"), generator.settings.points_per_batch)
    batches = math.ceil(len(generator.point_grids[0]) / step)
    bound = PER_BATCH * batches + PER_CROP + PER_IMAGE
    print(
        f"{len(records)} masks, {batches} decode batches: {len(syncs)} CUDA syncs, "
        f"{reads.total} host reads {dict(reads.counts)}"
    )
    assert len(records) >= 10
    assert reads.total <= bound
    # CUDA also counts blocking copies to the device: the image, the crop's points and boxes.
    assert len(syncs) <= bound + 8


@pytest.mark.parametrize(
    ("crop_n_layers", "crops_per_batch", "images"), [(0, 4, 4), (1, 4, 1), (1, 10, 2)]
)
def test_auto_batch_size_fills_one_encoder_pass(crop_n_layers, crops_per_batch, images):
    """data.batch_size=auto on CUDA: as many images as `crops_per_batch` crops hold (the tiny
    encoder needs little memory, so memory does not bound it here)."""
    settings = {"crop_n_layers": crop_n_layers, "crops_per_batch": crops_per_batch}
    generator = AutomaticMaskGenerator(build_sam("tiny").cuda(), **settings)
    assert generator.images_per_pass() == images
