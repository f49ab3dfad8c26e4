"""amg-shards and amg-export, their `main` run in-process on real files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

import amg_lightning
from amg_lightning.data import shards as make_shards
from amg_lightning.results import export
from amg_lightning.results.export import METADATA_HEADER
from amg_lightning.results.shards import iter_results
from amg_lightning.run import ids


def exit_code(script: ModuleType, *args: str) -> int:
    """`main`'s exit status, whether it returns one or exits."""
    try:
        return script.main(list(args))
    except SystemExit as stopped:
        return stopped.code if isinstance(stopped.code, int) else 1


def image_bytes(fmt: str, value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((5, 7, 3), value, dtype=np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


def read_shards(directory: Path) -> list[dict[str, Any]]:
    samples = []
    for shard in sorted(directory.glob("images-*.tar")):
        samples += list(wds.DataPipeline(wds.SimpleShardList(str(shard)), wds.tarfile_to_samples()))
    return samples


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """Nested images, a clash of stems, dotted names, and two files that are not images."""
    folder = tmp_path / "photos"
    (folder / "trip.2024" / "day1").mkdir(parents=True)
    files = {
        "a.jpg": image_bytes("JPEG", 10),
        "a.png": image_bytes("PNG", 20),
        "b.v2.JPEG": image_bytes("JPEG", 30),
        "trip.2024/day1/c.webp": image_bytes("WEBP", 40),
        "trip.2024/d.tiff": image_bytes("TIFF", 50),
        "notes.txt": b"not an image",
        "fake.jpg": b"plain text pretending to be a jpeg",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_help_works(capsys: pytest.CaptureFixture[str]) -> None:
    for script in (make_shards, export):
        assert exit_code(script, "--help") == 0
        assert "usage" in capsys.readouterr().out


def test_make_shards_from_a_folder(
    tmp_path: Path, photo_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shards"
    assert exit_code(make_shards, str(photo_folder), "--output", str(out), "--maxcount", "2") == 0
    printed = capsys.readouterr()
    assert "wrote 5 images in 3 shards" in printed.out
    assert "notes.txt" in printed.err and "fake.jpg" in printed.err
    assert sorted(p.name for p in out.iterdir()) == [f"images-{n:06d}.tar" for n in range(3)]
    samples = {s["__key__"]: s for s in read_shards(out)}
    assert set(samples) == {"a", "a_2", "b_v2", "trip_2024__day1__c", "trip_2024__d"}
    assert samples["a"]["jpg"] == (photo_folder / "a.jpg").read_bytes()
    assert samples["a_2"]["png"] == (photo_folder / "a.png").read_bytes()
    assert samples["b_v2"]["jpg"] == (photo_folder / "b.v2.JPEG").read_bytes()
    assert "webp" in samples["trip_2024__day1__c"] and "tiff" in samples["trip_2024__d"]


def test_make_shards_from_a_list_file(
    tmp_path: Path, photo_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listing = photo_folder / "list.txt"
    listing.write_text("# chosen photos\ntrip.2024/d.tiff\n\na.png\n")
    out = tmp_path / "shards"
    assert exit_code(make_shards, str(listing), "--output", str(out)) == 0
    assert "wrote 2 images in 1 shards" in capsys.readouterr().out
    assert [s["__key__"] for s in read_shards(out)] == ["trip_2024__d", "a"]


def test_make_shards_with_no_images_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    assert exit_code(make_shards, str(tmp_path / "empty"), "--output", str(tmp_path / "out")) == 1
    assert "wrote 0 images" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def annotation(mask: np.ndarray, iou: float) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode()},
        "area": int(mask.sum()),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "predicted_iou": iou,
        "point_coords": [[3.5, 2.5]],
        "stability_score": 0.97,
        "crop_box": [0, 0, mask.shape[1], mask.shape[0]],
    }


@pytest.fixture
def masks() -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    return {
        "img0": [rng.random((9, 12)) > 0.5, rng.random((9, 12)) > 0.8],
        "img1": [rng.random((6, 4)) > 0.3],
        "img2": [],
    }


@pytest.fixture
def run_output(tmp_path: Path, masks: dict[str, list[np.ndarray]]) -> Path:
    """A run's output folder: two rank shards in the layout RleShardWriter writes."""
    out = tmp_path / "run"
    out.mkdir()
    shard_keys = {"masks-r000-000000.tar": ["img0", "img2"], "masks-r001-000000.tar": ["img1"]}
    for rank, (shard, keys) in enumerate(shard_keys.items()):
        index = 0  # of the mask in its shard, over all its images
        with wds.TarWriter(str(out / shard)) as writer:
            for position, key in enumerate(keys):
                height, width = masks[key][0].shape if masks[key] else (3, 3)
                image = {"key": key, "url": "in.tar", "height": height, "width": width}
                image["file_name"] = f"{key}.jpg"
                image["image_id"] = ids.image_id(rank, 0, position)
                records = []
                for i, m in enumerate(masks[key]):
                    records.append(
                        {"id": ids.annotation_id(rank, 0, index), **annotation(m, 0.5 + i / 10)}
                    )
                    index += 1
                writer.write({"__key__": key, "json": {"image": image, "annotations": records}})
    (out / "masks-r000-000001.tar.tmp").write_bytes(b"unfinished shards are not results")
    return out


def test_iter_results_reads_complete_shards_in_order(run_output: Path) -> None:
    assert [r["image"]["key"] for r in iter_results(run_output)] == ["img0", "img2", "img1"]


def test_export_coco_round_trip(
    tmp_path: Path, run_output: Path, masks: dict[str, list[np.ndarray]]
) -> None:
    coco_path = tmp_path / "coco.json"
    assert exit_code(export, str(run_output), "--coco", str(coco_path)) == 0
    coco = json.loads(coco_path.read_text())
    assert coco["categories"] == [{"id": 1, "name": "object"}]
    image_keys = {image["id"]: image["file_name"] for image in coco["images"]}
    assert sorted(image_keys.values()) == ["img0.jpg", "img1.jpg", "img2.jpg"]
    assert {i["file_name"]: (i["height"], i["width"]) for i in coco["images"]}["img1.jpg"] == (6, 4)
    exported: dict[str, list[np.ndarray]] = {f"{key}.jpg": [] for key in masks}
    for ann in coco["annotations"]:
        assert ann["category_id"] == 1 and ann["score"] == ann["predicted_iou"]
        exported[image_keys[ann["image_id"]]].append(mask_utils.decode(ann["segmentation"]))
    # The run's own ids, as in the shards, not a renumbering.
    shard_ids = {r["image"]["file_name"]: r["image"]["image_id"] for r in iter_results(run_output)}
    assert {key: image_id for image_id, key in image_keys.items()} == shard_ids
    records = [a for r in iter_results(run_output) for a in r["annotations"]]
    assert sorted(ann["id"] for ann in coco["annotations"]) == sorted(a["id"] for a in records)
    assert len({ann["id"] for ann in coco["annotations"]}) == 3
    for key, originals in masks.items():
        assert len(exported[f"{key}.jpg"]) == len(originals)
        for got, want in zip(exported[f"{key}.jpg"], originals, strict=True):
            np.testing.assert_array_equal(got, want)


def test_export_opens_in_pycocotools(tmp_path: Path, run_output: Path) -> None:
    """The dataset json loads as COCO and the results list through COCO.loadRes onto it."""
    dataset, scored = tmp_path / "coco.json", tmp_path / "results.json"
    argv = (str(run_output), "--coco", str(dataset), "--coco-results", str(scored))
    assert exit_code(export, *argv) == 0
    gt = COCO(str(dataset))
    results = gt.loadRes(str(scored))
    shard_images = {r["image"]["image_id"]: r["image"] for r in iter_results(run_output)}
    assert {i: gt.imgs[i]["file_name"] for i in gt.imgs} == {
        i: image["file_name"] for i, image in shard_images.items()
    }
    # loadRes numbers results 1, 2, ... in list order, so they pair with the dataset's in order.
    pairs = zip(results.dataset["annotations"], gt.dataset["annotations"], strict=True)
    assert len(gt.anns) == 3
    for got, want in pairs:
        assert got["image_id"] == want["image_id"] and got["score"] == want["score"]
        np.testing.assert_array_equal(results.annToMask(got), gt.annToMask(want))


def test_export_png_round_trip(
    tmp_path: Path, run_output: Path, masks: dict[str, list[np.ndarray]]
) -> None:
    png_dir = tmp_path / "png"
    assert exit_code(export, str(run_output), "--png", str(png_dir)) == 0
    assert sorted(p.name for p in png_dir.iterdir()) == ["img0", "img1", "img2"]
    for key, originals in masks.items():
        folder = png_dir / key
        rows = list(csv.DictReader((folder / "metadata.csv").open()))
        assert (folder / "metadata.csv").read_text().splitlines()[0] == METADATA_HEADER
        assert len(rows) == len(originals)
        for index, original in enumerate(originals):
            png = np.asarray(Image.open(folder / f"{index}.png"))
            assert set(np.unique(png)) <= {0, 255}
            np.testing.assert_array_equal(png == 255, original)
            assert int(rows[index]["area"]) == int(original.sum())
            assert float(rows[index]["predicted_iou"]) == pytest.approx(0.5 + index / 10)


def test_export_needs_an_output_and_shards(tmp_path: Path) -> None:
    assert exit_code(export, str(tmp_path)) == 2
    with pytest.raises(SystemExit, match="no complete"):
        export.main([str(tmp_path), "--coco", str(tmp_path / "c.json")])


def test_reader_api_reads_records_errors_and_masks(
    run_output: Path, masks: dict[str, list[np.ndarray]]
) -> None:
    error = {"key": "bad", "url": "in.tar", "error": "cannot identify image file"}
    (run_output / "errors-r000.jsonl").write_text(json.dumps(error) + "\n")
    records = list(amg_lightning.read_run(run_output))
    assert [r["image"]["key"] for r in records] == ["img0", "img2", "img1"]
    for record in records:
        got = [amg_lightning.decode_mask(a) for a in record["annotations"]]
        assert len(got) == len(masks[record["image"]["key"]])
        for mask, want in zip(got, masks[record["image"]["key"]], strict=True):
            np.testing.assert_array_equal(mask, want)
    assert list(amg_lightning.read_errors(run_output)) == [error]
