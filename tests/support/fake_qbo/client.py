"""``FakeQbo``: the fake server as a subprocess of a test, with typed admin helpers.

    qbo = FakeQbo.start(tmp_path)
    qbo.create_realm("123", "cid", "secret", "rt-0", seed=Seed(vendors=50))
    resp = qbo.refresh("cid", "secret", "rt-0")       # -> HttpResponse, .json()["access_token"]
    page = qbo.get("/v3/company/123/query", token, query="select * from Vendor")
    qbo.stop()

HTTP is plain ``urllib.request`` (no dependency); every response is read whole and closed.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# What a test seeds a realm with: the server's own spec, so the two can never disagree.
from .seed import SeedSpec as Seed

__all__ = ["FakeQbo", "HttpResponse", "Seed", "request"]

ROOT = Path(__file__).resolve().parents[3]
JsonObject = dict[str, Any]


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


def request(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10.0,
) -> HttpResponse:
    """One HTTP request; an error status is a response, not an exception."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return HttpResponse(resp.status, dict(resp.headers.items()), resp.read())
    except urllib.error.HTTPError as e:
        with e:
            return HttpResponse(e.code, dict(e.headers.items()), e.read())


@dataclass
class FakeQbo:
    """A running fake server process (``start``) and its base ``url``."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    host: str = "127.0.0.1"
    _stopped: bool = field(default=False, repr=False)

    @classmethod
    def start(cls, tmp: Path, *, state: Path | None = None, timeout: float = 15.0) -> FakeQbo:
        """Spawn ``python -m tests.support.fake_qbo`` on a free port and wait until it answers."""
        tmp.mkdir(parents=True, exist_ok=True)
        port_file = tmp / "fake_qbo.port"
        port_file.unlink(missing_ok=True)
        log = tmp / "fake_qbo.log"
        args = [
            sys.executable,
            "-m",
            "tests.support.fake_qbo",
            "--port",
            "0",
            "--port-file",
            str(port_file),
        ]
        if state is not None:
            args += ["--state", str(state)]
        with log.open("ab") as fh:
            proc = subprocess.Popen(args, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"fake-qbo exited with {proc.returncode}: {log.read_text()}")
            if port_file.exists():
                qbo = cls(proc, int(port_file.read_text()), log)
                try:
                    if qbo.admin("GET", "/health", timeout=2).get("ok"):
                        return qbo
                except OSError:
                    pass
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        raise RuntimeError(f"fake-qbo did not answer within {timeout}s: {log.read_text()}")

    @property
    def url(self) -> str:
        """The API base: ``{url}/v3/company/{realm}/query``."""
        return f"http://{self.host}:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.url}/oauth2/v1/tokens/bearer"

    def stop(self) -> int:
        """SIGTERM and wait; the exit code (0 on a clean stop)."""
        if not self._stopped:
            self._stopped = True
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    # --- the admin API ---------------------------------------------------------------------
    def admin(
        self, method: str, path: str, body: JsonObject | None = None, timeout: float = 120.0
    ) -> JsonObject:
        """Call ``/_admin{path}``; an error status raises ``RuntimeError`` with the answer.

        The long default timeout is for seeding: 100k job-cost lines take a few seconds.
        """
        data = json.dumps(body).encode() if body is not None else None
        resp = request(
            method,
            f"{self.url}/_admin{path}",
            body=data,
            timeout=timeout,
            headers={"Content-Type": "application/json"},
        )
        answer: JsonObject = resp.json()
        if resp.status >= 400:
            raise RuntimeError(f"admin {method} {path}: {resp.status} {answer}")
        return answer

    def create_realm(
        self,
        realm_id: str,
        client_id: str,
        client_secret: str,
        refresh_token: str,
        *,
        access_token_ttl: float | None = None,
        seed: Seed | None = None,
    ) -> JsonObject:
        body: JsonObject = {
            "realm_id": realm_id,
            "client_id": client_id,
            "client_secret": client_secret,
            "refresh_token": refresh_token,
            "seed": (seed or Seed()).to_json(),
        }
        if access_token_ttl is not None:
            body["access_token_ttl"] = access_token_ttl
        return self.admin("POST", "/realms", body)

    def realm_info(self, realm_id: str) -> JsonObject:
        return self.admin("GET", f"/realms/{realm_id}")

    def change(
        self, realm_id: str, entity: str, ids: str | list[str], fields: JsonObject | None = None
    ) -> list[JsonObject]:
        body = {
            "entity": entity,
            "ids": [ids] if isinstance(ids, str) else ids,
            "fields": fields or {},
        }
        changed: list[JsonObject] = self.admin("POST", f"/realms/{realm_id}/change", body)[
            "changed"
        ]
        return changed

    def delete(self, realm_id: str, entity: str, ids: str | list[str]) -> list[str]:
        body = {"entity": entity, "ids": [ids] if isinstance(ids, str) else ids}
        deleted: list[str] = self.admin("POST", f"/realms/{realm_id}/delete", body)["deleted"]
        return deleted

    def create(self, realm_id: str, entity: str, fields: JsonObject) -> JsonObject:
        created: JsonObject = self.admin(
            "POST", f"/realms/{realm_id}/create", {"entity": entity, "fields": fields}
        )["created"]
        return created

    def switches(self, realm_id: str, **switches: Any) -> JsonObject:
        """``latency_ms``, ``fail_next={"count", "mode"}``, ``revoke_refresh_token``, ...
        (``realm``'s docstring)."""
        return self.admin("POST", f"/realms/{realm_id}/switches", switches)

    def fail_next(self, realm_id: str, mode: str, count: int = 1) -> JsonObject:
        return self.switches(realm_id, fail_next={"mode": mode, "count": count})

    def stats(self, realm_id: str) -> JsonObject:
        return self.admin("GET", f"/realms/{realm_id}/stats")

    def reset_stats(self, realm_id: str) -> JsonObject:
        return self.admin("POST", f"/realms/{realm_id}/stats/reset", {})

    def advance_clock(self, realm_id: str, seconds: float) -> str:
        now: str = self.admin("POST", f"/realms/{realm_id}/clock", {"advance_seconds": seconds})[
            "now"
        ]
        return now

    # --- Intuit's surface, for tests of the fake itself -----------------------------------
    def refresh(self, client_id: str, client_secret: str, refresh_token: str) -> HttpResponse:
        basic = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
        form = urllib.parse.urlencode(
            {"grant_type": "refresh_token", "refresh_token": refresh_token}
        ).encode()
        return request(
            "POST",
            self.token_url,
            body=form,
            headers={
                "Authorization": f"Basic {basic}",
                "Accept": "application/json",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )

    def get(self, path: str, token: str | None, **params: str) -> HttpResponse:
        """``GET {url}{path}?params`` as a connector would send it (Bearer, JSON)."""
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        query = urllib.parse.urlencode(params)
        return request("GET", f"{self.url}{path}" + (f"?{query}" if query else ""), headers=headers)
