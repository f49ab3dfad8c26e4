"""Boxes from masks, and the filters that use them."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms


def masks_to_boxes(masks: Tensor) -> Tensor:
    """XYXY boxes (inclusive max) of B x H x W boolean masks; [0, 0, 0, 0] for an empty mask."""
    if masks.numel() == 0:
        return torch.zeros(masks.shape[0], 4, dtype=torch.long, device=masks.device)
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    return torch.cat([_extent(cols), _extent(rows)], dim=1)[:, [0, 2, 1, 3]]


def _extent(occupied: Tensor) -> Tensor:
    """First and last True index along dim 1 (0, 0 where none)."""
    length = occupied.shape[1]
    index = torch.arange(length, device=occupied.device)
    first = torch.where(occupied, index, length).amin(dim=1)
    last = torch.where(occupied, index, -1).amax(dim=1)
    empty = last < 0
    return torch.stack([first.masked_fill(empty, 0), last.masked_fill(empty, 0)], dim=1)


def near_crop_edge(
    boxes: Tensor, crop_box: list[int], image_box: list[int], atol: float = 20.0
) -> Tensor:
    """Boxes (in image coordinates) within `atol` of a crop edge that is not an image edge."""
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
