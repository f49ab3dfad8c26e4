"""Stopping `predict.py` with a signal, or killing it, and resuming: every key exactly once.

Real processes, signalled as schedulers do it: SIGTERM to the main process alone (`kill PID`,
and for DDP, where Lightning started rank 1) or to the whole process group (SLURM, Kubernetes,
`docker stop`), SIGINT to the group (Ctrl-C), and SIGKILL in the middle of a shard.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from amg_lightning.results.run_folder import shard_paths, unfinished_shard_paths
from tests.helpers.interrupts import (
    PredictProcess,
    assert_only_complete_shards,
    resume_and_check,
    wait_until,
    written_keys,
)
from tests.helpers.jpeg_shards import write_jpeg_shards

pytestmark = pytest.mark.e2e

# An 8x8 point grid on small images: about 25 images/s on one core, so a run of 100 images
# is still going when its first shard of 5 appears.
RUN = ["model=tiny", "points_per_side=8", "shard_size=5"]
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.num_workers=1"]
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("inputs") / "shards"
    return folder, write_jpeg_shards(folder, [25, 25, 25, 25])


def start(args: list[str], cwd: Path, name: str = "run") -> PredictProcess:
    return PredictProcess([*RUN, *args], cwd, name)


@pytest.mark.parametrize(
    ("signum", "to_group"),
    [
        pytest.param(signal.SIGTERM, False, id="sigterm-main-process"),
        pytest.param(signal.SIGTERM, True, id="sigterm-process-group"),
        pytest.param(signal.SIGINT, True, id="sigint-process-group"),
    ],
)
def test_signal_stops_cleanly_then_resume_does_the_rest(
    tmp_path: Path, inputs: tuple[Path, list[str]], signum: int, to_group: bool
) -> None:
    shards, keys = inputs
    out = tmp_path / "out"
    args = [f"data.urls={shards}", f"output_dir={out}", "data.num_workers=2"]
    run = start(args, tmp_path)
    wait_until(lambda: bool(shard_paths(out)), TIMEOUT_S, run)
    (run.signal_group if to_group else run.signal_process)(signum)

    assert run.wait(TIMEOUT_S) == 128 + signum, run.output
    assert "Traceback" not in run.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True
    done = summary["images"]
    assert 0 < done < len(keys)
    lines = [line for line in run.output.splitlines() if "interrupted after" in line]
    assert len(lines) == 1 and lines[0].endswith(
        f"interrupted after {done} images; rerun with resume=true"
    )
    assert_only_complete_shards(out)
    assert not unfinished_shard_paths(out) and not (out / "run.lock").exists()
    assert sum(written_keys(out).values()) == done

    resumed = resume_and_check([*RUN, *args], tmp_path, keys)
    assert resumed["images_already_done"] == done


@pytest.mark.parametrize("to_group", [False, True], ids=["main-process", "process-group"])
def test_ddp_sigterm_stops_both_ranks(tmp_path: Path, to_group: bool) -> None:
    """Lightning started rank 1: with the signal to the main process alone, rank 0 passes it
    on; sent to the group, each rank gets its own (and ignores rank 0's repeat).

    Each rank reads one shard of 150 images: when both have written their first 5, each has
    seconds of work left even on a loaded machine, so the signal finds both still running.
    """
    shards = tmp_path / "shards"
    keys = write_jpeg_shards(shards, [150, 150])
    out = tmp_path / "out"
    args = [*DDP, f"data.urls={shards}", f"output_dir={out}"]
    run = start(args, tmp_path)
    wait_until(lambda: len({p.name[:10] for p in shard_paths(out)}) == 2, TIMEOUT_S, run)
    (run.signal_group if to_group else run.signal_process)(signal.SIGTERM)

    assert run.wait(TIMEOUT_S) == 128 + signal.SIGTERM, run.output
    assert "Traceback" not in run.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and 0 < summary["images"] < len(keys)
    assert json.loads((out / "counts-r001.json").read_text())["interrupted"] is True
    assert_only_complete_shards(out)
    assert sum(written_keys(out).values()) == summary["images"]

    resume_and_check([*RUN, *args], tmp_path, keys)


def test_ddp_rank_that_finished_its_share_still_stops_the_others(tmp_path: Path) -> None:
    """Rank 0 reads the small shard and waits for rank 1 at the end; the signal to the main
    process still reaches rank 1 within seconds, not after its whole share."""
    keys = write_jpeg_shards(tmp_path / "shards", [2, 150])
    out = tmp_path / "out"
    args = [*DDP, f"data.urls={tmp_path / 'shards'}", f"output_dir={out}"]
    run = start(args, tmp_path)

    def rank_0_waits_and_rank_1_writes() -> bool:
        return (out / "counts-r000.json").exists() and bool(list(out.glob("masks-r001-*")))

    wait_until(rank_0_waits_and_rank_1_writes, TIMEOUT_S, run)
    run.signal_process(signal.SIGTERM)

    assert run.wait(TIMEOUT_S) == 128 + signal.SIGTERM, run.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["images"] < len(keys)
    assert json.loads((out / "counts-r000.json").read_text())["interrupted"] is False
    assert json.loads((out / "counts-r001.json").read_text())["interrupted"] is True
    resume_and_check([*RUN, *args], tmp_path, keys)


def test_kill_during_a_shard_write_leaves_only_complete_shards(
    tmp_path: Path, inputs: tuple[Path, list[str]]
) -> None:
    """SIGKILL cannot be handled: the shard being written stays a temporary, and the lock
    of the dead process does not block resume=true."""
    shards, keys = inputs
    out = tmp_path / "out"
    args = [f"data.urls={shards}", f"output_dir={out}", "data.num_workers=0", "shard_size=30"]
    run = start(args, tmp_path)
    wait_until(lambda: bool(shard_paths(out)) and bool(unfinished_shard_paths(out)), 120, run)
    run.signal_group(signal.SIGKILL)
    run.wait(TIMEOUT_S)

    assert unfinished_shard_paths(out)
    assert (out / "run.lock").exists()
    assert_only_complete_shards(out)
    resume_and_check([*RUN, *args], tmp_path, keys)
