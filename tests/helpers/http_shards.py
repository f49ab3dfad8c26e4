"""A local http server for shard urls that answers, or accepts and then stays silent."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class StallingServer(socketserver.ThreadingTCPServer):
    """Answers every request with `head`; then, while `stalling`, holds the connection open
    and silent (up to 30 s), else closes it. `requested` is set when a request has come."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, head: bytes) -> None:
        self.head = head
        self.stalling = True
        self.requested = threading.Event()
        self.release = threading.Event()
        super().__init__(("127.0.0.1", 0), _StallingHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/shard.tar"

    def answer_with(self, body: bytes) -> None:
        """From now on, answer with all of `body`, as a working server does."""
        self.head = http_response(body)
        self.stalling = False


class _StallingHandler(socketserver.BaseRequestHandler):
    server: StallingServer

    def handle(self) -> None:
        self.request.recv(65536)
        self.server.requested.set()
        self.request.sendall(self.server.head)
        if self.server.stalling:
            self.server.release.wait(30)


def http_response(body: bytes, sent: int | None = None) -> bytes:
    """A 200 response announcing all of `body` and holding its first `sent` bytes (all)."""
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:sent]


@contextmanager
def serving(head: bytes) -> Iterator[StallingServer]:
    """A StallingServer running in a thread until the block ends."""
    server = StallingServer(head)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
