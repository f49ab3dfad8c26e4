"""Synthetic scenes with exact instance masks: a ground truth to measure mask generation against.

Each scene is a textured background with coloured ellipses, rectangles and polygons drawn one
over another; an instance's mask is what stays visible of its shape after later shapes cover it.
Scenes are seeded per index, so scene i is the same whatever the count.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

IMAGE_FORMATS = ("png", "jpg")


@dataclass(frozen=True)
class SceneSpec:
    """The size of the scenes and how many shapes they hold."""

    height: int = 256
    width: int = 256
    min_shapes: int = 3
    max_shapes: int = 8
    min_visible_area: int = 64

    def __post_init__(self) -> None:
        # The shape sizes are drawn from ranges that need this much room.
        if min(self.height, self.width) < 32:
            raise ValueError(f"scenes must be at least 32x32, got {self.height}x{self.width}")
        if not 0 <= self.min_shapes <= self.max_shapes:
            raise ValueError("need 0 <= min_shapes <= max_shapes")


@dataclass
class Scene:
    """An RGB uint8 image and one boolean mask per visible instance, bottom to top."""

    image: np.ndarray
    masks: list[np.ndarray]


def _background(rng: np.random.Generator, spec: SceneSpec) -> np.ndarray:
    """Smooth colour blobs with fine grain, so flat regions are not trivially uniform."""
    coarse = rng.integers(40, 216, size=(4, 4, 3), dtype=np.uint8)
    smooth = cv2.resize(coarse, (spec.width, spec.height), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0.0, 8.0, size=smooth.shape)
    return np.clip(smooth + grain, 0, 255).astype(np.uint8)


def _ellipse(rng: np.random.Generator, canvas: np.ndarray) -> None:
    height, width = canvas.shape
    center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
    axes = (int(rng.integers(6, width // 4)), int(rng.integers(6, height // 4)))
    cv2.ellipse(canvas, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, cv2.FILLED)


def _rectangle(rng: np.random.Generator, canvas: np.ndarray) -> None:
    height, width = canvas.shape
    center = (float(rng.uniform(0, width)), float(rng.uniform(0, height)))
    size = (float(rng.uniform(12, width / 2)), float(rng.uniform(12, height / 2)))
    corners = cv2.boxPoints((center, size, float(rng.uniform(0, 90))))
    cv2.fillPoly(canvas, [np.round(corners).astype(np.int32)], 1)


def _polygon(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """A star-shaped polygon: vertices at sorted angles keep its outline from crossing itself."""
    height, width = canvas.shape
    center = np.array([rng.uniform(0, width), rng.uniform(0, height)])
    count = int(rng.integers(3, 9))
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=count))
    radii = rng.uniform(8, min(height, width) / 5, size=count)
    points = center + np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None]
    cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 1)


_SHAPES: tuple[Callable[[np.random.Generator, np.ndarray], None], ...] = (
    _ellipse,
    _rectangle,
    _polygon,
)


def _shape_mask(rng: np.random.Generator, spec: SceneSpec) -> np.ndarray:
    # Drawn without anti-aliasing, so the mask is exactly the pixels that take the colour.
    canvas = np.zeros((spec.height, spec.width), dtype=np.uint8)
    _SHAPES[int(rng.integers(len(_SHAPES)))](rng, canvas)
    return canvas.astype(bool)


def _visible_masks(shapes: list[np.ndarray], spec: SceneSpec) -> list[np.ndarray]:
    """What each shape shows once every later shape is drawn over it."""
    covered = np.zeros((spec.height, spec.width), dtype=bool)
    visible = []
    for shape in reversed(shapes):
        visible.append(shape & ~covered)
        covered |= shape
    return visible[::-1]


def make_scene(rng: np.random.Generator, spec: SceneSpec) -> Scene:
    """One scene; shapes left with less than `min_visible_area` pixels are not drawn at all."""
    count = int(rng.integers(spec.min_shapes, spec.max_shapes + 1))
    shapes = [_shape_mask(rng, spec) for _ in range(count)]
    colours = [rng.integers(0, 256, size=3, dtype=np.uint8) for _ in range(count)]
    # Dropping a shape only uncovers the others, so one pass leaves every kept one large enough.
    visible = _visible_masks(shapes, spec)
    keep = [i for i, mask in enumerate(visible) if mask.sum() >= spec.min_visible_area]
    shapes = [shapes[i] for i in keep]
    image = _background(rng, spec)
    for i, shape in zip(keep, shapes, strict=True):
        image[shape] = colours[i]
    return Scene(image=image, masks=_visible_masks(shapes, spec))


def scene_key(index: int) -> str:
    """The WebDataset key of scene `index`: no dots, since WebDataset splits names at them."""
    return f"synthetic_{index:06d}"


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of scene `index`: independent of how many scenes come before it."""
    return np.random.default_rng([seed, index])


def encode_image(image: np.ndarray, image_format: str) -> bytes:
    """PNG or JPEG bytes of an RGB image."""
    ok, buffer = cv2.imencode(f".{image_format}", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"could not encode an image as {image_format}")
    return buffer.tobytes()


def coco_annotation(mask: np.ndarray, annotation_id: int, image_id: int) -> dict[str, Any]:
    """A COCO instance annotation holding `mask` as compressed RLE."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": 1,
        "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
        "area": int(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "iscrowd": 0,
    }


def add_png(tar: tarfile.TarFile, key: str, png: bytes) -> None:
    """Append one WebDataset sample `{"__key__": key, "png": png}` to an open shard."""
    # Fixed metadata (mtime 0), so the same seed gives byte-identical shards.
    info = tarfile.TarInfo(f"{key}.png")
    info.size = len(png)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(png))


@dataclass(frozen=True)
class SyntheticDataset:
    """Where a synthetic dataset was written."""

    images_dir: Path
    shards: list[Path]
    annotations: Path


def write_dataset(
    out_dir: str | Path,
    count: int,
    seed: int = 0,
    spec: SceneSpec | None = None,
    per_shard: int = 100,
    image_format: str = "png",
) -> SyntheticDataset:
    """`count` scenes as image files, WebDataset shards and a COCO instances json.

    The shards always hold PNG, the exact pixels the masks describe; `image_format` "jpg" is
    only for the loose image files. COCO `file_name`s are key + ".png".
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {', '.join(IMAGE_FORMATS)}")
    spec = spec or SceneSpec()
    out = Path(out_dir)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    coco: dict[str, list] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": 1, "name": "object"}],
    }
    shards_dir = out / "shards"
    shards_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    for first in range(0, count, per_shard):
        shards.append(shards_dir / f"images-{first // per_shard:06d}.tar")
        with tarfile.open(shards[-1], "w", format=tarfile.USTAR_FORMAT) as tar:
            for index in range(first, min(first + per_shard, count)):
                scene = make_scene(scene_rng(seed, index), spec)
                _write_scene(scene, scene_key(index), tar, images_dir, image_format)
                _add_to_coco(coco, index + 1, scene_key(index), scene)
    annotations = out / "annotations.json"
    annotations.write_text(json.dumps(coco))
    return SyntheticDataset(images_dir=images_dir, shards=shards, annotations=annotations)


def _write_scene(
    scene: Scene, key: str, tar: tarfile.TarFile, images_dir: Path, image_format: str
) -> None:
    png = encode_image(scene.image, "png")
    add_png(tar, key, png)
    loose = png if image_format == "png" else encode_image(scene.image, image_format)
    (images_dir / f"{key}.{image_format}").write_bytes(loose)


def _add_to_coco(coco: dict[str, list], image_id: int, key: str, scene: Scene) -> None:
    height, width = scene.image.shape[:2]
    coco["images"].append(
        {"id": image_id, "file_name": f"{key}.png", "height": height, "width": width}
    )
    for mask in scene.masks:
        coco["annotations"].append(coco_annotation(mask, len(coco["annotations"]) + 1, image_id))


EPILOG = """\
output layout:
  OUT_DIR/images/synthetic_000000.png   loose images (--image-format)
  OUT_DIR/shards/images-000000.tar      WebDataset shards, samples {"__key__", "png"}
  OUT_DIR/annotations.json              COCO instances, file_name = key + ".png"

measure a run against it:
  python predict.py data.urls=OUT_DIR/shards eval.gt=OUT_DIR/annotations.json
  or afterwards: amg-evaluate RUN_OUTPUT_DIR OUT_DIR/annotations.json

real ground truth instead (COCO val2017 or LVIS v1 val):
  amg-shards coco/val2017 --output shards/val2017
  python predict.py data.urls=shards/val2017 eval.gt=coco/annotations/instances_val2017.json
  LVIS v1 val draws on train2017 and val2017 photos: pack both (amg-shards coco ...) and
  pass eval.gt=lvis_v1_val.json. Images are matched by key or file name, folders and
  extension ignored (LVIS v1 has no file_name; its coco_url is used). Evaluation is class-
  agnostic: every instance counts, crowd regions are ignored, and ground-truth images left
  unpredicted count as misses. LVIS is not exhaustively labelled, so its AP reads low.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write a synthetic dataset with exact masks: images, shards, COCO json.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out_dir", help="folder to write into (created)")
    parser.add_argument("--count", type=int, default=100, help="number of scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--min-shapes", type=int, default=3)
    parser.add_argument("--max-shapes", type=int, default=8)
    parser.add_argument("--per-shard", type=int, default=100, help="samples per shard")
    parser.add_argument("--image-format", choices=IMAGE_FORMATS, default="png")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """`amg-synthetic`."""
    args = parse_args(argv)
    spec = SceneSpec(args.height, args.width, args.min_shapes, args.max_shapes)
    dataset = write_dataset(
        args.out_dir, args.count, args.seed, spec, args.per_shard, args.image_format
    )
    print(f"{args.count} scenes: {dataset.images_dir}, {len(dataset.shards)} shards,")
    print(f"ground truth {dataset.annotations}")
