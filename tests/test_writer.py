"""RleShardWriter under a real Trainer: rotation, errors, summary, resume after interruption."""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from pycocotools import mask as mask_utils

from amg_lightning.data.datamodule import WebDatasetDataModule
from amg_lightning.results.run_folder import shard_paths
from amg_lightning.results.shards import iter_results
from amg_lightning.run.folder import completed_samples
from amg_lightning.run.module import AmgModule
from amg_lightning.run.stopping import StopOnSignal
from amg_lightning.run.writer import RleShardWriter
from tests.helpers.trainer import cpu_trainer


def coco_rle_record(mask: np.ndarray) -> dict[str, Any]:
    """One annotation in the module's COCO-RLE form, from a boolean mask."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode()},
        "area": int(mask.sum()),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "predicted_iou": 0.9,
        "point_coords": [[1.0, 2.0]],
        "stability_score": 0.95,
        "crop_box": [0, 0, mask.shape[1], mask.shape[0]],
    }


class ThresholdModule(lightning.LightningModule):
    """A real stand-in segmenter: two masks per image, bright and dark pixels.

    Raises on batch `fail_at_batch` to play an interrupted run.
    """

    def __init__(self, fail_at_batch: int | None = None) -> None:
        super().__init__()
        self.fail_at_batch = fail_at_batch

    def predict_step(self, batch: dict[str, list], batch_idx: int) -> list[dict[str, Any]]:
        if batch_idx == self.fail_at_batch:
            raise RuntimeError("interrupted")
        fields = zip(batch["key"], batch["url"], batch["image"], batch["error"], strict=True)
        results = [self._result(key, url, image, error) for key, url, image, error in fields]
        names = batch["file_name"]
        return [{**r, "file_name": name} for r, name in zip(results, names, strict=True)]

    @staticmethod
    def _result(key: str, url: str, image: Any, error: str | None) -> dict[str, Any]:
        if image is None:
            return {
                "key": key,
                "url": url,
                "height": None,
                "width": None,
                "annotations": [],
                "error": error,
            }
        bright = image.numpy()[:, :, 0] > 127
        annotations = [coco_rle_record(bright), coco_rle_record(~bright)]
        height, width = bright.shape
        return {
            "key": key,
            "url": url,
            "height": height,
            "width": width,
            "annotations": annotations,
            "error": None,
        }


def half_bright_png(height: int, width: int) -> bytes:
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[: height // 2] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def write_input_shard(path: Path, keys: list[str], corrupt: tuple[str, ...] = ()) -> str:
    with wds.TarWriter(str(path)) as writer:
        for index, key in enumerate(keys):
            data = b"broken" if key in corrupt else half_bright_png(6 + index, 8)
            writer.write({"__key__": key, "png": data})
    return str(path)


def predict(
    urls: str | list[str],
    writer: RleShardWriter,
    fail_at_batch: int | None = None,
    skip_keys: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset(),
) -> None:
    trainer = cpu_trainer([writer])
    data = WebDatasetDataModule(urls, batch_size=2, skip_keys=skip_keys)
    trainer.predict(ThresholdModule(fail_at_batch), datamodule=data, return_predictions=False)


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[str, list[str]]:
    keys = [f"img{i}" for i in range(7)]
    return write_input_shard(tmp_path / "in.tar", keys, corrupt=("img3",)), keys


def test_shards_rotate_and_hold_each_image(tmp_path: Path, inputs: tuple[str, list[str]]) -> None:
    url, keys = inputs
    out = tmp_path / "out"
    predict(url, RleShardWriter(str(out), shard_size=2, config={"model": "threshold"}))
    assert [p.name for p in shard_paths(out)] == [f"masks-r000-{n:06d}.tar" for n in range(3)]
    assert not list(out.glob("*.tmp"))
    results = list(iter_results(out))
    good_keys = [k for k in keys if k != "img3"]
    assert [r["image"]["key"] for r in results] == good_keys
    first = results[0]
    assert first["image"] == {
        "key": "img0",
        "url": url,
        "file_name": "img0.png",
        "height": 6,
        "width": 8,
        "image_id": 1,
    }
    bright = mask_utils.decode(first["annotations"][0]["segmentation"])
    np.testing.assert_array_equal(bright, np.repeat([[1], [1], [1], [0], [0], [0]], 8, axis=1))
    assert completed_samples(out, move_damaged=False) == {(url, key) for key in good_keys}


def test_errors_file_and_summary(tmp_path: Path, inputs: tuple[str, list[str]]) -> None:
    url, _ = inputs
    out = tmp_path / "out"
    predict(url, RleShardWriter(str(out), shard_size=4, config={"points_per_side": 4}))
    lines = (out / "errors-r000.jsonl").read_text().splitlines()
    (error,) = [json.loads(line) for line in lines]
    assert error["key"] == "img3" and error["url"] == url
    assert error["error"].startswith("cannot decode image")
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["images"], summary["masks"], summary["errors"]) == (6, 12, 1)
    assert summary["config"] == {"points_per_side": 4}
    assert summary["wall_seconds"] > 0
    assert summary["images_per_second"] == pytest.approx(6 / summary["wall_seconds"])
    assert summary["masks_per_second"] == pytest.approx(12 / summary["wall_seconds"])


def test_a_second_run_continues_numbering(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = write_input_shard(tmp_path / "a.tar", ["a0", "a1", "a2"])
    second = write_input_shard(tmp_path / "b.tar", ["b0", "b1"])
    predict(first, RleShardWriter(str(out), shard_size=2))
    predict(second, RleShardWriter(str(out), shard_size=2))
    assert [p.name for p in shard_paths(out)] == [f"masks-r000-{n:06d}.tar" for n in range(3)]
    assert [r["image"]["key"] for r in iter_results(shard_paths(out)[2])] == ["b0", "b1"]
    assert json.loads((out / "summary.json").read_text())["images"] == 2


def test_leftover_unfinished_shard_is_removed_and_redone(
    tmp_path: Path, inputs: tuple[str, list[str]]
) -> None:
    url, keys = inputs
    out = tmp_path / "out"
    out.mkdir()
    leftover = out / "masks-r000-000000.tar.tmp"
    with wds.TarWriter(str(leftover)) as killed:
        killed.write({"__key__": "img0", "json": {"image": {"key": "img0"}, "annotations": []}})
    assert completed_samples(out, move_damaged=False) == set()
    predict(url, RleShardWriter(str(out), shard_size=10))
    assert not leftover.exists()
    assert [p.name for p in shard_paths(out)] == ["masks-r000-000000.tar"]
    assert completed_samples(out, move_damaged=False) == {(url, k) for k in keys if k != "img3"}


def test_interrupted_run_keeps_finished_images_and_resume_does_the_rest(
    tmp_path: Path, inputs: tuple[str, list[str]]
) -> None:
    url, keys = inputs
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="interrupted"):
        predict(url, RleShardWriter(str(out), shard_size=10), fail_at_batch=2)
    done = completed_samples(out, move_damaged=False)
    # img3 failed to decode: an error, not a result.
    assert done == {(url, "img0"), (url, "img1"), (url, "img2")}
    assert not list(out.glob("*.tmp"))
    predict(url, RleShardWriter(str(out), shard_size=3), skip_keys=done)
    written = [r["image"]["key"] for r in iter_results(out)]
    assert sorted(written) == sorted(set(keys) - {"img3"})
    errors = (out / "errors-r000.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in errors] == ["img3"]  # retried, recorded once


def test_files_of_ranks_beyond_a_smaller_resumed_run_are_cleared(
    tmp_path: Path, inputs: tuple[str, list[str]]
) -> None:
    url, _ = inputs
    out = tmp_path / "out"
    out.mkdir()
    (out / "errors-r003.jsonl").write_text('{"key": "img3", "url": "", "error": "x"}\n')
    (out / "masks-r002-000000.tar.tmp").write_bytes(b"")
    predict(url, RleShardWriter(str(out), shard_size=10))
    assert sorted(p.name for p in out.iterdir() if "-r00" in p.name) == [
        "counts-r000.json",
        "errors-r000.jsonl",
        "masks-r000-000000.tar",
    ]


def encoded(pixels: np.ndarray, fmt: str, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, fmt)
    return buffer.getvalue()


def test_tiny_sam_end_to_end_writes_every_key_once(
    tmp_path: Path, random_image: np.ndarray
) -> None:
    gray = random_image[:, :, 1]
    rgba = np.dstack([random_image, np.full(gray.shape, 128, dtype=np.uint8)])
    with wds.TarWriter(str(tmp_path / "in-000000.tar")) as writer:
        writer.write({"__key__": "color", "png": encoded(random_image, "PNG", "RGB")})
        writer.write({"__key__": "gray", "jpg": encoded(gray, "JPEG", "L")})
        writer.write({"__key__": "corrupt", "jpg": b"\xff\xd8\xff truncated"})
    with wds.TarWriter(str(tmp_path / "in-000001.tar")):
        pass  # an empty shard
    with wds.TarWriter(str(tmp_path / "in-000002.tar")) as writer:
        writer.write({"__key__": "rgba", "png": encoded(rgba, "PNG", "RGBA")})
        writer.write({"__key__": "caption", "txt": b"no image in this sample"})
    out = tmp_path / "out"
    trainer = cpu_trainer([RleShardWriter(str(out), shard_size=2)])
    model = AmgModule(model_type="tiny", settings={"points_per_side": 4})
    data = WebDatasetDataModule(str(tmp_path / "in-{000000..000002}.tar"), batch_size=2)
    trainer.predict(model, datamodule=data, return_predictions=False)

    results = list(iter_results(out))
    errors = [json.loads(line) for line in (out / "errors-r000.jsonl").read_text().splitlines()]
    written = [r["image"]["key"] for r in results] + [e["key"] for e in errors]
    assert sorted(written) == ["caption", "color", "corrupt", "gray", "rgba"]
    assert {e["key"] for e in errors} == {"corrupt", "caption"}
    for result in results:
        assert (result["image"]["height"], result["image"]["width"]) == gray.shape
        for record in result["annotations"]:
            assert record["segmentation"]["size"] == list(gray.shape)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["images"], summary["errors"]) == (3, 2)
    assert summary["masks"] == sum(len(r["annotations"]) for r in results)


class SignalAtBatch(lightning.Callback):
    """Sends `signum` to this process when batch `at` starts, as a scheduler would."""

    def __init__(self, signum: int, at: int) -> None:
        self.signum = signum
        self.at = at

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == self.at:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR2])
def test_stop_signal_ends_prediction_at_a_batch_boundary(
    tmp_path: Path, inputs: tuple[str, list[str]], signum: int
) -> None:
    url, _ = inputs
    out = tmp_path / "out"
    stopper = StopOnSignal()
    writer = RleShardWriter(str(out), shard_size=10, interrupted=lambda: stopper.signum is not None)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)}
    stopper.install()  # as the entry point does, before Lightning adds its own handlers
    trainer = cpu_trainer([writer, stopper, SignalAtBatch(signum, at=1)])
    data = WebDatasetDataModule(url, batch_size=2)
    trainer.predict(ThresholdModule(), datamodule=data, return_predictions=False)
    stopper.restore()

    assert stopper.signum == signum
    # Batch 1 had started when the signal came: it is finished, and no batch after it.
    assert [r["image"]["key"] for r in iter_results(out)] == ["img0", "img1", "img2"]
    assert json.loads((out / "errors-r000.jsonl").read_text())["key"] == "img3"
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["images"], summary["errors"], summary["interrupted"]) == (3, 1, True)
    assert not list(out.glob("*.tmp"))
    assert {s: signal.getsignal(s) for s in before} == before
