"""Runs of `predict.py` to interrupt: many small images, a process to signal, folder polling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from amg_lightning.results.run_folder import shard_paths, unfinished_shard_paths
from amg_lightning.results.shards import iter_results, shard_samples
from tests.helpers.predict import PREDICT


class PredictProcess:
    """`python predict.py ARGS` in its own process group, its output in files."""

    def __init__(self, args: list[str], cwd: Path, name: str = "run") -> None:
        self.stdout_path = cwd / f"{name}.stdout"
        self.stderr_path = cwd / f"{name}.stderr"
        env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        env["OMP_NUM_THREADS"] = "1"
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            self.process = subprocess.Popen(
                [sys.executable, str(PREDICT), *args],
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    def signal_process(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def signal_group(self, signum: int) -> None:
        os.killpg(self.process.pid, signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(9)
            self.process.wait()
            raise

    @property
    def output(self) -> str:
        return self.stdout_path.read_text() + self.stderr_path.read_text()


def wait_until(condition: Callable[[], bool], timeout: float, process: PredictProcess) -> None:
    """Polls `condition` until it holds; fails if the process ends or time runs out first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.process.poll() is not None:
            raise AssertionError(f"predict.py ended first:\n{process.output}")
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout} s:\n{process.output}")
        time.sleep(0.05)


def written_keys(output_dir: Path) -> Counter:
    """How often each key is in the complete shards of `output_dir`."""
    return Counter(result["image"]["key"] for result in iter_results(output_dir))


def assert_only_complete_shards(output_dir: Path) -> None:
    for path in shard_paths(output_dir):
        shard_samples(path)  # raises for a shard that does not read back completely


def resume_and_check(args: list[str], cwd: Path, keys: list[str], timeout: float = 240) -> dict:
    """Resume the run of `args` to the end: exit 0 and every key exactly once; its summary."""
    resumed = PredictProcess([*args, "resume=true"], cwd, name="resume")
    assert resumed.wait(timeout) == 0, resumed.output
    output_dir = Path(next(a for a in args if a.startswith("output_dir="))[len("output_dir=") :])
    assert written_keys(output_dir) == Counter(keys)
    assert not unfinished_shard_paths(output_dir)
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["interrupted"] is False
    assert summary["images"] + summary["images_already_done"] == len(keys)
    return summary
