"""`amg-export --coco FILE --images DIR`: a real run's input images copied out of its shards,
so the json and the folder open in COCO tools and in amg-visualize."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from amg_lightning.data.decode import decode_image
from amg_lightning.results import export, visualize
from tests.helpers.predict import run_predict
from tests.helpers.shards import jpeg_bytes, png_bytes, write_tar

FAST = ["model=tiny", "points_per_side=4", "pred_iou_thresh=0.0", "stability_score_thresh=0.0"]
TIMEOUT_S = 300


def turned_jpeg(height: int, width: int) -> bytes:
    """A JPEG stored `height` x `width` whose EXIF says to turn it a quarter to view it."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png_bytes(height, width, 7))).save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.e2e
def test_export_with_images_opens_in_pycocotools_and_amg_visualize(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    # By the file the export should write: the key made safe, ~2 for a key met again.
    originals = {
        ("a.tar", "x.png"): png_bytes(24, 32, 1),
        ("a.tar", "%2E%2E%2Fup%2Fy.jpg"): jpeg_bytes(30, 20, 2),
        ("a.tar", "turned.png"): turned_jpeg(20, 36),  # written upright, as PNG
        ("b.tar", "x~2.png"): png_bytes(40, 30, 3),
    }
    members = [("x.png", originals["a.tar", "x.png"]), ("x.json", b"{}")]
    members += [("../up/y.jpg", originals["a.tar", "%2E%2E%2Fup%2Fy.jpg"])]
    members += [("turned.jpg", originals["a.tar", "turned.png"])]
    write_tar(shards / "a.tar", members)
    write_tar(shards / "b.tar", [("x.png", originals["b.tar", "x~2.png"])])
    out = tmp_path / "run"
    finished = run_predict([*FAST, f"data.urls={shards}", f"output_dir={out}"], tmp_path, TIMEOUT_S)
    assert finished.returncode == 0, finished.stdout + finished.stderr

    dataset, scored, images = tmp_path / "masks.json", tmp_path / "results.json", tmp_path / "img"
    argv = [str(out), "--coco", str(dataset), "--coco-results", str(scored)]
    argv += ["--images", str(images)]
    assert export.main(argv) == 0
    assert "copied 4 images" in capsys.readouterr().out
    gt = COCO(str(dataset))
    results = gt.loadRes(str(scored))
    assert len(results.anns) == len(gt.anns) > 0
    file_names = {(Path(i["url"]).name, i["file_name"]): i for i in gt.imgs.values()}
    assert sorted(file_names) == sorted(originals)
    assert sorted(p.name for p in images.iterdir()) == sorted(name for _, name in file_names)
    for (shard, file_name), image in file_names.items():
        path = images / file_name
        with Image.open(path) as opened:  # as COCO tools open it: EXIF not applied
            assert (opened.height, opened.width) == (image["height"], image["width"])
        for annotation in gt.imgToAnns[image["id"]]:
            assert gt.annToMask(annotation).shape == (image["height"], image["width"])
        original = originals[shard, file_name]
        if file_name == "turned.png":  # stored upright, as it was segmented
            np.testing.assert_array_equal(decode_image(path.read_bytes()), decode_image(original))
            assert (image["height"], image["width"]) == (36, 20)
        else:
            assert path.read_bytes() == original

    pictures = tmp_path / "pictures"
    visualize.main([str(dataset), "--images", str(images), "--out", str(pictures)])
    drawn = sorted(np.asarray(Image.open(p)).shape[:2] for p in pictures.iterdir())
    assert drawn == sorted((i["height"], i["width"]) for i in gt.imgs.values())

    # An input shard gone: the json still lists every image; the missing ones are named.
    (shards / "b.tar").unlink()
    again = tmp_path / "again"
    argv = [str(out), "--coco", str(again / "masks.json"), "--images", str(again / "img")]
    with pytest.raises(SystemExit, match=r"error: 1 images not copied"):
        export.main(argv)
    assert f"not copied: 'x' in {shards / 'b.tar'}" in capsys.readouterr().err
    assert len(json.loads((again / "masks.json").read_text())["images"]) == 4
    assert len(list((again / "img").iterdir())) == 3


def test_images_needs_coco(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        export.main([str(tmp_path), "--png", str(tmp_path / "png"), "--images", str(tmp_path)])
    assert stopped.value.code == 2
    assert "--images goes with --coco" in capsys.readouterr().err
