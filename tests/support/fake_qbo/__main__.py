"""``python -m tests.support.fake_qbo --port 0 [--host 127.0.0.1] [--port-file PATH]
[--state FILE.json] [--allow-remote-admin]``: serve the fake until SIGTERM or SIGINT.

Prints ``fake-qbo listening on http://HOST:PORT`` once bound and writes the port to
``--port-file`` atomically (a temporary file renamed into place), so a parent never reads half
a number. ``--state`` loads companies at start and saves them at a clean exit (data, refresh
tokens and clocks; not access tokens, counters or switches: after a restart a client refreshes).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from .server import App, Server


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.fake_qbo", description="A fake QuickBooks Online API server."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path)
    parser.add_argument("--state", type=Path)
    parser.add_argument(
        "--allow-remote-admin",
        action="store_true",
        help="answer /_admin/ for non-loopback clients too (a demo container)",
    )
    args = parser.parse_args(argv)

    app = App(allow_remote_admin=args.allow_remote_admin)
    if args.state is not None and args.state.exists():
        app.load(json.loads(args.state.read_text()))
    server = Server((args.host, args.port), app)
    port = server.server_address[1]
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    thread = threading.Thread(target=server.serve_forever, name="fake-qbo", daemon=True)
    thread.start()
    if args.port_file is not None:
        _write_atomically(args.port_file, str(port))
    print(f"fake-qbo listening on http://{args.host}:{port}", flush=True)
    while not stop.wait(0.5):
        pass
    server.shutdown()
    server.server_close()
    if args.state is not None:
        _write_atomically(args.state, json.dumps(app.to_json()))
    print("fake-qbo stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
