"""scripts/benchmark.py run in-process on the tiny random model; never asserts timings."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest

from amg_lightning.data.decode import IMAGE_EXTENSIONS

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
TINY_SETTINGS = [
    "--model-type",
    "tiny",
    "--device",
    "cpu",
    "--points-per-side",
    "4",
    "--pred-iou-thresh",
    "0",
    "--stability-score-thresh",
    "0",
]


@pytest.fixture(scope="module")
def benchmark() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _test_image(tmp_path: Path) -> Path:
    """One photo from AMG_TEST_IMAGES when set, else a generated image of smooth colour blobs."""
    folder = os.environ.get("AMG_TEST_IMAGES")
    if folder and Path(folder).is_dir():
        photos = sorted(
            p for p in Path(folder).iterdir() if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS
        )
        if photos:
            return photos[0]
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, size=(6, 8, 3), dtype=np.uint8)
    path = tmp_path / "blobs.png"
    cv2.imwrite(str(path), cv2.resize(small, (200, 150), interpolation=cv2.INTER_CUBIC))
    return path


def test_rows_have_timings_parity_and_memory(benchmark, tmp_path):
    out_json, out_md = tmp_path / "bench.jsonl", tmp_path / "bench.md"
    argv = [
        *TINY_SETTINGS,
        "--images",
        str(_test_image(tmp_path)),
        "--resize-long-side",
        "256",
        "--rounds",
        "1",
        "--json",
        str(out_json),
        "--markdown",
        str(out_md),
    ]
    returned = benchmark.main(argv)

    rows = [json.loads(line) for line in out_json.read_text().splitlines()]
    assert rows == json.loads(json.dumps(returned))
    assert [r["mode"] for r in rows] == ["reference", "ours"]
    for row in rows:
        assert row["kind"] == "generate"
        assert row["model_type"] == "tiny"
        assert row["n_images"] == 1 and row["calls"] == 1
        assert row["settings"] == {
            "points_per_side": 4,
            "pred_iou_thresh": 0.0,
            "stability_score_thresh": 0.0,
        }
        assert max(row["images"][0]["height"], row["images"][0]["width"]) <= 256
        for name in ("seconds_per_image", "images_per_second", "speedup_vs_reference"):
            assert isinstance(row[name], float) and row[name] > 0
        assert isinstance(row["peak_rss_mb"], float) and row["peak_rss_mb"] > 0
        assert isinstance(row["process_max_rss_mb"], float)
        assert row["cuda_max_allocated_mb"] is None  # CPU run
        hw = row["hardware"]
        assert hw["cpu"] and hw["cpu_count"] >= 1 and hw["torch_threads"] >= 1 and hw["torch"]
    reference, ours = rows
    assert reference["masks_per_image"] >= 1, "no masks: parity would be vacuous"
    assert all(reference[name] is None for name in benchmark.PARITY_FIELDS)
    for name in benchmark.PARITY_FIELDS:
        assert isinstance(ours[name], float), (name, ours[name])
    assert 0.0 <= ours["mean_iou"] <= 1.0
    assert ours["per_image"][0]["n_reference"] == reference["per_image"][0]["n_masks"]

    markdown = out_md.read_text().splitlines()
    assert markdown[0].startswith("| date |") and len(markdown) == 4  # header, rule, 2 rows
    benchmark.write_outputs(rows, benchmark.parse_args([*argv[:-2], "--markdown", str(out_md)]))
    markdown = out_md.read_text().splitlines()
    assert len(markdown) == 6 and sum(line.startswith("| date |") for line in markdown) == 1


def test_compare_matches_reference_masks_to_ours(benchmark):
    def record(mask: np.ndarray, iou: float, stability: float) -> dict:
        from pycocotools import mask as coco_mask

        rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"segmentation": rle, "predicted_iou": iou, "stability_score": stability}

    a, b = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    a[:10], b[10:] = True, True
    reference = [record(a, 0.9, 0.95), record(b, 0.8, 0.97)]
    ours = [record(b, 0.8, 0.96), record(a, 0.91, 0.95), record(a | b, 0.5, 0.5)]
    scores = benchmark.compare(reference, ours)
    assert scores["mean_iou"] == pytest.approx(1.0)
    assert scores["count_mismatch"] == pytest.approx(0.5)
    assert scores["max_delta_predicted_iou"] == pytest.approx(0.01)
    assert scores["max_delta_stability_score"] == pytest.approx(0.01)
    assert scores["unique_match_fraction"] == 1.0
    assert benchmark.compare(reference, [])["mean_iou"] == 0.0
    assert benchmark.compare([], [])["count_mismatch"] == 0.0


def test_pipeline_mode_runs_predict_and_reads_summary(benchmark, tmp_path):
    import webdataset as wds

    rng = np.random.default_rng(0)
    shards = tmp_path / "shards"
    shards.mkdir()
    with wds.TarWriter(str(shards / "images-000000.tar")) as tar:
        for i in range(3):
            image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            tar.write({"__key__": f"img{i}", "png": cv2.imencode(".png", image)[1].tobytes()})
    out_json = tmp_path / "pipe.jsonl"
    argv = ["--pipeline", str(shards), "--model-type", "tiny", "--device", "cpu"]
    argv += ["--points-per-side", "4", "--rounds", "1", "--json", str(out_json)]
    benchmark.main(argv)

    (row,) = [json.loads(line) for line in out_json.read_text().splitlines()]
    assert row["kind"] == "pipeline" and row["mode"] == "ours"
    assert row["n_images"] == 3
    assert row["images_per_second"] > 0
    assert row["seconds_per_image"] == pytest.approx(1 / row["images_per_second"])


def test_help(benchmark, capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--pipeline" in out and "--reference-rounds" in out and "--synthetic-size" in out
