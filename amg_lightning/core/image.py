"""Preparing image crops for SAM's image encoder."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.nn import functional as F


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


def encoder_input(sam: nn.Module, crops: list[np.ndarray]) -> Tensor:
    """A normalised, zero-padded B x 3 x S x S batch for `sam.image_encoder` (S its input size)."""
    size = sam.image_encoder.img_size
    batch = []
    for crop in crops:
        resized = torch.from_numpy(resize_longest_side(crop, size)).to(sam.pixel_mean.device)
        pixels = (resized.permute(2, 0, 1).float() - sam.pixel_mean) / sam.pixel_std
        batch.append(F.pad(pixels, (0, size - pixels.shape[2], 0, size - pixels.shape[1])))
    return torch.stack(batch)


def check_image(image: np.ndarray) -> None:
    """Raises ValueError unless `image` is an H x W x 3 uint8 array, as the generator needs."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError("image must be an H x W x 3 uint8 RGB numpy array")
    if image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"image must be H x W x 3 with H, W >= 1, got shape {image.shape}")
