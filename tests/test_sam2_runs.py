"""SAM 2 through the whole run, in-process with the tiny random SAM 2.1 (model=tiny_sam2):
run.json records the family and resume refuses a switch; tiled images and the COCO export."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from amg_lightning.results import export
from amg_lightning.results.shards import iter_results
from amg_lightning.run.config import ConfigError
from tests.helpers.config import forget_config, run_in_process
from tests.helpers.jpeg_shards import write_jpeg_shards

pytest.importorskip("sam2")

LOOSE = ["points_per_side=4", "pred_iou_thresh=0.0", "stability_score_thresh=0.0"]
FAST = ["model=tiny_sam2", *LOOSE, "data.num_workers=0"]


@pytest.fixture(autouse=True)
def _forget_hydra_config():
    yield
    forget_config()


def folder_state(output_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(output_dir.iterdir()) if p.is_file()}


def test_resume_refuses_a_switch_of_family(tmp_path: Path) -> None:
    write_jpeg_shards(tmp_path / "shards", [2])
    out = tmp_path / "out"
    run = [f"data.urls={tmp_path / 'shards'}", f"output_dir={out}"]
    assert run_in_process([*FAST, *run])["images"] == 2
    recorded = json.loads((out / "run.json").read_text())["model"]
    assert (recorded["model_type"], recorded["family"]) == ("tiny_sam2", "sam2")
    before = folder_state(out)

    with pytest.raises(ConfigError) as refused:
        run_in_process(["model=tiny", *LOOSE, "data.num_workers=0", *run, "resume=true"])
    message = str(refused.value)
    assert "was made with other settings" in message
    assert "family 'sam2' -> 'sam'" in message
    assert "model_type 'tiny_sam2' -> 'tiny'" in message
    assert folder_state(out) == before


def test_tiled_image_and_its_coco_export(tmp_path: Path) -> None:
    """A 600 x 300 image in 256-pixel tiles: records from several tiles, in image
    coordinates, exported as a COCO dataset whose masks are the shards'."""
    rng = np.random.default_rng(2)
    smooth = cv2.resize(
        rng.integers(0, 255, (4, 6, 3), dtype=np.uint8), (600, 300), interpolation=cv2.INTER_CUBIC
    )
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "images-000000.tar", "w") as tar:
        buffer = io.BytesIO()
        Image.fromarray(smooth).save(buffer, "PNG")
        info = tarfile.TarInfo("wide.png")
        info.size = buffer.tell()
        buffer.seek(0)
        tar.addfile(info, buffer)
    out = tmp_path / "out"
    tiling = ["tile_size=256", "tile_overlap=64"]
    assert run_in_process([*FAST, *tiling, f"data.urls={shards}", f"output_dir={out}"])["images"]

    (result,) = iter_results(out)
    annotations = result["annotations"]
    assert len({tuple(a["crop_box"]) for a in annotations}) > 1  # from several tiles
    for annotation in annotations:
        assert annotation["segmentation"]["size"] == [300, 600]
        assert coco_mask.area(annotation["segmentation"]) == annotation["area"]

    coco_path = tmp_path / "coco.json"
    assert export.main([str(out), "--coco", str(coco_path)]) == 0
    coco = json.loads(coco_path.read_text())
    assert [(i["file_name"], i["height"], i["width"]) for i in coco["images"]] == [
        ("wide.png", 300, 600)
    ]
    exported = {a["id"]: a["segmentation"]["counts"] for a in coco["annotations"]}
    assert exported == {a["id"]: a["segmentation"]["counts"] for a in annotations}
