"""The HTTP surface: Intuit's token endpoint and the v3 query and CDC endpoints, plus /_admin/.

``ThreadingHTTPServer`` speaking HTTP/1.1 with keep-alive (a client's connection reuse is
exercised), one thread per connection. Every response carries a unique ``intuit_tid`` header.
Assumptions beyond those in the other modules:

- API requests must send ``Accept: application/json``: without it Intuit answers XML, which the
  fake does not speak, so it answers 406 (a client that forgets the header fails loudly here).
- ``minorversion`` is optional; if given it must be an integer (else a 400 Fault).
- The query may also come as ``POST .../query`` with the statement as an ``application/text``
  body (documented by Intuit).
- A request for a company the presented token does not belong to is 403 AuthorizationFailed
  (code 3100); an unknown, malformed or expired token is 401 AuthenticationFailed (code 3200).
- Order of checks on an API request: rate limit, concurrency limit (both count the request),
  latency, authentication, Accept, injected failures, then the operation.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import admin, faults, reads, timefmt
from .oauth import REFRESH_TOKEN_TTL, InvalidGrant
from .realm import Realm

JsonObject = dict[str, Any]
TOKEN_PATH = "/oauth2/v1/tokens/bearer"


class App:
    """Every fake company, by realm id."""

    def __init__(self, allow_remote_admin: bool = False) -> None:
        self.realms: dict[str, Realm] = {}
        self.lock = threading.Lock()
        self.allow_remote_admin = allow_remote_admin
        self.token_requests = 0

    def realm(self, realm_id: str) -> Realm | None:
        with self.lock:
            return self.realms.get(realm_id)

    def all_realms(self) -> list[Realm]:
        with self.lock:
            return list(self.realms.values())

    def to_json(self) -> JsonObject:
        return {"realms": [r.to_json() for r in self.all_realms()]}

    def load(self, data: JsonObject) -> None:
        with self.lock:
            for item in data.get("realms", []):
                realm = Realm.from_json(item)
                self.realms[realm.realm_id] = realm


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: App) -> None:
        super().__init__(address, Handler)
        self.app = app


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server
    # Set while an admitted API request runs: ends its place among the realm's in-flight
    # requests when its answer is sent (``send``).
    _release: Callable[[], None] | None = None

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a benchmark makes thousands of requests."""

    def do_GET(self) -> None:
        self.dispatch("GET")

    def do_POST(self) -> None:
        self.dispatch("POST")

    def do_PUT(self) -> None:
        self.dispatch("PUT")

    def do_DELETE(self) -> None:
        self.dispatch("DELETE")

    def dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        try:
            if parts[:1] == ["_admin"]:
                self.admin(method, parts[1:], body)
            elif url.path == TOKEN_PATH and method == "POST":
                self.token(body)
            elif (
                len(parts) == 4 and parts[:2] == ["v3", "company"] and parts[3] in ("query", "cdc")
            ):
                self.api(method, parts[2], parts[3], parse_qs(url.query), body)
            else:
                self.send_json(
                    404,
                    faults.fault(
                        "Unsupported Operation",
                        f"Operation {url.path} is not supported.",
                        "500",
                        "ValidationFault",
                        timefmt.iso_ms(time.time()),
                    ),
                )
        except Exception:
            traceback.print_exc(file=sys.stderr)
            self.send_json(500, faults.system_error(timefmt.iso_ms(time.time())))

    def send(
        self, status: int, payload: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        # An admitted API request stops counting as in flight before its answer leaves: a
        # client that sends its next request the moment it reads this one's answer must never
        # find it still counted (a false 429, and counters tests read too early).
        release, self._release = self._release, None
        if release is not None:
            release()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("intuit_tid", str(uuid.uuid4()))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def send_json(
        self, status: int, body: JsonObject, headers: dict[str, str] | None = None
    ) -> None:
        self.send(status, json.dumps(body).encode(), "application/json;charset=UTF-8", headers)

    # --- /_admin/ -------------------------------------------------------------------------
    def admin(self, method: str, parts: list[str], body: bytes) -> None:
        host = self.client_address[0]
        if not (self.server.app.allow_remote_admin or host.startswith("127.") or host == "::1"):
            self.send_json(403, {"error": "the admin API answers loopback clients only"})
            return
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            self.send_json(400, {"error": "the body is not JSON"})
            return
        status, answer = admin.handle(self.server.app, method, parts, data)
        self.send_json(status, answer)

    # --- Intuit's OAuth 2.0 token endpoint ------------------------------------------------
    def token(self, body: bytes) -> None:
        app = self.server.app
        with app.lock:
            app.token_requests += 1
        no_store = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        client = self.basic_auth()
        candidates = [
            r for r in app.all_realms() if client is not None and r.tokens.client_id == client[0]
        ]
        if (
            client is None
            or not candidates
            or any(r.tokens.client_secret != client[1] for r in candidates)
        ):
            self.send_json(
                401,
                faults.oauth_error("invalid_client"),
                {**no_store, "WWW-Authenticate": 'Basic realm="intuit"'},
            )
            return
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if "application/json" not in self.headers.get("Accept", ""):
            self.send_json(
                400,
                faults.oauth_error("invalid_request", "Accept must be application/json"),
                no_store,
            )
            return
        if ctype != "application/x-www-form-urlencoded":
            self.send_json(
                400,
                faults.oauth_error(
                    "invalid_request", "the body must be application/x-www-form-urlencoded"
                ),
                no_store,
            )
            return
        form = parse_qs(body.decode("utf-8", "replace"))
        grant = form.get("grant_type", [""])[0]
        if grant != "refresh_token":
            self.send_json(400, faults.oauth_error("unsupported_grant_type"), no_store)
            return
        presented = form.get("refresh_token", [""])[0]
        if not presented:
            self.send_json(
                400, faults.oauth_error("invalid_request", "refresh_token is missing"), no_store
            )
            return
        owner = next((r for r in candidates if r.tokens.refresh_token == presented), None) or next(
            (r for r in candidates if r.tokens.owns(presented)), None
        )
        if owner is None:
            self.send_json(400, faults.oauth_error("invalid_grant"), no_store)
            return
        owner.count("token_requests")
        try:
            access, refresh, ttl = owner.tokens.refresh(presented)
        except InvalidGrant:
            self.send_json(400, faults.oauth_error("invalid_grant"), no_store)
            return
        self.send_json(
            200,
            {
                "token_type": "bearer",
                "access_token": access,
                "expires_in": ttl,
                "refresh_token": refresh,
                "x_refresh_token_expires_in": REFRESH_TOKEN_TTL,
            },
            no_store,
        )

    def basic_auth(self) -> tuple[str, str] | None:
        scheme, _, value = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
            user, sep, password = decoded.partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return (user, password) if sep else None

    # --- the v3 API -----------------------------------------------------------------------
    def api(
        self, method: str, realm_id: str, op: str, params: dict[str, list[str]], body: bytes
    ) -> None:
        realm = self.server.app.realm(realm_id)
        if realm is None:
            status = 403 if self.token_owner() else 401
            self.send_json(
                status, faults.gateway_fault(status, "Token invalid", int(time.time() * 1000))
            )
            return
        realm.count("requests")
        refusal = realm.limits.admit()
        stamp = timefmt.iso_ms(realm.now())
        if refusal is not None:
            retry = {"Retry-After": str(refusal.retry_after)} if refusal.retry_after else {}
            self.send_json(429, faults.throttled(stamp), retry)
            return
        self._release = realm.limits.release
        try:
            if realm.latency_ms:
                time.sleep(realm.latency_ms / 1000)
            self.api_admitted(realm, method, op, params, body)
        finally:
            if self._release is not None:  # no answer was sent (the connection broke)
                self._release()
                self._release = None

    def token_owner(self) -> Realm | None:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return next(
            (r for r in self.server.app.all_realms() if r.tokens.check(token.strip()) is None), None
        )

    def api_admitted(
        self, realm: Realm, method: str, op: str, params: dict[str, list[str]], body: bytes
    ) -> None:
        epoch_ms = int(realm.now() * 1000)
        stamp = timefmt.iso_ms(realm.now())
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        problem = (
            "Malformed bearer token"
            if scheme.lower() != "bearer" or not token.strip()
            else realm.tokens.check(token.strip())
        )
        if problem is not None:
            owner = self.token_owner() if problem == "Token invalid" else None
            realm.count("forbidden" if owner else "unauthorized")
            status = 403 if owner else 401
            self.send_json(status, faults.gateway_fault(status, problem, epoch_ms))
            return
        if "application/json" not in self.headers.get("Accept", ""):
            realm.count("bad_requests")
            self.send_json(
                406,
                faults.fault(
                    "Not Acceptable",
                    "Send Accept: application/json (this fake does not speak XML)",
                    "406",
                    "ValidationFault",
                    stamp,
                ),
            )
            return
        minor = params.get("minorversion", [""])[0]
        if minor and not minor.isdigit():
            realm.count("bad_requests")
            self.send_json(
                400,
                faults.validation(
                    "Invalid minorversion", f"minorversion {minor} is not a number", stamp
                ),
            )
            return
        failure = realm.next_failure()
        try:
            if op == "query":
                realm.count("queries")
                text = params.get("query", [""])[0] if method == "GET" else body.decode()
                payload = reads.run_query(realm, text)
            elif method == "GET":
                realm.count("cdc")
                payload = reads.cdc(
                    realm, params.get("entities", [""])[0], params.get("changedSince", [""])[0]
                )
            else:
                raise faults.FaultError(
                    405, faults.validation("Unsupported Operation", "cdc takes GET", stamp)
                )
        except faults.FaultError as e:
            if failure is None:
                realm.count("bad_requests")
                self.send_json(e.status, e.body)
                return
            payload = json.dumps(e.body).encode()
        if failure is not None:
            self.fail(failure[0], failure[1], payload, stamp)
            return
        realm.count("ok")
        self.send(200, payload, "application/json;charset=UTF-8")

    def fail(self, mode: str, retry_after: int, payload: bytes, stamp: str) -> None:
        if mode == "500":
            self.send_json(500, faults.system_error(stamp))
        elif mode == "503":
            self.send(503, faults.UNAVAILABLE_HTML, "text/html")
        elif mode == "malformed":
            self.send(200, payload[: max(1, len(payload) // 2)], "application/json;charset=UTF-8")
        elif mode == "fault200":
            self.send_json(200, faults.system_error(stamp))
        else:
            self.send_json(429, faults.throttled(stamp), {"Retry-After": str(retry_after)})
