"""Reading WebDataset shards of images into prediction batches."""

from amg_lightning.data.datamodule import WebDatasetDataModule, resolve_urls
from amg_lightning.data.decode import IMAGE_EXTENSIONS, decode_image

__all__ = ["IMAGE_EXTENSIONS", "WebDatasetDataModule", "decode_image", "resolve_urls"]
