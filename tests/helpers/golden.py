"""Golden records: the reference generator's masks on real photos, stored once, compared often.

The reference SamAutomaticMaskGenerator (mobile_sam's copy, as MobileSAM ships it) takes minutes
per photo at its defaults on a small CPU, so its records are written once by

    python -m tests.helpers.golden --checkpoint mobile_sam.pt [--images FOLDER] [CASE ...]

into tests/data/golden/CASE.json.gz, with the photo's sha256, the settings and the versions.
The strict parity tests then run only our generator and compare record by record.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import hashlib
import json
import platform
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from tests.helpers.images import read_photo

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "golden"


@dataclass(frozen=True)
class GoldenCase:
    """One photo at one setting; `photo` is "skimage:NAME" or a file name in AMG_TEST_IMAGES."""

    photo: str
    settings: dict[str, Any] = field(default_factory=dict)
    # A second record set from the same reference masks, with this min_mask_region_area.
    small_regions_area: int = 0

    def settings_for(self, small_regions: bool) -> dict[str, Any]:
        area = self.small_regions_area if small_regions else 0
        return {**self.settings, "min_mask_region_area": area, "output_mode": "coco_rle"}


# Defaults (32 points per side, full resolution) unless a setting says otherwise.
CASES: dict[str, GoldenCase] = {
    "coffee_crop0": GoldenCase("skimage:coffee", small_regions_area=100),
    "chelsea_crop1": GoldenCase("skimage:chelsea", {"crop_n_layers": 1}),
    "dog_crop0": GoldenCase("dog.jpg", small_regions_area=100),
}


def golden_path(name: str, small_regions: bool = False) -> Path:
    return GOLDEN_DIR / f"{name}{'_small_regions' if small_regions else ''}.json.gz"


def image_sha256(image: np.ndarray) -> str:
    """The sha256 of the decoded pixels and their shape (not of the file's bytes)."""
    digest = hashlib.sha256(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def plain_records(records: list[dict]) -> list[dict]:
    """Records as JSON values: COCO RLE counts as text, numbers as Python numbers."""
    out = []
    for record in records:
        segmentation = record["segmentation"]
        counts = segmentation["counts"]
        out.append(
            {
                **{k: v for k, v in record.items() if k != "segmentation"},
                "segmentation": {
                    "size": list(segmentation["size"]),
                    "counts": counts.decode() if isinstance(counts, bytes) else counts,
                },
            }
        )
    return json.loads(json.dumps(out))


def write_golden(name: str, checkpoint: Path, images: Path | None) -> list[Path]:
    """Runs the reference once for CASES[name] and writes its record file(s)."""
    from mobile_sam import SamAutomaticMaskGenerator

    from amg_lightning.core.models import build_sam
    from amg_lightning.run.checkpoints import file_sha256

    case = CASES[name]
    image = read_photo(case.photo, images)
    model = build_sam("vit_t", checkpoint)
    reference = SamAutomaticMaskGenerator(model, **case.settings_for(small_regions=False))
    masks = reference._generate_masks(image)
    # The reference's own generate() on the same masks, once per min_mask_region_area.
    reference._generate_masks = lambda _image: copy.deepcopy(masks)
    written = []
    variants = [False, True] if case.small_regions_area else [False]
    for small_regions in variants:
        settings = case.settings_for(small_regions)
        reference.min_mask_region_area = settings["min_mask_region_area"]
        records = reference.generate(image)
        document = {
            "photo": case.photo,
            "image_sha256": image_sha256(image),
            "image_shape": list(image.shape),
            "settings": settings,
            "reference": "mobile_sam.SamAutomaticMaskGenerator",
            "checkpoint_sha256": file_sha256(checkpoint),
            "versions": {
                p: version(p)
                for p in ("mobilesam-mirror", "segment-anything", "torch", "numpy", "pycocotools")
            }
            | {"python": platform.python_version()},
            "records": plain_records(records),
        }
        path = golden_path(name, small_regions)
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt") as handle:
            json.dump(document, handle)
        written.append(path)
    return written


def read_golden(path: Path) -> dict[str, Any]:
    with gzip.open(path, "rt") as handle:
        return json.load(handle)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("cases", nargs="*", default=list(CASES), help=", ".join(CASES))
    parser.add_argument("--checkpoint", type=Path, required=True, help="MobileSAM's mobile_sam.pt")
    parser.add_argument("--images", type=Path, help="folder of the photos not from scikit-image")
    args = parser.parse_args(argv)
    import torch

    torch.manual_seed(0)
    for name in args.cases:
        for path in write_golden(name, args.checkpoint, args.images):
            print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
