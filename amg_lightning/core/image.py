"""Preparing image crops for SAM's image encoder.

The preparation is in two steps. `CropInputs` cuts each crop of the crop pyramid and resizes it
as the family's predictor does; it needs no model and pickles, so DataLoader workers run it.
The family's `encode` (core/family.py) then moves the inputs to the device and runs the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.transforms import functional as TF

from amg_lightning.core.grids import crop_boxes

# SAM 2's image transforms (torchvision's ImageNet statistics on [0, 1] pixels).
SAM2_MEAN, SAM2_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def resized_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """The size with the longer side at `long_side`, rounded as SAM rounds it.

    Raises ValueError for an image so thin that its short side rounds to 0 pixels (long side
    more than 2 x `long_side` times the short side, e.g. 1x4000 at 1024): SAM refuses it too.
    """
    scale = long_side / max(height, width)
    resized = int(height * scale + 0.5), int(width * scale + 0.5)
    if min(resized) < 1:
        raise ValueError(
            f"image too thin: {width}x{height} would be {resized[1]}x{resized[0]} pixels at the "
            f"model's {long_side}-pixel long side; the long side may be at most "
            f"{2 * long_side} times the short side"
        )
    return resized


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """Bilinear resize of an HWC uint8 image through PIL, exactly as SAM's predictor does."""
    height, width = resized_shape(*image.shape[:2], long_side)
    return np.array(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def sam2_input(image: np.ndarray, size: int) -> Tensor:
    """As SAM2ImagePredictor.set_image: pixels to [0, 1], resized to the square input
    (bilinear, antialiased), normalised; 3 x `size` x `size` float32."""
    resized = TF.resize(TF.to_tensor(image), [size, size], antialias=True)
    return TF.normalize(resized, SAM2_MEAN, SAM2_STD)


@dataclass(frozen=True)
class CropInputs:
    """Cuts an image's crops (`crop_boxes` order) and resizes each for the encoder.

    `family` "sam": the longer side resized to `encoder_size`, H x W x 3 uint8 (unpadded;
    normalised on the device); "sam2": `sam2_input`. Images larger than `tile_size` in either
    side are tiled (core/tiling.py): they get no inputs. `tile_size` decides only that, so
    two CropInputs that differ in it alone make the same inputs and compare equal.
    """

    family: str
    encoder_size: int
    crop_n_layers: int = 0
    crop_overlap_ratio: float = 512 / 1500
    tile_size: int | None = field(default=None, compare=False)

    def __call__(self, image: np.ndarray) -> PreparedCrops | None:
        """The inputs of every crop of `image`, or None where the generator makes its own
        (a tiled image, or one it refuses: it then says why, as it says it without workers)."""
        if self.tile_size is not None and max(image.shape[:2]) > self.tile_size:
            return None
        boxes, _ = crop_boxes(image.shape[:2], self.crop_n_layers, self.crop_overlap_ratio)
        try:
            return PreparedCrops(self, [self.crop(image, box) for box in boxes])
        except (ValueError, RuntimeError):  # too thin for SAM 1; an empty crop for SAM 2
            return None

    def crop(self, image: np.ndarray, box: list[int]) -> Tensor:
        """The encoder input of one XYXY crop box of `image`."""
        x0, y0, x1, y1 = box
        if self.family == "sam2":
            return sam2_input(image[y0:y1, x0:x1], self.encoder_size)
        return torch.from_numpy(resize_longest_side(image[y0:y1, x0:x1], self.encoder_size))


@dataclass
class PreparedCrops:
    """An image's encoder inputs, one per crop box, and the CropInputs that made them."""

    made_by: CropInputs
    inputs: list[Tensor]


def encoder_input(sam: nn.Module, crops: list[Tensor]) -> Tensor:
    """A normalised, zero-padded B x 3 x S x S batch for `sam.image_encoder` (S its input size)
    from crops resized by `CropInputs`."""
    size = sam.image_encoder.img_size
    batch = []
    for crop in crops:
        resized = crop.to(sam.pixel_mean.device)
        pixels = (resized.permute(2, 0, 1).float() - sam.pixel_mean) / sam.pixel_std
        batch.append(F.pad(pixels, (0, size - pixels.shape[2], 0, size - pixels.shape[1])))
    return torch.stack(batch)


def check_image(image: np.ndarray) -> None:
    """Raises ValueError unless `image` is an H x W x 3 uint8 array, as the generator needs."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError("image must be an H x W x 3 uint8 RGB numpy array")
    if image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"image must be H x W x 3 with H, W >= 1, got shape {image.shape}")
