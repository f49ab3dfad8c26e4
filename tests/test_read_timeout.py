"""A remote shard that stalls becomes one shard-level error record instead of a hang."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra.utils import instantiate

from amg_lightning.data.samples import read_shard
from amg_lightning.run.config import ConfigError, check_config
from tests.helpers.config import compose_config, forget_config
from tests.helpers.shards import png_bytes, write_tar


class _StallingServer(socketserver.ThreadingTCPServer):
    """Answers every request with `head` bytes of a response, then sends nothing more."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, head: bytes) -> None:
        self.head = head
        self.release = threading.Event()
        super().__init__(("127.0.0.1", 0), _StallingHandler)


class _StallingHandler(socketserver.BaseRequestHandler):
    server: _StallingServer

    def handle(self) -> None:
        self.request.recv(65536)
        self.request.sendall(self.server.head)
        self.server.release.wait(30)  # hold the connection open, silent


@pytest.fixture
def serve() -> Iterator[callable]:
    servers: list[_StallingServer] = []

    def start(head: bytes) -> str:
        server = _StallingServer(head)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/shard.tar"

    yield start
    for server in servers:
        server.release.set()
        server.shutdown()
        server.server_close()


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
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:sent]
    url = serve(head)
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
