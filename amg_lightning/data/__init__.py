"""Data in: WebDataset shards of images, packing folders into shards, synthetic scenes."""

from amg_lightning.data.datamodule import WebDatasetDataModule, resolve_urls
from amg_lightning.data.decode import IMAGE_EXTENSIONS, decode_image

__all__ = ["IMAGE_EXTENSIONS", "WebDatasetDataModule", "decode_image", "resolve_urls"]
