"""A real local webhook receiver: an HTTP server on a free port in a thread, recording every request."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


# (number of the request, from 1) -> (status, extra headers)
Answer = Callable[[int], tuple[int, dict[str, str]]]


def always(status: int, headers: dict[str, str] | None = None) -> Answer:
    return lambda _n: (status, dict(headers or {}))


@dataclass
class Receiver:
    answer: Answer
    requests: list[Received] = field(default_factory=list)
    hold: threading.Event | None = None  # set: the first request waits for it before answering
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def record(self, received: Received) -> int:
        with self._lock:
            self.requests.append(received)
            return len(self.requests)

    async def wait_for(self, count: int, timeout_s: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while len(self.requests) < count:
            assert time.monotonic() < deadline, f"{len(self.requests)} of {count} requests arrived"
            await asyncio.sleep(0.02)
        return list(self.requests)


@contextmanager
def receiver(answer: Answer | None = None, *, hold: threading.Event | None = None) -> Iterator[Receiver]:
    """Answers 204 unless ``answer`` says otherwise; with ``hold``, the first request waits for it."""
    state = Receiver(answer or always(204), hold=hold)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            number = state.record(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            if number == 1 and state.hold is not None:
                state.hold.wait(60)
            status, headers = state.answer(number)
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()
            except OSError:
                pass  # the sender gave up on this attempt

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        if state.hold is not None:
            state.hold.set()
        server.shutdown()
        server.server_close()
