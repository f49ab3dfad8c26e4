"""SAM 2 through the whole run with the tiny random SAM 2.1 (model=tiny_sam2): run.json
records the family and resume refuses a switch; tiled images and the COCO export; a sweep
with evaluation and the SA-1B export."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from amg_lightning.data.synthetic import SceneSpec, write_dataset
from amg_lightning.results import export
from amg_lightning.results.shards import iter_results
from amg_lightning.run.config import ConfigError
from tests.helpers.config import forget_config, run_in_process
from tests.helpers.jpeg_shards import write_jpeg_shards
from tests.helpers.predict import run_predict

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


@pytest.mark.e2e
def test_use_m2m_sweep_with_evaluation_and_sa1b_export(tmp_path: Path) -> None:
    """A real Hydra multirun over SAM 2's `use_m2m`, scored against synthetic ground truth,
    encoding each image once; then a job's masks exported as SA-1B jsons."""
    dataset = write_dataset(tmp_path / "data", count=2, seed=3, spec=SceneSpec(96, 128))
    sweep_dir = tmp_path / "sweep"
    done = run_predict(
        [
            "-m",
            *FAST,
            f"data.urls={dataset.shards[0].parent}",
            "use_m2m=false,true",
            f"eval.gt={dataset.annotations}",
            f"embedding_cache.dir={tmp_path / 'cache'}",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    summaries = [json.loads((sweep_dir / str(n) / "summary.json").read_text()) for n in range(2)]
    assert [s["config"]["use_m2m"] for s in summaries] == [False, True]
    for summary in summaries:
        assert summary["images"] == 2 and summary["masks"] > 0
        assert 0.0 <= summary["eval"]["AR@100"] <= 1.0
    # m2m decodes every mask again, so its records differ from the first pass's.
    passes = [
        sorted(json.dumps(r["annotations"]) for r in iter_results(sweep_dir / str(n)))
        for n in range(2)
    ]
    assert passes[0] != passes[1]
    with open(sweep_dir / "sweep.csv", newline="") as table:
        rows = list(csv.DictReader(table))
    assert [row["use_m2m"] for row in rows] == ["False", "True"] and "AR@100" in rows[0]
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 2  # the second job's were hits

    sa1b = tmp_path / "sa1b"
    assert export.main([str(sweep_dir / "1"), "--sa1b", str(sa1b)]) == 0
    exported = [json.loads(path.read_text()) for path in sorted(sa1b.iterdir())]
    assert len(exported) == 2
    for image in exported:
        assert image["annotations"]
        for annotation in image["annotations"]:
            rle = {
                **annotation["segmentation"],
                "counts": annotation["segmentation"]["counts"].encode(),
            }
            assert rle["size"] == [image["image"]["height"], image["image"]["width"]]
            assert int(coco_mask.area(rle)) == annotation["area"] > 0
