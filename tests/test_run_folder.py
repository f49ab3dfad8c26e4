"""The run folder's names: which files are a run's, and where damaged shards go."""

from __future__ import annotations

from pathlib import Path

from amg_lightning.results.run_folder import damaged_path, files_of_ours, shard_paths


def test_files_of_ours_are_every_kind_a_run_writes_and_nothing_else(tmp_path: Path) -> None:
    ours = [
        "masks-r000-000000.tar",
        "masks-r001-000002.tar.tmp",
        "masks-r000-000001.tar.damaged",
        "errors-r000.jsonl",
        "counts-r003.json",
        "summary.json",
        ".summary.json.4242.tmp",
        "run.json",
        "run.lock",
    ]
    for name in [*ours, "predict.log", "notes.txt"]:
        (tmp_path / name).write_text("")
    (tmp_path / ".hydra").mkdir()
    assert [p.name for p in files_of_ours(tmp_path)] == sorted(ours)
    assert files_of_ours(tmp_path / "missing") == []
    assert [p.name for p in shard_paths(tmp_path)] == ["masks-r000-000000.tar"]


def test_damaged_shards_never_overwrite_each_other(tmp_path: Path) -> None:
    shard = tmp_path / "masks-r000-000000.tar"
    assert damaged_path(shard).name == "masks-r000-000000.tar.damaged"
    (tmp_path / "masks-r000-000000.tar.damaged").write_text("first")
    assert damaged_path(shard).name == "masks-r000-000000.tar.damaged-2"
    (tmp_path / "masks-r000-000000.tar.damaged-2").write_text("second")
    assert damaged_path(shard).name == "masks-r000-000000.tar.damaged-3"
