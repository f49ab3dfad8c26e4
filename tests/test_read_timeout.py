"""A remote shard that stalls becomes one shard-level error record instead of a hang, and a stop
signal does not wait for it."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from hydra.utils import instantiate

from amg_lightning.data.datamodule import WebDatasetDataModule
from amg_lightning.data.samples import read_shard
from amg_lightning.run.config import ConfigError, check_config
from amg_lightning.run.stopping import StopOnSignal
from tests.helpers.config import compose_config, forget_config
from tests.helpers.http_shards import http_response, serving
from tests.helpers.shards import png_bytes, write_tar


@pytest.fixture
def serve() -> Iterator[Callable[[bytes], str]]:
    """Starts servers that answer with the bytes given and then stall; returns their urls."""
    with ExitStack() as servers:
        yield lambda head: servers.enter_context(serving(head)).url


def read_or_hang(url: str) -> list:
    """read_shard's samples with a 0.5 s read timeout; fails (not hangs) if the read never ends."""
    samples: list = []
    reader = threading.Thread(
        target=lambda: samples.extend(read_shard(url, read_timeout=0.5)), daemon=True
    )
    reader.start()
    reader.join(30)  # far above 0.5 s: only a read with no time limit gets here
    assert not reader.is_alive(), f"reading {url} hangs on a server that stopped sending"
    return samples


def test_server_that_never_answers_is_a_shard_error(serve) -> None:
    url = serve(b"")
    samples = read_or_hang(url)
    assert [(s.key, s.error) for s in samples] == [
        (url, f"shard {url} stalled: no data for 0.5 s before its first sample.")
    ]


def test_stall_mid_shard_keeps_complete_samples(serve, tmp_path: Path) -> None:
    tar = tmp_path / "shard.tar"
    members = write_tar(tar, [("a.png", png_bytes(seed=1)), ("b.png", png_bytes(seed=2))])
    body = tar.read_bytes()
    # Send every byte of both members but not the end-of-archive blocks: "a" is complete (the
    # next key has begun), "b" may still have more members, so the stall comes after "a".
    sent = members[1].offset_data + -(-members[1].size // 512) * 512  # with its padding
    url = serve(http_response(body, sent))
    samples = read_or_hang(url)
    assert [s.key for s in samples] == ["a", url]
    assert samples[0].error is None
    assert samples[1].error == f"shard {url} stalled: no data for 0.5 s after sample 'a'."


def test_data_read_timeout_reaches_the_dataloader_workers(serve, tmp_path: Path) -> None:
    url = serve(b"")
    overrides = ["data.read_timeout=0.5", "data.num_workers=1", f"output_dir={tmp_path}"]
    cfg = compose_config([f"data.urls={url}", *overrides])
    try:
        check_config(cfg)
        data = instantiate(cfg.data)
    finally:
        forget_config()
    batches = list(data.predict_dataloader())
    assert [(b["key"], b["error"]) for b in batches] == [
        ([url], [f"shard {url} stalled: no data for 0.5 s before its first sample."])
    ]


def test_read_timeout_must_be_positive(tmp_path: Path) -> None:
    cfg = compose_config(["data.urls=x.tar", "data.read_timeout=0", f"output_dir={tmp_path}"])
    try:
        with pytest.raises(ConfigError, match=r"^data.read_timeout must be a number > 0, got 0$"):
            check_config(cfg)
    finally:
        forget_config()


@pytest.mark.parametrize("workers", [0, 1])
def test_stop_signal_ends_a_wait_for_a_stalled_read(serve, workers: int) -> None:
    """SIGTERM to this process while its DataLoader waits on a server that never answers (in
    its own read, or for its worker's): the batches end at once, not after the read timeout."""
    url = serve(b"")
    data = WebDatasetDataModule(url, num_workers=workers, read_timeout=60)
    stopper = StopOnSignal()
    sigchld = signal.getsignal(signal.SIGCHLD)  # the stop replaces torch's to kill the workers
    stopper.install()
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    started = time.monotonic()
    try:
        batches = list(data.predict_dataloader())
    finally:
        stopper.restore()
        signal.signal(signal.SIGCHLD, sigchld)
    assert time.monotonic() - started < 10
    assert batches == [] and stopper.signum == signal.SIGTERM
    assert list(WebDatasetDataModule(url, read_timeout=0.5).predict_dataloader())  # stop forgotten
