"""Safe names from keys: never a path out of a folder, never one name for two keys."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest

from amg_lightning.results.names import MAX_NAME_LENGTH, UniqueNames, safe_name

HOSTILE_KEYS = [
    "../../../some/where/escaped",
    "/abs/x",
    "a/b",
    "a\\b",
    "..",
    ".",
    "",
    "~",
    "a b",
    "a%20b",
    "a_b",
    "a.b",
    "a%2Eb",
    "C:\\x",
    "line\nbreak\x00nul\x1bescape",
    "unicode é 猫",
    "undecodable \udcff",
    "x" * 1000,
    "x" * 999 + "y",
]


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_a_safe_name_stays_in_its_folder(tmp_path: Path, key: str) -> None:
    name = safe_name(key)
    assert 0 < len(name) <= MAX_NAME_LENGTH
    assert name not in (".", "..") and "/" not in name and "\\" not in name
    assert "." not in name and name.isascii() and name.isprintable()
    (tmp_path / name).mkdir()
    (tmp_path / name / "0.png").write_bytes(b"")
    assert [p.parent.parent for p in tmp_path.rglob("*.png")] == [tmp_path]


def test_no_two_keys_share_a_name() -> None:
    names = [safe_name(key) for key in HOSTILE_KEYS]
    assert len(set(names)) == len(HOSTILE_KEYS)


@pytest.mark.parametrize("key", [k for k in HOSTILE_KEYS if len(k) < 100 and k])
def test_a_name_decodes_back_to_its_key(key: str) -> None:
    assert unquote_to_bytes(safe_name(key)) == key.encode("utf-8", "surrogateescape")


def test_plain_keys_keep_their_names() -> None:
    assert safe_name("img_000123-b") == "img_000123-b"
    assert safe_name("photo.v2") == "photo%2Ev2"


def test_a_long_key_is_cut_with_a_hash() -> None:
    long_name = safe_name("x" * 1000)
    assert long_name.startswith("x" * 100) and long_name[-17] == "~"
    assert safe_name("%" * 200).startswith("%25") and "~" in safe_name("%" * 200)


def test_the_same_key_again_gets_a_numbered_name() -> None:
    names = UniqueNames()
    given = [names.name_for(key) for key in ["x", "y", "x", "X", "x", "x~2"]]
    assert given == ["x", "y", "x~2", "X~3", "x~4", "x%7E2"]
