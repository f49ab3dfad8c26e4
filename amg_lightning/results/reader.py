"""Reading a run folder in Python: its image records, its error records, a mask as an array."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from amg_lightning.results.shards import iter_results


def read_run(folder: str | Path) -> Iterator[dict[str, Any]]:
    """Each image's record, `{"image": ..., "annotations": [...]}`, from the complete shards."""
    return iter_results(Path(folder))


def read_errors(folder: str | Path) -> Iterator[dict[str, Any]]:
    """Each error record, `{key, url, error}`, from the run's errors-r*.jsonl files."""
    for path in sorted(Path(folder).glob("errors-r*.jsonl")):
        with open(path, encoding="utf-8") as lines:
            yield from (json.loads(line) for line in lines if line.strip())


def decode_mask(annotation: dict[str, Any]) -> np.ndarray:
    """An annotation's mask as a boolean height x width array."""
    return mask_utils.decode(annotation["segmentation"]).astype(bool)
