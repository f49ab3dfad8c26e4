"""Segment Anything's automatic mask generation over whole datasets."""

from amg_lightning.core.generator import AutomaticMaskGenerator
from amg_lightning.core.models import build_sam
from amg_lightning.core.settings import AmgSettings

__all__ = ["AmgSettings", "AutomaticMaskGenerator", "build_sam"]
