"""amg-bench run in-process on the tiny random model; never asserts timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from amg_lightning.bench import cli, generate
from amg_lightning.data.decode import IMAGE_EXTENSIONS

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


def test_rows_have_timings_parity_and_memory(tmp_path):
    out_json, out_md = tmp_path / "bench.jsonl", tmp_path / "bench.md"
    argv = ["generate", *TINY_SETTINGS, "--images", str(_test_image(tmp_path))]
    argv += ["--resize-long-side", "256", "--rounds", "1", "--fast"]
    returned = cli.run([*argv, "--stages", "--json", str(out_json), "--markdown", str(out_md)])

    rows = [json.loads(line) for line in out_json.read_text().splitlines()]
    assert rows == json.loads(json.dumps(returned))
    assert [r["mode"] for r in rows] == ["reference", "ours", "ours_fast"]
    for row in rows:
        assert row["kind"] == "generate" and row["baseline"] == "reference"
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
        assert row["cuda_max_allocated_mb"] is None  # CPU run
        hw = row["hardware"]
        assert hw["cpu"] and hw["cpu_count"] >= 1 and hw["torch_threads"] >= 1 and hw["torch"]
    reference, ours, fast = rows
    assert reference["masks_per_image"] >= 1, "no masks: parity would be vacuous"
    assert all(reference[name] is None for name in generate.PARITY_FIELDS)
    assert ours["exact_parity"] is True  # the exact mode gives the reference's records
    assert ours["mean_iou"] == 1.0 and ours["count_mismatch"] == 0.0
    assert 0.0 <= fast["mean_iou"] <= 1.0
    assert ours["per_image"][0]["n_reference"] == reference["per_image"][0]["n_masks"]
    stages = {"image_encoder", "transformer", "upscaler", "full_resolution", "nms_and_records"}
    assert reference["stage_seconds"] is None
    for row in (ours, fast):
        assert set(row["stage_seconds"]) == stages
        assert all(seconds > 0 for seconds in row["stage_seconds"].values())

    markdown = out_md.read_text().splitlines()
    assert markdown[0].startswith("| date |") and len(markdown) == 5  # header, rule, 3 rows
    cli.main([*argv, "--markdown", str(out_md)])
    markdown = out_md.read_text().splitlines()
    assert len(markdown) == 8 and sum(line.startswith("| date |") for line in markdown) == 1


def test_against_exact_matches_fast_mode_to_the_exact_mode(tmp_path):
    argv = ["generate", *TINY_SETTINGS, "--images", str(_test_image(tmp_path))]
    argv += ["--resize-long-side", "128", "--rounds", "1"]
    rows = cli.run([*argv, "--against", "exact", "--fast", "--tf32"])

    assert [r["mode"] for r in rows] == ["ours", "ours_fast", "ours_fast_tf32"]
    exact, fast, fast_tf32 = rows
    assert fast_tf32["precision"] == "bf16-upscaler, tf32"
    # TF32 is allowed only during that mode's calls, never left on for the others.
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert all(row["baseline"] == "ours" for row in rows)
    assert exact["masks_per_image"] >= 1, "no masks: parity would be vacuous"
    assert all(exact[name] is None for name in generate.PARITY_FIELDS)
    assert fast["per_image"][0]["n_reference"] == exact["per_image"][0]["n_masks"]
    assert 0.0 <= fast["mean_iou"] <= 1.0
    with pytest.raises(SystemExit):  # nothing to compare without fast mode
        cli.run([*argv, "--against", "exact"])
    with pytest.raises(SystemExit):  # --tf32 times fast mode
        cli.run([*argv, "--tf32"])


def test_pipeline_runs_the_console_script_and_reads_its_summary(tmp_path):
    import webdataset as wds

    rng = np.random.default_rng(0)
    shards = tmp_path / "shards"
    shards.mkdir()
    with wds.TarWriter(str(shards / "images-000000.tar")) as tar:
        for i in range(3):
            image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            tar.write({"__key__": f"img{i}", "png": cv2.imencode(".png", image)[1].tobytes()})
    out_json = tmp_path / "pipe.jsonl"
    argv = ["pipeline", str(shards), "--model-type", "tiny", "--device", "cpu"]
    cli.main([*argv, "--points-per-side", "4", "--rounds", "1", "--json", str(out_json)])

    (row,) = [json.loads(line) for line in out_json.read_text().splitlines()]
    assert row["kind"] == "pipeline" and row["mode"] == "ours"
    assert row["n_images"] == 3
    assert row["images_per_second"] > 0
    assert row["seconds_per_image"] == pytest.approx(1 / row["images_per_second"])


def test_help_names_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "generate" in out and "pipeline" in out
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--reference-rounds" in out and "--synthetic-size" in out and "--fast" in out


def test_scripts_benchmark_is_amg_bench():
    script = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
    done = subprocess.run(
        [sys.executable, str(script), "generate", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "--stages" in done.stdout and "--reference-rounds" in done.stdout


def _record(mask: np.ndarray, iou: float, stability: float, point=(1.0, 2.0)) -> dict:
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    ys, xs = np.nonzero(mask)
    return {
        "segmentation": rle,
        "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())],
        "area": int(mask.sum()),
        "predicted_iou": iou,
        "point_coords": [list(point)],
        "stability_score": stability,
        "crop_box": [0, 0, 20, 20],
    }


def test_exact_parity_allows_only_float_rounding():
    """Identical twins in order, up to ROUNDING_PIXELS pixels at a cutoff per mask (and their
    share of the stability score) and scores within SCORE_TOLERANCE."""
    from amg_lightning.bench.parity import ROUNDING_PIXELS, SCORE_TOLERANCE, exact_parity

    a, b = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    a[:10], b[10:] = True, True
    reference = [_record(a, 0.9, 0.95), _record(b, 0.8, 0.97)]
    within_tolerance = [_record(a, 0.9, 0.95), _record(b, 0.8 + SCORE_TOLERANCE / 2, 0.97)]
    assert exact_parity(reference, within_tolerance).ok
    # Every twin found, but not in the reference's order: not parity.
    swapped = exact_parity(reference, within_tolerance[::-1])
    assert not swapped.ok and swapped.n_twinned == 2
    moved_point = [_record(a, 0.9, 0.95), _record(b, 0.8, 0.97, point=(1.0, 3.0))]
    assert exact_parity(reference, moved_point).n_twinned == 1
    b_pixel = b.copy()
    b_pixel[0, 0] = True  # one pixel more: rounding at the threshold, not an identical twin
    found = exact_parity(reference, [_record(a, 0.9, 0.95), _record(b_pixel, 0.8, 0.97)])
    assert found.ok and found.n_twinned == 1
    b_pixels = b.copy()
    b_pixels[0, : ROUNDING_PIXELS + 1] = True  # more pixels than rounding moves
    found = exact_parity(reference, [_record(a, 0.9, 0.95), _record(b_pixels, 0.8, 0.97)])
    assert not found.ok and found.n_twinned == 1
    area = int(b.sum())  # each pixel at a stability cutoff moves the score by up to 1 / area
    one_pixel = [_record(a, 0.9, 0.95), _record(b, 0.8, 0.97 + 1 / area)]
    assert exact_parity(reference, one_pixel).ok
    beyond = [_record(a, 0.9, 0.95), _record(b, 0.8, 0.97 + (ROUNDING_PIXELS + 1) / area)]
    assert not exact_parity(reference, beyond).ok
    off_score = exact_parity(reference, [_record(a, 0.9 + 1e-4, 0.95), _record(b, 0.8, 0.97)])
    assert not off_score.ok and off_score.n_twinned == 2
    assert off_score.max_delta_predicted_iou == pytest.approx(1e-4)
    extra = exact_parity(reference, [*within_tolerance, _record(a | b, 0.5, 0.5)])
    assert not extra.ok and extra.n_twinned == 2


def test_fast_parity_matches_each_reference_mask_to_its_best():
    from amg_lightning.bench.parity import fast_parity

    a, b = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    a[:10], b[10:] = True, True
    reference = [_record(a, 0.9, 0.95), _record(b, 0.8, 0.97)]
    found = fast_parity(reference, [_record(b, 0.7, 0.9), _record(a, 0.91, 0.95)])
    assert found.mean_iou == pytest.approx(1.0) and found.count_mismatch == 0.0 and found.ok
    grown = a.copy()
    grown[10] = True  # 10 pixels more: IoU 100/110
    found = fast_parity(reference, [_record(grown, 0.9, 0.95), _record(b, 0.8, 0.97)])
    assert found.mean_iou == pytest.approx((100 / 110 + 1) / 2) and not found.ok
    found = fast_parity(reference, [*reference, _record(a | b, 0.5, 0.5)])
    assert found.count_mismatch == pytest.approx(0.5) and not found.ok
    assert fast_parity(reference, []).mean_iou == 0.0
    assert fast_parity([], []).ok


def test_sam2_rows_compare_with_sam2s_generator_on_sharpened_weights(tmp_path):
    pytest.importorskip("sam2")
    argv = ["generate", *TINY_SETTINGS, "--images", str(_test_image(tmp_path))]
    argv[argv.index("tiny")] = "tiny_sam2"
    rows = cli.run([*argv, "--resize-long-side", "128", "--rounds", "1", "--sharpen", "--use-m2m"])

    assert [r["mode"] for r in rows] == ["reference", "ours"]
    reference, ours = rows
    for row in rows:
        assert row["model_type"] == "tiny_sam2" and row["weights"] == "sharpened random"
        assert row["settings"]["use_m2m"] is True
    assert reference["masks_per_image"] >= 1, "no masks: parity would be vacuous"
    assert ours["exact_parity"] is True  # SAM2AutomaticMaskGenerator's records
    with pytest.raises(SystemExit):  # random weights only
        cli.run([*argv, "--sharpen", "--checkpoint", str(tmp_path / "x.pt")])
    with pytest.raises(SystemExit):  # not a SAM 1 setting
        cli.run(["generate", *TINY_SETTINGS, "--images", "x.jpg", "--use-m2m"])
