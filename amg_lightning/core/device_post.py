"""Post-processing that stays on the masks' device, reading back only what a record needs.

The host path (`full_res.TiledMasks`, `rle.encode_changes`) reads change positions back for
every mask that passes the stability filter and builds its RLE there. Here, per decode
batch, stability scores and boxes come from the full-resolution stage (tiled where its
arithmetic is the device's own, else dense: `full_res.CropResize.masks`) and the stability
and crop-edge filters run on the device; the batch's masks are compacted after one read of
how many pass. Until NMS has chosen the survivors, a mask is kept as its low-res logits
(smaller than its binary mask at full resolution). NMS runs on the device, on the same
candidates in the same order as the reference (whose NMS also runs on its masks' device).
Only the survivors are resized again, to binary masks, and RLE is built for them alone:
change positions, then run lengths, on the device. Everything a record needs is then
packed into one int64 tensor and copied to the host once per image.

Run lengths are COCO's: column-major in the image, zeros first. A mask's lengths are
followed by one more, the background after its last change, which is zero when the mask
reaches the image's last pixel; the host drops such a trailing zero (`MaskData` keeps the
reference's counts, which have none).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from amg_lightning.core.boxes import near_crop_edge
from amg_lightning.core.full_res import CropResize, DenseMasks, TiledMasks
from amg_lightning.core.masks import CropFrame, MaskData


def true_indices(flags: Tensor, count: int) -> Tensor:
    """Indices of the `count` True entries of a 1-D boolean tensor, in order, without the
    read back that `nonzero` makes: a stable sort puts them first."""
    return torch.argsort((~flags).to(torch.uint8), stable=True)[:count]


@dataclass
class DeviceMasks:
    """Masks of one crop on their device: their low-res logits (the crop's part) and their
    record columns (boxes and points in the image frame)."""

    low_res: Tensor  # N x h x w float32
    boxes: Tensor  # N x 4 int64, inclusive XYXY
    iou_preds: Tensor  # N float32
    stability: Tensor  # N float32
    points: Tensor  # N x 2 float64, XY

    @classmethod
    def cat(cls, parts: list[DeviceMasks]) -> DeviceMasks:
        return cls(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    @classmethod
    def empty(cls, resize: CropResize, device: torch.device) -> DeviceMasks:
        return cls(
            low_res=torch.zeros(0, *resize.low_res_shape, device=device),
            boxes=torch.zeros(0, 4, dtype=torch.long, device=device),
            iou_preds=torch.zeros(0, device=device),
            stability=torch.zeros(0, device=device),
            points=torch.zeros(0, 2, dtype=torch.float64, device=device),
        )

    def select(self, index: Tensor) -> DeviceMasks:
        return DeviceMasks(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def __len__(self) -> int:
        return len(self.boxes)


def filter_masks(
    masks: TiledMasks | DenseMasks,
    low_res: Tensor,
    stability_thresh: float,
    iou_preds: Tensor,
    points: Tensor,
    boxes: Tensor,
) -> tuple[DeviceMasks, Tensor]:
    """K masks (from their K low-res maps) and which of them pass the stability and crop-edge
    filters (K booleans), without a read back. `boxes` (2 x 4, on the device): the crop's and
    the image's XYXY boxes; `points` are in the crop's frame."""
    stability = masks.stability()
    crop_box, image_box = boxes
    corner = crop_box[:2]
    mask_box = masks.boxes() + corner.repeat(2)
    keep = ~near_crop_edge(mask_box, crop_box, image_box)
    if stability_thresh > 0:
        keep &= stability >= stability_thresh
    image_points = points + corner.to(points.dtype)
    return DeviceMasks(low_res, mask_box, iou_preds, stability, image_points), keep


def compact(parts: list[tuple[DeviceMasks, Tensor]]) -> DeviceMasks:
    """The masks of `filter_masks` parts that passed, in order, after one read of how many."""
    masks = DeviceMasks.cat([m for m, _ in parts])
    keep = torch.cat([k for _, k in parts])
    return masks.select(true_indices(keep, int(keep.sum())))


def run_lengths(binary: Tensor, frame: CropFrame) -> tuple[Tensor, Tensor]:
    """COCO run lengths in the image of N crop-sized masks: (flat lengths, lengths per mask),
    each mask's followed by its trailing background (see the module docstring)."""
    count, h, w = binary.shape
    height, width = frame.image_size
    x0, y0 = frame.box[:2]
    columns = binary.transpose(1, 2)  # N x w x h: column-major order
    if h == height:
        # Whole columns: a run may go on from one column's last row to the next's first, so
        # the crop is one column-major line of pixels.
        line = F.pad(columns.reshape(count, w * h), (1, 1))
        mask, at = (line[:, 1:] != line[:, :-1]).nonzero(as_tuple=True)
        positions = x0 * height + at
    else:
        # Background lies above or below every column: its runs end inside it.
        padded = F.pad(columns, (1, 1))
        mask, column, row = (padded[..., 1:] != padded[..., :-1]).nonzero(as_tuple=True)
        positions = (x0 + column) * height + y0 + row
    return _lengths(positions, mask, count, height * width)


def _lengths(positions: Tensor, mask: Tensor, count: int, total: int) -> tuple[Tensor, Tensor]:
    """Run lengths from change positions sorted by (mask, position): each change's distance
    from the one before in its mask (or from 0), then per mask the rest up to `total`."""
    device = positions.device
    changes = torch.zeros(count, dtype=torch.long, device=device)
    changes.index_add_(0, mask, torch.ones_like(mask))
    ends = changes.cumsum(0)
    first = torch.arange(len(positions), device=device) == (ends - changes)[mask]
    previous = torch.cat([positions.new_zeros(1), positions[:-1]])
    lengths = positions - torch.where(first, 0, previous)
    last = torch.cat([positions.new_zeros(1), positions])[ends]
    last = torch.where(changes > 0, last, 0)
    per_mask = changes + 1
    out = torch.empty(len(positions) + count, dtype=torch.long, device=device)
    out[torch.arange(len(positions), device=device) + mask] = lengths
    out[ends + torch.arange(count, device=device)] = total - last
    return out, per_mask


@dataclass
class Survivors:
    """Masks of one crop kept by every filter and NMS, in record order; their crop box; and
    how their low-res logits become binary masks (the crop's resize, the mask threshold)."""

    masks: DeviceMasks
    frame: CropFrame
    resize: CropResize
    threshold: float


def to_host(crops: list[Survivors]) -> list[MaskData]:
    """Each crop's survivors as host `MaskData` (RLEs and columns), from one packed copy."""
    parts, layout = [], []
    for crop in crops:
        masks = crop.masks
        binary = crop.resize.binary_masks(masks.low_res, crop.threshold)
        lengths, per_mask = run_lengths(binary, crop.frame)
        floats = torch.cat(
            [masks.iou_preds.double(), masks.stability.double(), masks.points.flatten()]
        )
        parts += [per_mask, masks.boxes.flatten(), floats.view(torch.int64), lengths]
        layout.append((len(masks), len(lengths)))
    packed = _copy_to_host(torch.cat(parts)) if parts else np.zeros(0, dtype=np.int64)
    out, start = [], 0
    for crop, (count, total) in zip(crops, layout, strict=True):
        cut = np.cumsum([count, 4 * count, 4 * count, total])
        per_mask, boxes, floats, lengths = np.split(packed[start : start + cut[-1]], cut[:-1])
        start += cut[-1]
        if count == 0:
            out.append(MaskData())
            continue
        floats = floats.view(np.float64)
        rles = np.split(lengths, np.cumsum(per_mask)[:-1])
        out.append(
            MaskData(
                rles=[counts[:-1] if counts[-1] == 0 else counts for counts in rles],
                boxes=torch.from_numpy(boxes.reshape(-1, 4)),
                iou_preds=torch.from_numpy(floats[:count]).float(),
                stability=torch.from_numpy(floats[count : 2 * count]).float(),
                points=torch.from_numpy(floats[2 * count :].reshape(-1, 2)),
                crop_boxes=torch.tensor([crop.frame.box]).expand(count, 4),
            )
        )
    return out


def _copy_to_host(packed: Tensor) -> np.ndarray:
    """One copy of `packed` to the host; on CUDA into pinned memory, then one wait."""
    if packed.device.type == "cpu":
        return packed.numpy()
    host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
    host.copy_(packed, non_blocking=True)
    torch.cuda.current_stream(packed.device).synchronize()
    return host.numpy()
