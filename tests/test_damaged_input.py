"""Damaged input shards: every complete sample before the damage is read, then one error.

The shards are real tar files cut at chosen offsets, as a partial download leaves them: inside
a header, inside a member's data, exactly at a member boundary, without tar's end-of-archive
marker; and one with a corrupted header.
"""

from __future__ import annotations

import gzip
import json
import tarfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from amg_lightning.data.datamodule import ShardSamples, WebDatasetDataModule, collate_records
from amg_lightning.data.tar_reader import DamagedTar, tar_members
from amg_lightning.results.shards import iter_results
from tests.helpers.predict import run_predict
from tests.helpers.shards import png_bytes, read_jsonl, write_tar

KEYS = ["a", "b", "c"]
FAST = ["model=tiny", "points_per_side=4", "pred_iou_thresh=0.0", "stability_score_thresh=0.0"]


def sample_members(prefix: str = "") -> list[tuple[str, bytes]]:
    """Three samples of two members each: `a.json a.png b.json b.png c.json c.png`."""
    return [
        (f"{prefix}{key}.{extension}", data)
        for seed, key in enumerate(KEYS)
        for extension, data in (("json", b"{}"), ("png", png_bytes(seed=seed)))
    ]


def end_of_data(info: tarfile.TarInfo) -> int:
    return info.offset_data + -(-info.size // 512) * 512


# name: (where the shard is cut or broken, the samples read in full, the error's clause
# with {p} for the key prefix)
Damage = Callable[[bytes, list[tarfile.TarInfo]], bytes]
CASES: dict[str, tuple[Damage, list[str], str]] = {
    "inside a header": (
        lambda data, infos: data[: infos[4].offset + 100],
        ["a", "b"],
        "it ends inside the header of member 5",
    ),
    "inside the data of a sample's first member": (
        lambda data, infos: data[: infos[2].offset_data + 1],
        ["a"],
        "it ends inside the data of member 3 ({p}b.json)",
    ),
    "inside the data of a sample's second member": (
        lambda data, infos: data[: infos[3].offset_data + 10],
        ["a"],
        "it ends inside the data of member 4 ({p}b.png), so sample '{p}b' is incomplete",
    ),
    "at a member boundary": (
        lambda data, infos: data[: infos[4].offset],
        ["a", "b"],
        "it ends without tar's end-of-archive marker (two zero blocks)",
    ),
    "without the end-of-archive marker": (
        lambda data, infos: data[: end_of_data(infos[-1])],
        ["a", "b", "c"],
        "it ends without tar's end-of-archive marker (two zero blocks)",
    ),
    "after one zero block": (
        lambda data, infos: data[: end_of_data(infos[-1]) + 512],
        ["a", "b", "c"],
        "its end-of-archive marker has one zero block, not two",
    ),
    "with a second archive appended": (
        lambda data, infos: data + data,
        ["a", "b", "c"],
        "it holds data after its end-of-archive marker",
    ),
    "with a corrupted header": (
        lambda data, infos: data[: infos[4].offset] + b"x" * 100 + data[infos[4].offset + 100 :],
        ["a", "b"],
        "the header of member 5 is unreadable (bad checksum)",
    ),
}


def damaged_shard(path: Path, case: str, prefix: str = "") -> tuple[str, list[str], str]:
    """Write the shard of `case`; its url, the keys it holds in full, and the expected error."""
    infos = write_tar(path, sample_members(prefix))
    damage, complete, problem = CASES[case]
    path.write_bytes(damage(path.read_bytes(), infos))
    keys = [prefix + key for key in complete]
    error = f"shard {path} is damaged after sample '{keys[-1]}': {problem.format(p=prefix)}."
    return str(path), keys, error


@pytest.mark.parametrize("case", list(CASES))
def test_complete_samples_then_one_error(tmp_path: Path, case: str) -> None:
    url, complete, error = damaged_shard(tmp_path / "damaged.tar", case)
    intact = tmp_path / "intact.tar"
    write_tar(intact, sample_members("next-"))
    module = WebDatasetDataModule([url, str(intact)], batch_size=100)
    (batch,) = list(module.predict_dataloader())
    records = list(zip(batch["key"], batch["url"], batch["error"], strict=True))
    read = [key for key, _, err in records if err is None]
    assert read == [*complete, *(f"next-{key}" for key in KEYS)]
    assert [(key, u, err) for key, u, err in records if err is not None] == [(url, url, error)]


def test_intact_shard_reads_whole(tmp_path: Path) -> None:
    write_tar(tmp_path / "intact.tar", sample_members())
    module = WebDatasetDataModule(str(tmp_path / "intact.tar"), batch_size=100)
    (batch,) = list(module.predict_dataloader())
    assert batch["key"] == KEYS and batch["error"] == [None] * 3


def test_cut_gzip_shard_is_damaged(tmp_path: Path) -> None:
    write_tar(tmp_path / "plain.tar", sample_members())
    compressed = gzip.compress((tmp_path / "plain.tar").read_bytes())
    (tmp_path / "whole.tar.gz").write_bytes(compressed)
    with open(tmp_path / "whole.tar.gz", "rb") as stream:
        assert [member.name for member in tar_members(stream)][-1] == "c.png"
    (tmp_path / "cut.tar.gz").write_bytes(compressed[: len(compressed) // 2])
    with (
        open(tmp_path / "cut.tar.gz", "rb") as stream,
        pytest.raises(DamagedTar, match="compressed data is cut or corrupt"),
    ):
        list(tar_members(stream))


def test_readers_over_a_damaged_shard_record_each_sample_and_the_damage_once(
    tmp_path: Path,
) -> None:
    """Two ranks with two DataLoader workers each over one shard: split by sample."""
    url, complete, error = damaged_shard(tmp_path / "damaged.tar", "inside a header")
    outcomes: Counter[tuple[str, str | None]] = Counter()
    for rank in range(2):
        samples = ShardSamples([url], rank=rank, world_size=2, skip_keys=())
        loader = DataLoader(samples, batch_size=1, num_workers=2, collate_fn=collate_records)
        for batch in loader:
            outcomes.update(zip(batch["key"], batch["error"], strict=True))
    assert outcomes == Counter([*((key, None) for key in complete), (url, error)])


def test_missing_shard_is_one_error_in_words(tmp_path: Path) -> None:
    missing = tmp_path / "gone.tar"
    write_tar(missing, sample_members())
    module = WebDatasetDataModule(str(missing), batch_size=10)
    missing.unlink()  # deleted between listing and reading, as on a flaky file system
    (batch,) = list(module.predict_dataloader())
    assert batch["error"] == [
        f"shard {missing} could not be read before its first sample: No such file or directory."
    ]


@pytest.mark.e2e
def test_predict_reads_every_complete_sample_of_damaged_shards(tmp_path: Path) -> None:
    """One run over an intact shard and four cut ones: masks for every complete sample, one
    error record per damaged shard naming it and its last good key, exit 0, no traceback."""
    shards = tmp_path / "shards"
    shards.mkdir()
    write_tar(shards / "intact.tar", sample_members("intact-"))
    expected_keys = [f"intact-{key}" for key in KEYS]
    expected_errors = []
    cases = ["inside a header", "inside the data of a sample's second member"]
    cases += ["at a member boundary", "without the end-of-archive marker"]
    for number, case in enumerate(cases):
        url, keys, error = damaged_shard(shards / f"cut{number}.tar", case, prefix=f"cut{number}-")
        expected_keys += keys
        expected_errors.append({"key": url, "url": url, "error": error})
    out = tmp_path / "out"
    finished = run_predict([*FAST, f"data.urls={shards}", f"output_dir={out}"], tmp_path, 300)
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output
    assert "Traceback" not in output
    assert sorted(r["image"]["key"] for r in iter_results(out)) == sorted(expected_keys)
    errors = read_jsonl(out / "errors-r000.jsonl")
    assert sorted(errors, key=lambda e: e["url"]) == expected_errors
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["images"], summary["errors"]) == (len(expected_keys), len(cases))
