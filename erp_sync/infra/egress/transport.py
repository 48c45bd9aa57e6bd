"""The one way the workers speak HTTP to the outside: an httpx client that enforces the policy
on the address it connects to and bounds every attempt as a whole.

- **Where it connects.** The network backend resolves the URL's host itself and connects to
  each address in turn only if the policy allows it (``policy.Policy.address_refusal``; a host
  the allow list names is allowed); after the connect it checks the socket's peer address again
  and closes it if that is internal. So a webhook or ERP name that resolves inside, or rebinds
  between ``alert add`` and the delivery, is refused before a byte is sent.
- **How long.** ``attempt_seconds`` bounds one request from the connect to the last byte of the
  body: every connect, read and write gets at most the time that remains (httpx's own timeouts
  are per operation, so a receiver trickling a byte a second held an attempt for 25 s under a
  2 s timeout), and a watchdog shuts the socket down when the time is up, which also ends a
  read that TLS or h11 would otherwise keep feeding.
- **No redirects.** The client never follows one (a 3xx is the answer); it reads no proxy from
  the environment (the policy would check the proxy, not the target).
- **Invalid HTTP.** h11 refuses a garbage status line; httpcore lets it read a header block of
  up to 100 KB, and h11 has no limit on the number of header lines, so an answer with more than
  ``MAX_HEADERS`` lines, a line over ``MAX_HEADER_LINE`` bytes or a block over
  ``MAX_HEADER_BYTES`` is refused here. All of these are ``httpx.RemoteProtocolError``.
- **Logs.** httpx logs every request's URL at INFO; a filter masks what may be secret in it.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import ipaddress
import itertools
import logging
import os
import socket
import threading
import time
import typing
from collections.abc import Iterable, Iterator

import httpcore
import httpx

from config.urls import mask_webhook_url
from erp_sync.infra.egress.policy import Policy, parse_address, resolve

MAX_HEADERS = 100
MAX_HEADER_LINE = 16 * 1024  # bytes of one header line
MAX_HEADER_BYTES = 64 * 1024  # bytes of all header lines together
WRITE_CHUNK = 64 * 1024
HINT = "an operator may allow it in ERP_SYNC_OUTBOUND_ALLOW"

# The deadline (time.monotonic()) of the attempt this thread is running, if any.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "egress_deadline", default=None
)


class OutboundRefused(httpcore.ConnectError):
    """The policy refused the address a request would connect to (httpx: ``ConnectError``)."""


def _remaining(timeout: float | None, late: type[Exception], what: str) -> float | None:
    """``timeout`` cut to what the attempt has left; ``late`` is raised when nothing is left."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise late(f"the attempt ran out of time ({what})")
    return left if timeout is None else min(timeout, left)


class _Watchdog:
    """One thread per process that shuts sockets down at their deadline (cheap to arm: a heap
    push), so a single blocked read cannot outlive its attempt whatever layer is reading."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, socket.socket]] = []
        self._live: set[int] = set()
        self._ids = itertools.count()
        self._cond = threading.Condition()
        threading.Thread(target=self._run, name="egress-watchdog", daemon=True).start()

    def arm(self, deadline: float, sock: socket.socket) -> int:
        with self._cond:
            ident = next(self._ids)
            heapq.heappush(self._heap, (deadline, ident, sock))
            self._live.add(ident)
            self._cond.notify()
            return ident

    def disarm(self, ident: int) -> None:
        with self._cond:
            self._live.discard(ident)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][1] not in self._live:
                    heapq.heappop(self._heap)
                wait = self._heap[0][0] - time.monotonic() if self._heap else None
                if wait is None or wait > 0:
                    self._cond.wait(wait)
                    continue
                _, ident, sock = heapq.heappop(self._heap)
                self._live.discard(ident)
            with contextlib.suppress(OSError):  # already closed
                # the plain socket's shutdown, also for a TLS socket: SSLSocket.shutdown would
                # drop its SSL object under the thread still reading it
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


_watchdog: tuple[int, _Watchdog] | None = None
_watchdog_lock = threading.Lock()


def watchdog() -> _Watchdog:
    """This process's watchdog (a forked child starts its own: threads do not cross a fork)."""
    global _watchdog
    with _watchdog_lock:
        if _watchdog is None or _watchdog[0] != os.getpid():
            _watchdog = (os.getpid(), _Watchdog())
        return _watchdog[1]


class BoundedStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the current attempt's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self.inner = inner

    def _guarded(
        self,
        call: typing.Callable[[float | None], typing.Any],
        timeout: float | None,
        late: type[Exception],
        what: str,
    ) -> typing.Any:
        bounded = _remaining(timeout, late, what)
        deadline = _DEADLINE.get()
        sock = self.inner.get_extra_info("socket")
        ident = watchdog().arm(deadline, sock) if deadline is not None and sock else None
        try:
            result = call(bounded)
        except (httpcore.NetworkError, httpcore.TimeoutException):
            _remaining(None, late, what)  # cut short by the deadline or the watchdog: say so
            raise
        else:
            if not result and result is not None:  # b"": the watchdog's shutdown, or a real EOF
                _remaining(None, late, what)
            return result
        finally:
            if ident is not None:
                watchdog().disarm(ident)
            if deadline is not None and time.monotonic() >= deadline:
                self.inner.close()

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data: bytes = self._guarded(
            lambda t: self.inner.read(max_bytes, t), timeout, httpcore.ReadTimeout, "reading"
        )
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        for start in range(0, len(buffer), WRITE_CHUNK):
            chunk = buffer[start : start + WRITE_CHUNK]
            self._guarded(
                lambda t, c=chunk: self.inner.write(c, t),  # type: ignore[misc]
                timeout,
                httpcore.WriteTimeout,
                "writing",
            )

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self,
        ssl_context: typing.Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        tls: httpcore.NetworkStream = self._guarded(
            lambda t: self.inner.start_tls(ssl_context, server_hostname, t),
            timeout,
            httpcore.ConnectTimeout,
            "the TLS handshake",
        )
        return BoundedStream(tls)

    def get_extra_info(self, info: str) -> typing.Any:
        return self.inner.get_extra_info(info)


class GuardedBackend(httpcore.NetworkBackend):
    """Connects only to addresses the policy allows, checked again on the connected peer."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        literal = parse_address(host)
        if literal is not None:
            addresses = [str(literal)]
        else:
            try:
                wait = _remaining(timeout, httpcore.ConnectTimeout, "resolving the host")
                addresses = resolve(host, port, wait or 30.0)
            except (OSError, TimeoutError) as exc:
                raise httpcore.ConnectError(f"cannot resolve {host[:100]!r}: {exc}") from None
        refused: list[str] = []
        failure: Exception | None = None
        for address in addresses:
            parsed = parse_address(address)
            why = self.policy.refusal(parsed, host) if parsed is not None else None
            if why is not None:
                # The address a name resolved to is not shown: the log would map internal names.
                shown = "is" if literal is not None else "resolves to"
                refused.append(f"{host[:100]} {shown} an internal address ({why})")
                continue
            try:
                bounded = _remaining(timeout, httpcore.ConnectTimeout, "connecting")
                stream = self.inner.connect_tcp(
                    address, port, bounded, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                failure = exc
                continue
            self._check_peer(stream, host)
            return BoundedStream(stream)
        if failure is not None:
            raise failure
        raise OutboundRefused(f"refused: {refused[0]}; {HINT}")

    def _check_peer(self, stream: httpcore.NetworkStream, host: str) -> None:
        """The address actually connected to, judged again (NAT, interception, a resolver
        that lied): closed before anything is sent when the policy refuses it."""
        peer = ipaddress.ip_address(stream.get_extra_info("socket").getpeername()[0].split("%")[0])
        why = self.policy.refusal(peer, host)
        if why is not None:
            stream.close()
            raise OutboundRefused(
                f"refused: {host[:100]} connected to {peer}, an internal address ({why}); {HINT}"
            )

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _BoundedBody(httpx.SyncByteStream):
    """A response body read under its attempt's deadline (httpx reads it after the transport
    returned, outside ``handle_request``)."""

    def __init__(self, inner: httpx.SyncByteStream, deadline: float) -> None:
        self.inner, self.deadline = inner, deadline

    def __iter__(self) -> Iterator[bytes]:
        parts = iter(self.inner)
        while True:
            token = _DEADLINE.set(self.deadline)
            try:
                part = next(parts, None)
            finally:
                _DEADLINE.reset(token)
            if part is None:
                return
            yield part

    def close(self) -> None:
        self.inner.close()


def _header_problem(raw: list[tuple[bytes, bytes]]) -> str | None:
    if len(raw) > MAX_HEADERS:
        return f"the answer has more than {MAX_HEADERS} header lines"
    sizes = [len(name) + len(value) + 4 for name, value in raw]
    if any(size > MAX_HEADER_LINE for size in sizes):
        return f"the answer has a header line over {MAX_HEADER_LINE // 1024} KB"
    if sum(sizes) > MAX_HEADER_BYTES:
        return f"the answer's headers are over {MAX_HEADER_BYTES // 1024} KB"
    return None


class BoundedTransport(httpx.HTTPTransport):
    """httpx's transport on the guarded backend, each request bounded by ``attempt_seconds``."""

    def __init__(
        self, policy: Policy, attempt_seconds: float, limits: httpx.Limits | None = None
    ) -> None:
        super().__init__(trust_env=False, limits=limits or httpx.Limits())
        limits = limits or httpx.Limits()
        self.attempt_seconds = attempt_seconds
        # httpx offers no way to choose the network backend: build its pool ourselves, with
        # the same arguments HTTPTransport.__init__ gives it.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        deadline = time.monotonic() + self.attempt_seconds
        token = _DEADLINE.set(deadline)
        try:
            response = super().handle_request(request)
        finally:
            _DEADLINE.reset(token)
        problem = _header_problem(response.headers.raw)
        if problem is not None:
            response.close()
            raise httpx.RemoteProtocolError(problem, request=request)
        assert isinstance(response.stream, httpx.SyncByteStream)
        response.stream = _BoundedBody(response.stream, deadline)
        return response


class _MaskUrls(logging.Filter):
    """httpx's INFO line names the URL: mask its password, path tokens and query values."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                mask_webhook_url(str(a)) if isinstance(a, httpx.URL) else a for a in record.args
            )
        return True


_MASK = _MaskUrls()


def mask_httpx_logs() -> None:
    """Install the URL mask on httpx's request logger (idempotent)."""
    logger = logging.getLogger("httpx")
    if _MASK not in logger.filters:
        logger.addFilter(_MASK)


def client(
    attempt_seconds: float,
    timeout: httpx.Timeout | float | None = None,
    *,
    policy: Policy | None = None,
    limits: httpx.Limits | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Client:
    """An httpx client for outbound requests: the policy (the process settings' when None) on
    every connected address, ``attempt_seconds`` per request as a whole, ``timeout`` per
    operation (default: the attempt's), no redirects followed, no proxy from the environment."""
    mask_httpx_logs()
    return httpx.Client(
        transport=BoundedTransport(policy or Policy.from_settings(), attempt_seconds, limits),
        timeout=timeout if timeout is not None else attempt_seconds,
        follow_redirects=False,
        trust_env=False,
        headers=headers,
    )
