"""SA-1B records: ids unique within a run (over ranks and resumed runs), `amg-export --sa1b`
read back with pycocotools and compared to the shards."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import webdataset as wds
from pycocotools import mask as mask_utils

from amg_lightning.data.datamodule import WebDatasetDataModule
from amg_lightning.results import export
from amg_lightning.results.names import safe_name
from amg_lightning.results.run_folder import shard_paths
from amg_lightning.results.shards import iter_results
from amg_lightning.run.folder import completed_samples
from amg_lightning.run.module import AmgModule
from amg_lightning.run.writer import RleShardWriter
from tests.helpers.jpeg_shards import blob_jpeg, write_jpeg_shards
from tests.helpers.predict import console_command, run_predict
from tests.helpers.trainer import cpu_trainer

# Every mask kept: the tiny random SAM's scores are low.
SETTINGS = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
SETTINGS["box_nms_thresh"] = 1.0
UNSAFE_KEYS = ("../escape", "sub/img")
SA1B_IMAGE = {"image_id", "width", "height", "file_name"}
SA1B_ANNOTATION = {
    "id",
    "segmentation",
    "bbox",
    "area",
    "predicted_iou",
    "stability_score",
    "crop_box",
    "point_coords",
}


def predict(urls: str | list[str], out: Path, skip_keys: Iterable[tuple[str, str]] = ()) -> None:
    trainer = cpu_trainer([RleShardWriter(str(out), shard_size=2)])
    data = WebDatasetDataModule(urls, batch_size=2, skip_keys=set(skip_keys))
    model = AmgModule(model_type="tiny", settings=SETTINGS)
    trainer.predict(model, datamodule=data, return_predictions=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder written by a run over two shards and a resumed run over all three."""
    shards = tmp_path_factory.mktemp("shards")
    write_jpeg_shards(shards, [3, 2])
    with wds.TarWriter(str(shards / "in-000002.tar")) as shard:
        for seed, key in enumerate(UNSAFE_KEYS):
            shard.write({"__key__": key, "jpg": blob_jpeg(100 + seed)})
    out = shards.parent / "out"
    predict([str(shards / "in-000000.tar"), str(shards / "in-000001.tar")], out)
    predict(str(shards), out, skip_keys=completed_samples(out, move_damaged=False))
    return out


def all_ids(results: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    image_ids = [result["image"]["image_id"] for result in results]
    annotation_ids = [a["id"] for result in results for a in result["annotations"]]
    return image_ids, annotation_ids


def assert_unique_ids(results: list[dict[str, Any]]) -> None:
    image_ids, annotation_ids = all_ids(results)
    assert len(set(image_ids)) == len(image_ids)
    assert len(set(annotation_ids)) == len(annotation_ids)
    assert all(isinstance(i, int) and 0 < i < 2**63 for i in image_ids + annotation_ids)


def test_ids_are_unique_over_a_run_and_its_resumed_run(run_dir: Path) -> None:
    results = list(iter_results(run_dir))
    assert sorted(r["image"]["key"] for r in results) == sorted(
        [f"img{i:03d}" for i in range(5)] + list(UNSAFE_KEYS)
    )
    assert len(shard_paths(run_dir)) == 4  # 5 images in 3 shards, then 2 more in a fourth
    assert_unique_ids(results)
    assert sum(len(r["annotations"]) for r in results) > len(results)
    for result in results:
        assert result["image"]["file_name"] == f"{result['image']['key']}.jpg"


def test_sa1b_export_reads_back_as_the_shards(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sa1b = tmp_path / "sa1b"
    assert export.main([str(run_dir), "--sa1b", str(sa1b)]) == 0

    keys = [result["image"]["key"] for result in iter_results(run_dir)]
    written = sorted(p.name for p in sa1b.iterdir())
    assert written == sorted(f"{safe_name(key)}.json" for key in keys)
    for result in iter_results(run_dir):
        image = result["image"]
        sa1b_json = json.loads((sa1b / f"{safe_name(image['key'])}.json").read_text())
        assert set(sa1b_json) == {"image", "annotations"}
        assert sa1b_json["image"] == {name: image[name] for name in SA1B_IMAGE}
        assert len(sa1b_json["annotations"]) == len(result["annotations"])
        for annotation, record in zip(sa1b_json["annotations"], result["annotations"], strict=True):
            assert set(annotation) == SA1B_ANNOTATION
            assert annotation == {name: record[name] for name in SA1B_ANNOTATION}
            assert_reads_back(annotation, image["height"], image["width"])
    assert "wrote SA-1B jsons for 7 images" in capsys.readouterr().out
    # Path-like keys are written under safe names inside the folder, never outside it.
    assert not (tmp_path / "escape.json").exists()
    assert all(path.parent == sa1b for path in sa1b.rglob("*"))


def assert_reads_back(annotation: dict[str, Any], height: int, width: int) -> None:
    """pycocotools decodes the RLE to the image's size, with the stated area and box.

    The box is segment_anything's (as in SA-1B): its width and height are right - left and
    bottom - top of the mask's pixels, one less than pycocotools' toBbox.
    """
    rle = {**annotation["segmentation"]}
    rle["counts"] = rle["counts"].encode()
    mask = mask_utils.decode(rle)
    assert mask.shape == (height, width)
    assert int(mask.sum()) == annotation["area"] == int(mask_utils.area(rle))
    assert annotation["area"] > 0
    np.testing.assert_array_equal(mask_utils.toBbox(rle) - [0, 0, 1, 1], annotation["bbox"])
    x, y, w, h = annotation["crop_box"]
    assert x >= 0 and y >= 0 and x + w <= width and y + h <= height


@pytest.mark.parametrize("form", ["--sa1b", "--coco"])
def test_shards_without_ids_are_refused(tmp_path: Path, form: str) -> None:
    """Shards from before records had ids: one message, nothing half-written."""
    run = tmp_path / "old-run"
    run.mkdir()
    record = {"image": {"key": "a", "url": "in.tar", "height": 2, "width": 2}, "annotations": []}
    with wds.TarWriter(str(run / "masks-r000-000000.tar")) as shard:
        shard.write({"__key__": "a", "json": record})
    target = tmp_path / "exported"

    with pytest.raises(SystemExit) as stopped:
        export.main([str(run), form, str(target)])

    assert "the record of 'a' has no image_id" in str(stopped.value.code)
    assert "predict them again" in str(stopped.value.code)
    assert not target.exists() or not list(target.iterdir())


@pytest.mark.e2e
def test_ids_unique_over_two_ddp_ranks_and_a_resume_on_one(tmp_path: Path) -> None:
    """predict.py with two DDP processes, a shard lost as in a kill, resumed by one process."""
    keys = write_jpeg_shards(tmp_path / "shards", [3, 2, 2])
    out = tmp_path / "out"
    args = ["model=tiny", *(f"{k}={v}" for k, v in SETTINGS.items()), "shard_size=1"]
    args += [f"data.urls={tmp_path / 'shards'}", "data.num_workers=0", f"output_dir={out}"]
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    env = {"OMP_NUM_THREADS": "1"}  # two ranks on two cores
    first = run_predict([*args, *ddp], tmp_path, timeout=240, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    # Rank 0 reads shards 0 and 2 (5 images): its bar counts its own share.
    assert "images to do: 5 " in first.stdout
    assert "5/5" in first.stdout
    lost = out / "masks-r001-000000.tar"
    assert lost.is_file()
    lost.unlink()
    resumed = run_predict([*args, "resume=true"], tmp_path, timeout=240, env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    results = list(iter_results(out))
    assert sorted(r["image"]["key"] for r in results) == keys
    assert_unique_ids(results)
    sa1b = tmp_path / "sa1b"
    exported = subprocess.run(
        [console_command("amg-export"), str(out), "--sa1b", str(sa1b)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert exported.returncode == 0, exported.stderr
    files = [json.loads((sa1b / f"{key}.json").read_text()) for key in keys]
    assert_unique_ids(files)
    for file in files:
        image = file["image"]
        for annotation in file["annotations"]:
            assert_reads_back(annotation, image["height"], image["width"])
