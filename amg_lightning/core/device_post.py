"""Post-processing that stays on the masks' device, reading back only what a record needs.

The host path (`full_res.TiledMasks`, `rle.encode_changes`) reads change positions back for
every mask that passes the stability filter and builds its RLE there. Here, per decode
batch, the stability and crop-edge filters, binary masks and boxes stay on the device; the
batch's masks are compacted after one read of how many pass, however many slices its
full-resolution work takes. Binary masks are kept eight pixels to a byte until NMS has
chosen the survivors. NMS runs on the device, on the same
candidates in the same order as the reference (whose NMS also runs on its masks' device),
and RLE is built only for the survivors: change positions, then run lengths, on the
device. Everything a record needs is then packed into one int64 tensor and copied to the
host once per image.

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
from amg_lightning.core.full_res import stability_score
from amg_lightning.core.masks import CropFrame, MaskData


def true_indices(flags: Tensor, count: int) -> Tensor:
    """Indices of the `count` True entries of a 1-D boolean tensor, in order, without the
    read back that `nonzero` makes: a stable sort puts them first."""
    return torch.argsort((~flags).to(torch.uint8), stable=True)[:count]


def pack_bits(binary: Tensor) -> Tensor:
    """N x h x w booleans -> N x h x ceil(w / 8) bytes, eight pixels of a row to a byte."""
    count, h, w = binary.shape
    pad = torch.zeros(count, h, -w % 8, dtype=torch.bool, device=binary.device)
    octets = torch.cat([binary, pad], dim=2).view(count, h, -(-w // 8), 8).to(torch.uint8)
    return (octets << _bits(binary.device)).sum(dim=3, dtype=torch.uint8)


def _bits(device: torch.device) -> Tensor:
    """Bit k of a byte holds pixel k of its eight; made on the device (a copy from the host
    would wait for CUDA)."""
    return torch.arange(8, dtype=torch.uint8, device=device)


def unpack_bits(packed: Tensor, width: int) -> Tensor:
    """The N x h x `width` booleans of `pack_bits`."""
    bits = (packed[..., None] >> _bits(packed.device)) & 1
    return bits.view(*packed.shape[:2], 8 * packed.shape[2])[..., :width].bool()


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


@dataclass
class DeviceMasks:
    """Masks of one crop on their device: crop-sized binary masks and their record columns
    (boxes, points and crop boxes in the image frame)."""

    packed: Tensor  # N x h x ceil(w / 8) uint8: the binary masks (`pack_bits`)
    boxes: Tensor  # N x 4 int64, inclusive XYXY
    iou_preds: Tensor  # N float32
    stability: Tensor  # N float32
    points: Tensor  # N x 2 float64, XY

    @classmethod
    def cat(cls, parts: list[DeviceMasks]) -> DeviceMasks:
        return cls(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    @classmethod
    def empty(cls, frame: CropFrame, device: torch.device) -> DeviceMasks:
        h, w = frame.crop_size
        return cls(
            packed=torch.zeros(0, h, -(-w // 8), dtype=torch.uint8, device=device),
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
    logits: Tensor,
    threshold: float,
    offset: float,
    stability_thresh: float,
    iou_preds: Tensor,
    points: Tensor,
    boxes: Tensor,
) -> tuple[DeviceMasks, Tensor]:
    """K x h x w crop-sized logits as masks, and which of them pass the stability and
    crop-edge filters (K booleans), without a read back. `boxes` (2 x 4, on the device): the
    crop's and the image's XYXY boxes; `points` are in the crop's frame."""
    stability = stability_score(logits, threshold, offset)
    binary = logits > threshold
    crop_box, image_box = boxes
    corner = crop_box[:2]
    mask_box = mask_boxes(binary) + corner.repeat(2)
    keep = ~near_crop_edge(mask_box, crop_box, image_box)
    if stability_thresh > 0:
        keep &= stability >= stability_thresh
    image_points = points + corner.to(points.dtype)
    masks = DeviceMasks(pack_bits(binary), mask_box, iou_preds, stability, image_points)
    return masks, keep


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
    """Masks of one crop kept by every filter and NMS, in record order, and their crop box."""

    masks: DeviceMasks
    frame: CropFrame


def to_host(crops: list[Survivors]) -> list[MaskData]:
    """Each crop's survivors as host `MaskData` (RLEs and columns), from one packed copy."""
    parts, layout = [], []
    for crop in crops:
        masks = crop.masks
        binary = unpack_bits(masks.packed, crop.frame.crop_size[1])
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
