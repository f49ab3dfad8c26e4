"""Crops cut and resized for the image encoder in the DataLoader workers (core/image.py's
CropInputs): the reference predictors' own inputs bit for bit, the generator's records through
a real Trainer, and the paths that make their own inputs (tiled images, cached embeddings)."""

from __future__ import annotations

from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from segment_anything.utils.amg import generate_crop_boxes
from segment_anything.utils.transforms import ResizeLongestSide

from amg_lightning.core.image import CropInputs, PreparedCrops
from amg_lightning.core.models import sharpen
from amg_lightning.data.datamodule import WebDatasetDataModule
from amg_lightning.results.shards import iter_results
from amg_lightning.run.module import AmgModule
from amg_lightning.run.writer import RleShardWriter
from tests.helpers.shards import png_bytes, read_jsonl, write_tar
from tests.helpers.trainer import cpu_trainer

RATIO = 512 / 1500
# Odd sizes, and thin ones: at a 1024-pixel input 1 x 1999 is SAM's thinnest, 1 x 4000 too thin
# for SAM 1 (no inputs: the generator refuses it and says why); SAM 2 resizes it to the square,
# but its second crop layer has empty crops (refused too).
SIZES = [(37, 1001), (301, 199), (1, 1999), (1, 4000), (2, 3)]
# Every mask kept, so that records of several crops and layers are compared.
LOOSE = {
    "points_per_side": 4,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "box_nms_thresh": 1.0,
    "crop_nms_thresh": 1.0,
}


def write_shard(path: Path, sizes: list[tuple[int, int]], corrupt: bool = False) -> str:
    members = [(f"img{i}.png", png_bytes(h, w, seed=i)) for i, (h, w) in enumerate(sizes)]
    if corrupt:
        members.insert(1, ("corrupt.png", b"not a png"))
    write_tar(path, members)
    return str(path)


def reference_inputs(family: str, image: np.ndarray, crop_n_layers: int) -> list[torch.Tensor]:
    """Each crop as segment_anything's or sam2's predictor resizes it, at a 1024-pixel input."""
    boxes, _ = generate_crop_boxes(image.shape[:2], crop_n_layers, RATIO)
    crops = [image[y0:y1, x0:x1] for x0, y0, x1, y1 in boxes]
    if family == "sam":
        return [torch.from_numpy(ResizeLongestSide(1024).apply_image(crop)) for crop in crops]
    from sam2.utils.transforms import SAM2Transforms

    return [SAM2Transforms(1024, mask_threshold=0.0)(crop) for crop in crops]


@pytest.mark.parametrize("crop_n_layers", [0, 1])
@pytest.mark.parametrize("family", ["sam", "sam2"])
def test_workers_make_the_reference_predictors_inputs(
    tmp_path: Path, family: str, crop_n_layers: int
) -> None:
    if family == "sam2":
        pytest.importorskip("sam2")
    crop_inputs = CropInputs(family, 1024, crop_n_layers, RATIO)
    url = write_shard(tmp_path / "in.tar", SIZES, corrupt=True)
    data = WebDatasetDataModule(url, batch_size=2, num_workers=1, prepare=crop_inputs)
    seen = []
    for batch in data.predict_dataloader():
        for key, image, prepared in zip(batch["key"], batch["image"], batch["inputs"], strict=True):
            seen.append(key)
            if image is None:  # the corrupt sample keeps its error record, and has no inputs
                assert prepared is None
                continue
            try:
                expected = reference_inputs(family, image.numpy(), crop_n_layers)
            except (ValueError, RuntimeError):  # refused by the predictor too
                assert prepared is None
                continue
            assert isinstance(prepared, PreparedCrops) and prepared.made_by == crop_inputs
            assert len(prepared.inputs) == len(expected)
            for ours, theirs in zip(prepared.inputs, expected, strict=True):
                assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)
    assert seen == ["img0", "corrupt", *[f"img{i}" for i in range(1, len(SIZES))]]


class InputsSeen(lightning.Callback):
    """Whether each image of each batch came with the workers' inputs."""

    def __init__(self) -> None:
        self.seen: dict[str, bool] = {}

    def on_predict_batch_start(self, trainer, pl_module, batch, *args) -> None:
        self.seen |= {k: p is not None for k, p in zip(batch["key"], batch["inputs"], strict=True)}


def predict(
    tmp_path: Path, module: AmgModule, sizes: list[tuple[int, int]]
) -> tuple[dict[str, list], list[dict], dict[str, bool]]:
    """Records and error records by key, and which images had inputs, of a real Trainer run
    over one shard with two workers making the inputs."""
    url = write_shard(tmp_path / "in.tar", sizes, corrupt=True)
    out, seen = tmp_path / "out", InputsSeen()
    data = WebDatasetDataModule(url, batch_size=2, num_workers=2, prepare=module.crop_inputs)
    cpu_trainer([RleShardWriter(str(out)), seen]).predict(
        module, datamodule=data, return_predictions=False
    )
    results = {
        r["image"]["key"]: [without_id(a) for a in r["annotations"]] for r in iter_results(out)
    }
    return results, read_jsonl(out / "errors-r000.jsonl"), seen.seen


def without_id(annotation: dict) -> dict:
    """The generator's record: the shard writer numbers each one."""
    return {k: v for k, v in annotation.items() if k != "id"}


def images(sizes: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """The shard's images as the workers decode them."""
    from amg_lightning.data.decode import decode_image

    return {f"img{i}": decode_image(png_bytes(h, w, seed=i)) for i, (h, w) in enumerate(sizes)}


@pytest.mark.parametrize("model_type", ["tiny", "tiny_sam2"])
def test_predict_with_workers_inputs_gives_the_generators_records(
    tmp_path: Path, model_type: str
) -> None:
    """Crop layers, odd and thin sizes, a corrupt sample: the records of the generator called
    alone. At the tiny models' 256-pixel input 2 x 600 is segmented; 1 x 600 is too thin for
    SAM 1, and SAM 2 refuses its empty second-layer crops: no inputs, the same error records."""
    if model_type == "tiny_sam2":
        pytest.importorskip("sam2")
    sizes = [(150, 200), (37, 251), (2, 600), (1, 600), (97, 61)]
    module = AmgModule(model_type, settings={**LOOSE, "crop_n_layers": 1})
    sharpen(module.sam)  # masks that differ per point: many records to compare
    results, errors, seen = predict(tmp_path, module, sizes)

    assert seen == {"corrupt": False, **{f"img{i}": i != 3 for i in range(5)}}
    assert [e["key"] for e in errors] == ["corrupt", "img3"]
    refusal = "ValueError: image too thin: 600x1 " if model_type == "tiny" else "RuntimeError: "
    assert errors[1]["error"].startswith(refusal)
    generator = module.generator
    expected = {k: generator.generate(v) for k, v in images(sizes).items() if k in results}
    assert results == expected
    assert sum(map(len, results.values())) > 40


@pytest.mark.parametrize("fallback", ["tiling", "cache"])
def test_tiled_images_and_cached_embeddings_give_the_generators_records(
    tmp_path: Path, fallback: str
) -> None:
    """A tiled image gets no inputs (its tiles are cut in the main process), a smaller one of
    the same batch uses its own; cached crops leave theirs unused (a second run, all hits)."""
    sizes = [(150, 200), (400, 300)]
    settings = {**LOOSE, "crop_n_layers": 1}
    if fallback == "tiling":
        module = AmgModule("tiny", settings={**settings, "tile_size": 256, "tile_overlap": 64})
    else:
        module = AmgModule("tiny", settings=settings, embedding_cache_dir=str(tmp_path / "cache"))
        (tmp_path / "first").mkdir()
        predict(tmp_path / "first", module, sizes)
    results, _, seen = predict(tmp_path, module, sizes)

    assert seen == {"corrupt": False, "img0": True, "img1": fallback == "cache"}
    if fallback == "cache":
        assert module.generator.embedding_cache.hits == 2 * 5  # the second run's, 5 crops each
        module.generator.embedding_cache = None  # the records of the generator alone
    generator = module.generator
    assert results == {k: generator.generate(v) for k, v in images(sizes).items()}
