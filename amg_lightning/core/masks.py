"""The generator's state: a crop's frame, and masks as typed parallel columns."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class CropFrame:
    """Where a crop sits in its image, and the size the model sees it at."""

    box: tuple[int, int, int, int]  # XYXY in the image
    image_size: tuple[int, int]  # H, W of the whole image
    input_size: tuple[int, int]  # H, W of the crop resized for the encoder (before padding)

    @property
    def crop_size(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.box
        return y1 - y0, x1 - x0

    @property
    def image_box(self) -> list[int]:
        return [0, 0, self.image_size[1], self.image_size[0]]


@dataclass
class MaskData:
    """Masks of one image, one row each, in full-image coordinates (on the CPU).

    Boxes are inclusive XYXY; `crop_boxes` are the XYXY boxes of the crops the masks came from.
    """

    rles: list[np.ndarray] = field(default_factory=list)  # COCO-order run lengths
    boxes: Tensor = field(default_factory=lambda: torch.zeros(0, 4, dtype=torch.long))  # XYXY
    iou_preds: Tensor = field(default_factory=lambda: torch.zeros(0))
    stability: Tensor = field(default_factory=lambda: torch.zeros(0))
    points: Tensor = field(default_factory=lambda: torch.zeros(0, 2))  # XY of the prompt
    crop_boxes: Tensor = field(default_factory=lambda: torch.zeros(0, 4, dtype=torch.long))

    @staticmethod
    def tensor_columns() -> list[str]:
        return [f.name for f in fields(MaskData) if f.name != "rles"]

    @classmethod
    def cat(cls, parts: list[MaskData]) -> MaskData:
        """All masks of `parts`, in order (empty parts add nothing, not even their dtypes)."""
        parts = [part for part in parts if len(part)]
        if not parts:
            return cls()
        return cls(
            rles=[counts for part in parts for counts in part.rles],
            **{
                name: torch.cat([getattr(part, name) for part in parts])
                for name in cls.tensor_columns()
            },
        )

    def select(self, keep: Tensor) -> MaskData:
        """The masks at indices (or a boolean mask) `keep`, in that order."""
        if keep.dtype == torch.bool:
            keep = keep.nonzero()[:, 0]
        return MaskData(
            rles=[self.rles[i] for i in keep.tolist()],
            **{name: getattr(self, name)[keep] for name in self.tensor_columns()},
        )

    def with_columns(self, **columns: object) -> MaskData:
        """A copy with some columns replaced."""
        return replace(self, **columns)

    def __len__(self) -> int:
        return len(self.rles)
