"""A webhook receiver that trickles its answer: a slow receiver, as a real loopback server.

Each POST is read in full, then the answer goes out a byte at a time (``HTTP/1.1 200 OK``, then
one header byte every ``interval`` seconds) until the test releases the receiver or ``hold``
seconds have passed; only then does the response end. A read timeout never fires (a byte comes
every ``interval``), so a client that bounds each read but not the whole attempt stays held.
Tests and benches count the connections held at any moment and when each one started and ended
(``time.time()``, the machine's clock, which a local redis-server's ``TIME`` also reads).
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from dataclasses import dataclass, field

from tests.support.receiver import read_request


@dataclass
class Held:
    """One delivery the receiver took: when it arrived and when its answer ended (or broke)."""

    arrived: float
    ended: float | None = None


@dataclass
class TrickleReceiver:
    server: socketserver.ThreadingTCPServer
    interval: float
    hold: float
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    taken: list[Held] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def held(self) -> int:
        """Deliveries being answered right now."""
        with self.lock:
            return sum(1 for h in self.taken if h.ended is None)

    def ended(self) -> int:
        with self.lock:
            return sum(1 for h in self.taken if h.ended is not None)

    def release(self) -> None:
        """Finish every answer now (and answer later requests at once)."""
        self.released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


def _read_request(conn: socket.socket) -> bool:
    """Read one HTTP request (headers and a Content-Length body); False when it broke off."""
    data = read_request(conn)
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return len(body) >= length


def start_trickle_receiver(interval: float = 0.2, hold: float = 300.0) -> TrickleReceiver:
    holder: list[TrickleReceiver] = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            receiver = holder[0]
            conn: socket.socket = self.request
            if not _read_request(conn):
                return
            entry = Held(arrived=time.time())
            with receiver.lock:
                receiver.taken.append(entry)
            deadline = time.monotonic() + receiver.hold
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Trickle: ")
                while not receiver.released.is_set() and time.monotonic() < deadline:
                    conn.sendall(b"a")
                    receiver.released.wait(receiver.interval)
                conn.sendall(b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:  # the client gave up (its attempt was cut): the delivery ended
                pass
            finally:
                with receiver.lock:
                    entry.ended = time.time()

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Server(("127.0.0.1", 0), Handler)
    holder.append(TrickleReceiver(server, interval, hold))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return holder[0]
