"""Keys are data: how member names become keys, repeated keys, and hostile keys end to end.

A sample's identity is its shard url and key. Within one shard a repeated key is an error
record naming both places; across shards both samples are segmented and kept apart by
predict.py, amg-export and amg-visualize. Keys that look like paths never leave the folders
the user named.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import cv2
import pytest
from PIL import Image

from amg_lightning.data.datamodule import WebDatasetDataModule
from amg_lightning.data.samples import split_name
from amg_lightning.results import export, visualize
from amg_lightning.results.names import MAX_NAME_LENGTH, UniqueNames, safe_name
from amg_lightning.results.run_folder import shard_paths
from amg_lightning.results.shards import iter_results
from tests.helpers.predict import run_predict
from tests.helpers.shards import jpeg_bytes, png_bytes, read_jsonl, write_tar

FAST = ["model=tiny", "points_per_side=4", "pred_iou_thresh=0.0", "stability_score_thresh=0.0"]
TIMEOUT_S = 300


@pytest.mark.parametrize(
    ("name", "current_key", "expected"),
    [
        ("img1.jpg", None, ("img1", "jpg")),
        ("photo.v2.jpg", None, ("photo.v2", "jpg")),
        ("photo.v2.JPG", None, ("photo.v2", "jpg")),
        ("photo.v2.json", "photo.v2", ("photo.v2", "json")),
        ("x.meta.json", None, ("x", "meta.json")),
        ("x.seg.png", "x", ("x", "seg.png")),
        ("dir.d/x.jpg", None, ("dir.d/x", "jpg")),
        ("../../../some/where/escaped.jpg", None, ("../../../some/where/escaped", "jpg")),
        ("...png", None, ("..", "png")),
        ("noextension", None, ("noextension", "")),
    ],
)
def test_member_names_split_into_key_and_extension(
    name: str, current_key: str | None, expected: tuple[str, str]
) -> None:
    assert split_name(name, current_key) == expected


def read_records(tmp_path: Path, members: list[tuple[str, bytes]]) -> list[tuple]:
    """(key, error, image height) of every record one shard of `members` gives."""
    url = tmp_path / "in.tar"
    write_tar(url, members)
    module = WebDatasetDataModule(str(url), batch_size=100)
    (batch,) = list(module.predict_dataloader())
    heights = [None if image is None else image.shape[0] for image in batch["image"]]
    return list(zip(batch["key"], batch["error"], heights, strict=True))


def test_a_dotted_key_is_found_as_its_image(tmp_path: Path) -> None:
    members = [("photo.v2.jpg", jpeg_bytes(20)), ("photo.v2.json", b"{}")]
    members += [("photo.v3.jpg", jpeg_bytes(30)), ("x.json", b"{}"), ("x.seg.png", png_bytes(40))]
    assert read_records(tmp_path, members) == [
        ("photo.v2", None, 20),
        ("photo.v3", None, 30),
        ("x", None, 40),
    ]


def test_a_second_image_of_a_prefix_key_is_its_own_sample(tmp_path: Path) -> None:
    """`photo.1.jpg` after `photo.jpg` is another photo, not a sidecar of the first."""
    members = [("photo.jpg", jpeg_bytes(20)), ("photo.1.jpg", jpeg_bytes(30))]
    assert read_records(tmp_path, members) == [("photo", None, 20), ("photo.1", None, 30)]


def test_a_sample_without_an_image_lists_its_members(tmp_path: Path) -> None:
    members = [("cap.txt", b"words"), ("cap.json", b"{}"), ("cap.image", b"?")]
    ((key, error, _),) = read_records(tmp_path, members)
    assert key == "cap"
    assert error == (
        "sample has no image member (jpg, jpeg, png, webp, bmp, tif, tiff); "
        "its members are cap.txt, cap.json, cap.image."
    )


def test_repeats_in_one_shard_are_errors_naming_both_places(tmp_path: Path) -> None:
    members = [("x.png", png_bytes(10)), ("x.png", png_bytes(11)), ("y.png", png_bytes(12))]
    members += [("x.json", b"{}"), ("x.png", png_bytes(13)), ("z.png", png_bytes(14))]
    url = tmp_path / "in.tar"
    assert read_records(tmp_path, members) == [
        ("x", None, 10),
        ("x", f"key 'x' is repeated in shard {url}: at member 1 (x.png) and again at member "
         "2 (x.png); only the first is segmented.", None),
        ("y", None, 12),
        ("x", f"key 'x' is repeated in shard {url}: at member 1 (x.png) and again at members "
         "4-5 (x.json, x.png); only the first is segmented.", None),
        ("z", None, 14),
    ]  # fmt: skip


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


@pytest.mark.e2e
def test_repeated_keys_end_to_end(tmp_path: Path) -> None:
    """Repeats in one shard (adjacent and not) are errors; the same keys in another shard, with
    images of other sizes, are segmented, exported and drawn apart: nothing is overwritten."""
    shards = tmp_path / "shards"
    shards.mkdir()
    first = [("x.png", png_bytes(24, 32, 1)), ("x.png", png_bytes(24, 32, 2))]
    first += [("y.png", png_bytes(24, 32, 3)), ("x.png", png_bytes(24, 32, 4))]
    write_tar(shards / "a.tar", first)
    write_tar(shards / "b.tar", [("x.png", png_bytes(40, 30, 5)), ("y.png", png_bytes(30, 40, 6))])
    out = tmp_path / "out"
    finished = run_predict([*FAST, f"data.urls={shards}", f"output_dir={out}"], tmp_path, TIMEOUT_S)
    assert finished.returncode == 0, finished.stdout + finished.stderr

    sizes = {
        (Path(r["image"]["url"]).name, r["image"]["key"]): (
            r["image"]["height"],
            r["image"]["width"],
        )
        for r in iter_results(out)
    }
    assert sizes == {
        ("a.tar", "x"): (24, 32),
        ("a.tar", "y"): (24, 32),
        ("b.tar", "x"): (40, 30),
        ("b.tar", "y"): (30, 40),
    }
    errors = read_jsonl(out / "errors-r000.jsonl")
    assert [(Path(e["url"]).name, e["key"]) for e in errors] == [("a.tar", "x")] * 2
    assert all("is repeated in shard" in e["error"] for e in errors)

    png = tmp_path / "png"
    assert export.main([str(out), "--png", str(png)]) == 0
    folders = sorted(p.name for p in png.iterdir())
    assert folders == ["x", "x~2", "y", "y~2"]
    mask_sizes = {
        folder: Image.open(png / folder / "0.png").size[::-1] for folder in folders
    }  # the first mask of each: (height, width)
    assert sorted(mask_sizes.values()) == sorted(sizes.values())

    pictures = tmp_path / "pictures"
    visualize.main([str(out), "--out", str(pictures)])
    drawn = {p.stem: cv2.imread(str(p)).shape[:2] for p in pictures.iterdir()}
    assert drawn == mask_sizes  # each picture named as the export folder of its image


HOSTILE_KEYS = [
    "../../../some/where/escaped",
    "/abs/x",
    "a/b",
    "..",
    ".",
    "a b",
    "a%20b",
    "photo.v2",
    "line\nbreak",
    "k" * 300,
]


@pytest.mark.e2e
def test_hostile_keys_stay_inside_the_named_folders(tmp_path: Path) -> None:
    """Keys that look like paths: our shards' members, the PNG folders and the pictures are
    all named safely, inside the folders given, one per key; records keep the real keys."""
    # Everything is written in here; `../../../` from its subfolders would land in tmp_path.
    work = tmp_path / "one" / "two" / "work"
    (work / "shards").mkdir(parents=True)
    members = [(f"{key}.png", png_bytes(24, 32, seed)) for seed, key in enumerate(HOSTILE_KEYS)]
    write_tar(work / "shards" / "in.tar", members)
    out, png, pictures = work / "out", work / "png", work / "pictures"
    args = [*FAST, f"data.urls={work / 'shards'}", f"output_dir={out}", "hydra.run.dir=."]
    finished = run_predict(args, work, TIMEOUT_S)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert sorted(r["image"]["key"] for r in iter_results(out)) == sorted(HOSTILE_KEYS)

    (shard,) = shard_paths(out)
    with tarfile.open(shard) as tar:
        member_names = tar.getnames()
    assert sorted(member_names) == sorted(f"{safe_name(key)}.json" for key in HOSTILE_KEYS)
    for name in member_names:
        assert "/" not in name and not name.startswith(".") and len(name) <= MAX_NAME_LENGTH + 5

    assert export.main([str(out), "--png", str(png), "--coco", str(work / "coco.json")]) == 0
    visualize.main([str(out), "--out", str(pictures)])
    names = UniqueNames()
    expected = [names.name_for(key) for key in HOSTILE_KEYS]
    assert sorted(p.name for p in png.iterdir()) == sorted(expected)
    assert sorted(p.name for p in pictures.iterdir()) == sorted(f"{n}.jpg" for n in expected)
    coco = json.loads((work / "coco.json").read_text())
    # file_name is the input member's name (key.ext), as COCO importers open it; never a path
    # we write: the export names its own files by safe names.
    assert sorted(image["file_name"] for image in coco["images"]) == sorted(
        f"{key}.png" for key in HOSTILE_KEYS
    )

    assert [
        p.name for p in tmp_path.rglob("*") if p not in work.parents and work not in p.parents
    ] == ["work"]
    allowed = [work / "shards", out, png, pictures, work / "coco.json"]
    allowed += [work / ".hydra", work / "cli.log"]  # Hydra's, in its run dir
    for path in files_under(tmp_path):
        assert any(path == top or top in path.parents for top in allowed), path
    assert all(len(p.name) < 255 for p in files_under(tmp_path))


def test_visualize_reads_coco_file_names_only_inside_the_images_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    (images / "sub" / "in.png").write_bytes(png_bytes(12, 16))
    (tmp_path / "outside.png").write_bytes(png_bytes(12, 16))
    names = ["sub/in.png", "../outside.png", str(tmp_path / "outside.png")]
    coco = {
        "images": [{"id": i, "file_name": name} for i, name in enumerate(names)],
        "annotations": [],
    }
    (tmp_path / "masks.json").write_text(json.dumps(coco))
    pictures = tmp_path / "pictures"
    visualize.main([str(tmp_path / "masks.json"), "--images", str(images), "--out", str(pictures)])
    assert [p.name for p in pictures.iterdir()] == ["sub%2Fin.jpg"]
    skipped = capsys.readouterr().err.splitlines()
    assert skipped == [f"skipped {name!r}: it is outside {images}" for name in names[1:]]
