"""A real HTTP webhook receiver for alert tests: ``http.server`` on a free port, in a thread.

It records every POST (headers and JSON body) and answers with the next status of ``statuses``
(then 200), so a test can make it fail on purpose. A fake of an outside service is a server.
"""

from __future__ import annotations

import json
import threading
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
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(Receiver(server))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return holder[0]
