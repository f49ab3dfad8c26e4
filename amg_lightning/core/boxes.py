"""Filters on mask boxes."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms


def near_crop_edge(
    boxes: Tensor, crop_box: list[int] | Tensor, image_box: list[int] | Tensor, atol: float = 20.0
) -> Tensor:
    """Boxes (in image coordinates) within `atol` of a crop edge that is not an image edge.

    The crop and image boxes may already be tensors on the boxes' device (no copy then)."""
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    image = torch.as_tensor(image_box, dtype=torch.float, device=boxes.device)
    boxes = boxes.float()
    at_crop = (boxes - crop).abs() <= atol
    at_image = (boxes - image).abs() <= atol
    return (at_crop & ~at_image).any(dim=1)


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)


def box_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices kept by non-maximum suppression, highest score first."""
    return nms(boxes.float(), scores.float(), iou_threshold)


def mask_boxes(binary: Tensor) -> Tensor:
    """Inclusive XYXY boxes (int64) of B x h x w masks, as the reference's
    batched_mask_to_box: [0, 0, 0, 0] for an empty mask."""
    rows, cols = binary.any(dim=2), binary.any(dim=1)  # B x h, B x w
    h, w = rows.shape[1], cols.shape[1]
    top = rows.to(torch.uint8).argmax(dim=1)
    bottom = h - 1 - rows.flip(1).to(torch.uint8).argmax(dim=1)
    left = cols.to(torch.uint8).argmax(dim=1)
    right = w - 1 - cols.flip(1).to(torch.uint8).argmax(dim=1)
    boxes = torch.stack([left, top, right, bottom], dim=1)
    return boxes * rows.any(dim=1, keepdim=True)
