"""Real HTTP webhook receivers for alert tests, on loopback, in threads.

``start_receiver``: ``http.server`` on a free port. It records every POST (headers and JSON
body) and every connection, and answers with the next status of ``statuses`` (then 200), with
``location`` as the Location header of a 3xx, so a test can make it fail or redirect on purpose.

``start_raw``: a bare TCP server whose ``answer`` function writes whatever bytes it likes
(a garbage status line, too many headers, an answer trickled a byte at a time), recording the
requests it read and whether the client hung up before the answer was finished.
A fake of an outside service is a server.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    raw: bytes

    def header(self, name: str) -> str | None:
        """A request header, by name in any case (HTTP header names are case-insensitive)."""
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)

    @property
    def body(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.raw)
        return loaded


@dataclass
class Receiver:
    server: ThreadingHTTPServer
    statuses: list[int] = field(default_factory=list)
    got: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    location: str | None = None
    connections: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def events(self) -> list[str]:
        with self.lock:
            return [str(r.body["event"]) for r in self.got]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_receiver() -> Receiver:
    holder: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            receiver = holder[0]
            with receiver.lock:
                receiver.got.append(Received(self.path, dict(self.headers.items()), raw))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
            self.send_response(status)
            if receiver.location is not None and 300 <= status < 400:
                self.send_header("Location", receiver.location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    class Server(ThreadingHTTPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            with holder[0].lock:
                holder[0].connections += 1
            return True

    server = Server(("127.0.0.1", 0), Handler)
    holder.append(Receiver(server))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return holder[0]


def read_request(conn: socket.socket) -> bytes:
    """One HTTP request (head and Content-Length body) from ``conn``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


@dataclass
class RawServer:
    """A TCP server on loopback answering each request with ``answer(conn)``."""

    sock: socket.socket
    answer: Callable[[socket.socket], None]
    requests: list[bytes] = field(default_factory=list)
    hung_up: list[bool] = field(default_factory=list)  # per connection: client left early
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            request = read_request(conn)
            with self.lock:
                self.requests.append(request)
            try:
                self.answer(conn)
                early = False
            except OSError:  # the client closed the connection before we were done
                early = True
            with self.lock:
                self.hung_up.append(early)

    def close(self) -> None:
        self.sock.close()


def start_raw(answer: Callable[[socket.socket], None]) -> RawServer:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = RawServer(sock, answer)
    threading.Thread(target=server.serve, daemon=True).start()
    return server


def trickle(seconds_per_byte: float, length: int) -> Callable[[socket.socket], None]:
    """An answer that sends its headers, then its ``length``-byte body a byte at a time."""

    def answer(conn: socket.socket) -> None:
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n".encode())
        for _ in range(length):
            time.sleep(seconds_per_byte)
            conn.sendall(b"x")

    return answer


def fixed(data: bytes) -> Callable[[socket.socket], None]:
    """An answer of exactly ``data``, then the connection closed."""

    def answer(conn: socket.socket) -> None:
        conn.sendall(data)

    return answer
