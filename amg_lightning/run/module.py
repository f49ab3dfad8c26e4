"""The LightningModule: SAM plus generator settings; `predict_step` segments a batch of images."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lightning as L
import torch

from amg_lightning.core.embedding_cache import EmbeddingCache
from amg_lightning.core.generator import AutomaticMaskGenerator
from amg_lightning.core.image import CropInputs, PreparedCrops
from amg_lightning.core.models import build_sam
from amg_lightning.results.run_folder import SHARD_OUTPUT_MODE


class AmgModule(L.LightningModule):
    """Runs the complete crop-pyramid mask generation for every image of a batch.

    Batches are `{"key", "url", "file_name", "image", "inputs", "error"}` lists as the
    WebDataset DataModule makes them (`inputs`: each image's encoder inputs, made in its
    workers by `crop_inputs`, or None); each result is `{"key", "url", "file_name", "height",
    "width", "annotations", "error"}` with annotations in COCO RLE form. An image that fails
    keeps its key and carries the error.
    """

    def __init__(
        self,
        model_type: str,
        checkpoint: str | None = None,
        settings: dict[str, Any] | None = None,
        fast: bool = False,
        embedding_cache_dir: str | None = None,
        embedding_cache_gb: float = 10.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.sam = build_sam(model_type, checkpoint)
        self.sam.requires_grad_(False)
        cache = None
        if embedding_cache_dir:
            cache = EmbeddingCache(embedding_cache_dir, int(embedding_cache_gb * 2**30))
        self.generator = AutomaticMaskGenerator(
            self.sam,
            fast=fast,
            embedding_cache=cache,
            model_id=_model_id(model_type, checkpoint),
            **{**(settings or {}), "output_mode": SHARD_OUTPUT_MODE},
        )

    @property
    def crop_inputs(self) -> CropInputs:
        """What the DataModule's workers run on each image (its `prepare`)."""
        return self.generator.crop_inputs

    def images_per_batch(self) -> int:
        """The DataModule's batch size where it is `auto` (the generator's `images_per_pass`,
        on the device the model is on by then)."""
        return self.generator.images_per_pass()

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        """The batch as it is: its crops were cut and resized for the encoder on the host,
        as SAM's predictor does (in the DataLoader workers, or by the generator where a batch
        has no inputs), and the generator moves them to the device a few crops at a time."""
        return batch

    def predict_step(self, batch: dict[str, list], batch_idx: int = 0) -> list[dict[str, Any]]:
        images = {i: image.numpy() for i, image in enumerate(batch["image"]) if image is not None}
        generated = self._generate(images, batch["inputs"])
        results = []
        for i, key in enumerate(batch["key"]):
            image = images.get(i)
            outcome = generated.get(i, batch["error"][i])  # records, or an error message
            failed = isinstance(outcome, str)
            if failed:
                outcome = without_addresses(outcome)
            results.append(
                {
                    "key": key,
                    "url": batch["url"][i],
                    "file_name": batch["file_name"][i],
                    "height": None if image is None else int(image.shape[0]),
                    "width": None if image is None else int(image.shape[1]),
                    "annotations": [] if failed else outcome,
                    "error": outcome if failed else None,
                }
            )
        return results

    def _generate(
        self, images: dict[int, Any], inputs: list[PreparedCrops | None]
    ) -> dict[int, list | str]:
        """Records per image index; an image that fails alone gets its error message instead."""
        if not images:
            return {}
        generate = self.generator.generate_batch
        prepared = [inputs[i] for i in images]
        try:
            return dict(zip(images, generate(list(images.values()), prepared), strict=True))
        except (ValueError, RuntimeError):
            pass  # one bad image must not cost the others: retry them one at a time
        out: dict[int, Any] = {}
        for i, image in images.items():
            try:
                out[i] = generate([image], [inputs[i]])[0]
            except (ValueError, RuntimeError) as err:
                out[i] = f"{type(err).__name__}: {err}"
        return out


# A Python object's default repr, e.g. "<_io.BytesIO object at 0x7f...>" in Pillow's errors.
_OBJECT_REPR = re.compile(r"<([\w.]+) object at 0x[0-9a-fA-F]+>")


def without_addresses(message: str) -> str:
    """The message with default object reprs named by type only: an address differs on every run,
    so records of the same failure would differ and say nothing more."""
    return _OBJECT_REPR.sub(r"<\1>", message)


def _model_id(model_type: str, checkpoint: str | None) -> str:
    """Names the weights for the embedding cache; a replaced file changes size or mtime."""
    if checkpoint is None:
        return model_type
    stat = Path(checkpoint).stat()
    return f"{model_type}:{Path(checkpoint).name}:{stat.st_size}:{stat.st_mtime_ns}"
