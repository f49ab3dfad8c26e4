"""RleShardWriter's writing thread, driven batch by batch as Lightning drives it.

Real files throughout: a write that fails goes to /dev/full (the kernel's ENOSPC), a slow
disk is a named pipe that is read only when the test says so.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning
import pytest

from amg_lightning.data.tar_reader import tar_members
from amg_lightning.results.run_folder import shard_paths
from amg_lightning.results.shards import iter_results
from amg_lightning.run.ids import annotation_id, image_id
from amg_lightning.run.writer import PENDING_BATCHES, RleShardWriter
from tests.helpers.trainer import cpu_trainer

MODULE = lightning.LightningModule()


def annotation(index: int) -> dict[str, Any]:
    """A record in the module's COCO-RLE form (the writer does not look inside)."""
    return {
        "segmentation": {"size": [4, 5], "counts": f"{index}3"},
        "area": index,
        "bbox": [0.0, 0.0, 1.0, float(index)],
        "predicted_iou": 0.5,
    }


def result(key: str, masks: int = 2, error: str | None = None) -> dict[str, Any]:
    fields = {"key": key, "url": "in-000000.tar", "file_name": f"{key}.jpg"}
    if error is not None:
        return {**fields, "height": None, "width": None, "annotations": [], "error": error}
    annotations = [annotation(index) for index in range(masks)]
    return {**fields, "height": 4, "width": 5, "annotations": annotations, "error": None}


class Run:
    """A writer and a real (idle) Trainer, with the hooks Lightning calls during prediction."""

    def __init__(self, out: Path, shard_size: int) -> None:
        self.writer = RleShardWriter(str(out), shard_size=shard_size)
        self.trainer = cpu_trainer([])
        self.writer.on_predict_start(self.trainer, MODULE)

    def write(self, prediction: list[dict[str, Any]]) -> None:
        self.writer.write_on_batch_end(self.trainer, MODULE, prediction, None, None, 0, 0)

    def end(self) -> None:
        self.writer.on_predict_end(self.trainer, MODULE)

    def fail(self, exception: BaseException) -> None:
        self.writer.on_exception(self.trainer, MODULE, exception)


def test_records_and_ids_are_those_written_in_order(tmp_path: Path) -> None:
    """Many batches across shard boundaries, errors among them: each member's bytes are the
    record the ids of its place make, shard by shard, in the order the batches came."""
    batches = [
        [
            result(f"k{b}-{i}", masks=(b + i) % 4, error="bad" if (3 * b + i) % 5 == 0 else None)
            for i in range(3)
        ]
        for b in range(12)
    ]
    run = Run(tmp_path, shard_size=4)
    for prediction in batches:
        run.write(prediction)
    run.end()

    results = [r for prediction in batches for r in prediction]
    good = [r for r in results if r["error"] is None]
    shards = shard_paths(tmp_path)
    assert [p.name for p in shards] == [f"masks-r000-{n:06d}.tar" for n in range(len(shards))]
    assert len(shards) == -(-len(good) // 4)
    for number, path in enumerate(shards):
        with path.open("rb") as stream:
            members = [m.data for m in tar_members(stream) if m.name.endswith(".json")]
        expected, masks = [], 0
        for position, image in enumerate(good[number * 4 : number * 4 + 4]):
            fields = ("key", "url", "file_name", "height", "width")
            record = {name: image[name] for name in fields}
            record["image_id"] = image_id(0, number, position)
            annotations = [
                {"id": annotation_id(0, number, masks + index), **a}
                for index, a in enumerate(image["annotations"])
            ]
            masks += len(annotations)
            expected.append(json.dumps({"image": record, "annotations": annotations}).encode())
        assert members == expected
    lines = (tmp_path / "errors-r000.jsonl").read_text().splitlines()
    failed = [r for r in results if r["error"] is not None]
    assert lines == [json.dumps({"key": r["key"], "url": r["url"], "error": "bad"}) for r in failed]
    counts = json.loads((tmp_path / "counts-r000.json").read_text())
    masks = sum(len(r["annotations"]) for r in good)
    assert (counts["images"], counts["masks"], counts["errors"]) == (len(good), masks, len(lines))
    assert not list(tmp_path.glob("*.tmp"))


def full_second_shard(out: Path) -> Path:
    """The writer's second shard will be written to /dev/full: every flush fails, ENOSPC."""
    unfinished = out / "masks-r000-000001.tar.tmp"
    unfinished.symlink_to("/dev/full")
    return unfinished


def test_a_full_disk_is_raised_from_a_later_batch_and_nothing_more_is_written(
    tmp_path: Path,
) -> None:
    run = Run(tmp_path, shard_size=2)
    unfinished = full_second_shard(tmp_path)
    run.write([result("a0"), result("a1")])
    run.write([result("b0"), result("b1")])  # fills shard 1, which fails when it is closed
    deadline = time.monotonic() + 30
    with pytest.raises(OSError) as raised:
        while time.monotonic() < deadline:  # the thread fails meanwhile
            run.write([result("c0"), result("c1", error="bad")])
            time.sleep(0.01)
    assert raised.value.errno == errno.ENOSPC
    run.fail(raised.value)  # as Lightning does

    assert [p.name for p in shard_paths(tmp_path)] == ["masks-r000-000000.tar"]
    assert [r["image"]["key"] for r in iter_results(tmp_path)] == ["a0", "a1"]
    assert unfinished.is_symlink()  # never renamed: resume does b0 and b1 again
    assert not (tmp_path / "errors-r000.jsonl").exists()  # the batches after it: not written


def test_a_full_disk_in_the_last_batches_is_raised_at_the_end(tmp_path: Path) -> None:
    run = Run(tmp_path, shard_size=2)
    full_second_shard(tmp_path)
    with pytest.raises(OSError) as raised:
        run.write([result("a0"), result("a1")])
        run.write([result("b0"), result("b1")])
        run.end()
    assert raised.value.errno == errno.ENOSPC
    run.fail(raised.value)
    assert [r["image"]["key"] for r in iter_results(tmp_path)] == ["a0", "a1"]
    assert not (tmp_path / "counts-r000.json").exists()
    assert not (tmp_path / "summary.json").exists()


@pytest.fixture
def slow_run(tmp_path: Path) -> Iterator[tuple[Run, Path]]:
    """A run whose errors file is a named pipe: the writer waits until the test reads it.

    At the end the pipe is held open for reading, so that a write still waiting (a test that
    failed) goes on, and the writer is ended.
    """
    run = Run(tmp_path, shard_size=10)
    pipe = tmp_path / "errors-r000.jsonl"
    os.mkfifo(pipe)
    yield run, pipe
    reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)
    run.fail(RuntimeError("test over"))
    os.close(reader)


def read_lines(pipe: Path, count: int) -> list[str]:
    """`count` lines from the pipe, which the writer opens and closes once per error."""
    lines: list[str] = []
    while len(lines) < count:
        with pipe.open() as stream:
            lines += stream.read().splitlines()
    return lines


def wait_for(count: int, values: list[int]) -> None:
    """Until `values` holds `count`, then a second more, for any that would still come."""
    deadline = time.monotonic() + 30
    while len(values) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1)


def test_a_slow_disk_holds_the_batches_back_instead_of_queueing_them(
    tmp_path: Path, slow_run: tuple[Run, Path]
) -> None:
    run, pipe = slow_run
    handed_over: list[int] = []

    def produce() -> None:
        for number in range(12):
            run.write([result(f"e{number}", error="bad")])
            handed_over.append(number)

    producer = threading.Thread(target=produce, daemon=True)  # a failed test leaves it
    producer.start()
    wait_for(PENDING_BATCHES + 1, handed_over)
    # One batch is being written (the pipe is not read), PENDING_BATCHES wait.
    assert len(handed_over) == PENDING_BATCHES + 1
    lines = read_lines(pipe, 12)
    producer.join(timeout=30)
    assert handed_over == list(range(12))
    run.end()
    assert [json.loads(line)["key"] for line in lines] == [f"e{n}" for n in range(12)]
    assert json.loads((tmp_path / "counts-r000.json").read_text())["errors"] == 12


def test_an_exception_waits_for_the_batches_handed_over_then_closes_the_shard(
    tmp_path: Path, slow_run: tuple[Run, Path]
) -> None:
    run, pipe = slow_run
    run.write([result("e0", error="bad")])  # held up until the pipe is read
    run.write([result("a0"), result("a1")])
    run.write([result("b0")])
    reader = threading.Timer(0.5, read_lines, [pipe, 1])
    reader.start()
    run.fail(RuntimeError("stopped"))  # as after a failed batch, a KeyboardInterrupt
    reader.join()
    assert [p.name for p in shard_paths(tmp_path)] == ["masks-r000-000000.tar"]
    assert [r["image"]["key"] for r in iter_results(tmp_path)] == ["a0", "a1", "b0"]
    assert not list(tmp_path.glob("*.tmp"))


def test_a_run_that_never_ends_its_writer_does_not_hold_the_process_at_exit(
    tmp_path: Path,
) -> None:
    """The main thread ends without on_predict_end or on_exception (a bug, an exit of its
    own): the writing thread ends too, and the open shard stays unfinished."""
    script = f"""
from tests.helpers.trainer import cpu_trainer
from tests.test_writer_thread import MODULE, result
from amg_lightning.run.writer import RleShardWriter
writer = RleShardWriter({str(tmp_path)!r}, shard_size=10)
trainer = cpu_trainer([])
writer.on_predict_start(trainer, MODULE)
writer.write_on_batch_end(trainer, MODULE, [result("a0")], None, None, 0, 0)
"""
    root = Path(__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    finished = subprocess.run(
        [sys.executable, "-c", script], cwd=root, env=env, capture_output=True, timeout=60
    )
    assert finished.returncode == 0, finished.stderr.decode()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("masks")] == [
        "masks-r000-000000.tar.tmp"
    ]
