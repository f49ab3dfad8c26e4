"""What differs between SAM 1 and SAM 2 for the generator: the encoder's input, the point
prompts, and the resize of the low-resolution logits. Everything else is shared.

SAM 1 (and MobileSAM) resizes a crop's longer side to the encoder size and pads the rest;
its masks are resized to the padded input, unpadded, then resized to the crop. SAM 2 resizes
the crop to the whole square input, whatever its aspect, and resizes its masks straight from
the low-resolution map to the crop.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from amg_lightning.core.decoder import PointDecoder
from amg_lightning.core.full_res import CropResize, crop_resize
from amg_lightning.core.image import encoder_input, resized_shape
from amg_lightning.core.masks import CropFrame
from amg_lightning.core.sam2_models import is_sam2


class Sam1Family:
    """SAM 1 models (`segment_anything.modeling.Sam`, MobileSAM)."""

    name = "sam"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @property
    def device(self) -> torch.device:
        return self.model.pixel_mean.device

    @property
    def encoder_size(self) -> int:
        return self.model.image_encoder.img_size

    def input_size(self, crop_size: tuple[int, int]) -> tuple[int, int]:
        """The crop's size at the encoder, before padding."""
        return resized_shape(*crop_size, self.encoder_size)

    def encode(self, inputs: list[Tensor]) -> Tensor:
        """B x C x h x w image embeddings of crops resized by `CropInputs` (core/image.py)."""
        return self.model.image_encoder(encoder_input(self.model, inputs)).float()

    def prepare(self, decoder: PointDecoder, embedding: Tensor):
        return decoder.prepare(embedding)

    def prompts(self, points: np.ndarray, frame: CropFrame) -> tuple[Tensor, Tensor]:
        """Points of the crop's grid (XY, crop frame) as the records hold them, and as the
        model reads them; as SamAutomaticMaskGenerator computes them (float64)."""
        (crop_h, crop_w), (input_h, input_w) = frame.crop_size, frame.input_size
        scale = np.array([input_w / crop_w, input_h / crop_h])
        both = torch.as_tensor(np.stack([points, points * scale]), device=self.device)
        return both[0], both[1]

    def resize(self, decoder: PointDecoder, frame: CropFrame) -> CropResize:
        return crop_resize(
            decoder.low_res_size, self.encoder_size, frame.input_size, frame.crop_size
        )


class Sam2Family:
    """SAM 2 and SAM 2.1 models (`sam2.modeling.sam2_base.SAM2Base`)."""

    name = "sam2"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @property
    def device(self) -> torch.device:
        return self.model.no_mem_embed.device

    @property
    def encoder_size(self) -> int:
        return self.model.image_size

    def input_size(self, crop_size: tuple[int, int]) -> tuple[int, int]:
        return self.encoder_size, self.encoder_size

    def encode(self, inputs: list[Tensor]) -> Tensor:
        """Each crop's embedding and high-resolution features, flattened into one row: B x N.

        The inputs are `CropInputs`' (core/image.py: resized and normalised as
        SAM2ImagePredictor.set_image); the lowest-resolution level gets the "no memory"
        embedding added.
        """
        batch = torch.stack(inputs).to(self.device)
        levels = self.model.forward_image(batch)["backbone_fpn"][-self.model.num_feature_levels :]
        if self.model.directly_add_no_mem_embed:
            levels[-1] = levels[-1] + self.model.no_mem_embed.view(1, -1, 1, 1)
        return torch.cat([level.flatten(1) for level in levels], dim=1).float()

    def prepare(self, decoder: PointDecoder, embedding: Tensor):
        """The decoder's context from one row of `encode`."""
        channels = self.model.sam_mask_decoder.transformer_dim
        side = self.encoder_size // self.model.backbone_stride
        shapes = [(channels // 8, 4 * side), (channels // 4, 2 * side), (channels, side)]
        parts = embedding.split([c * s * s for c, s in shapes], dim=1)
        s0, s1, image = (p.view(1, c, s, s) for p, (c, s) in zip(parts, shapes, strict=True))
        return decoder.prepare(image, (s0, s1))

    def prompts(self, points: np.ndarray, frame: CropFrame) -> tuple[Tensor, Tensor]:
        """As SAM2AutomaticMaskGenerator: float32 points, divided by the crop's size and
        multiplied by the input's."""
        crop_h, crop_w = frame.crop_size
        points = torch.as_tensor(points, dtype=torch.float32, device=self.device)
        normalised = points.clone()
        normalised[:, 0] = normalised[:, 0] / crop_w
        normalised[:, 1] = normalised[:, 1] / crop_h
        return points, normalised * self.encoder_size

    def resize(self, decoder: PointDecoder, frame: CropFrame) -> CropResize:
        # Straight from the low-res map to the crop: a resize to a map of its own size first
        # changes no value (F.interpolate copies at scale 1; CropResize checks its probe).
        low = decoder.low_res_size
        return crop_resize(low, low, (low, low), frame.crop_size)


def model_family(model: nn.Module) -> Sam1Family | Sam2Family:
    return Sam2Family(model) if is_sam2(model) else Sam1Family(model)
