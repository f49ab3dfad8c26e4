"""Segment Anything's automatic mask generation over whole datasets."""

from amg_lightning.core.generator import AutomaticMaskGenerator
from amg_lightning.core.models import build_sam
from amg_lightning.core.settings import AmgSettings
from amg_lightning.results.reader import decode_mask, read_errors, read_run

__all__ = [
    "AmgSettings",
    "AutomaticMaskGenerator",
    "build_sam",
    "decode_mask",
    "read_errors",
    "read_run",
]
