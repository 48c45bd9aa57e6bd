"""Which addresses outbound requests (alert webhooks, ERP URLs) may reach.

A worker POSTs where a company admin told it to; without a policy that is a server-side request
forgery: loopback services, the private network, the cloud metadata endpoint. So an address is
*internal* when it is not a public unicast address: loopback, RFC 1918 private, carrier-grade NAT
(100.64/10), link-local (with 169.254.169.254), unspecified, documentation, benchmarking,
multicast, reserved and broadcast, IPv6 ``::1``, ``fc00::/7``, ``fe80::/10``, site-local and
multicast, and the IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64
``64:ff9b::/96``, 6to4 ``2002::/16``), judged by the IPv4 address they carry.

A host is read the way browsers, curl and ``inet_aton`` read it, so no spelling slips past:
``2130706433``, ``0x7f000001``, ``127.1``, ``0177.0.0.1``, a trailing dot, ``localhost`` and any
name under ``.localhost`` (RFC 6761). Other names are resolved and every address they resolve to
is checked; a name that does not resolve yet is let through here and is judged at connect time
(``transport``), where the address actually connected to is checked again, so a name that
resolves (or later rebinds) inside is refused too.

``ERP_SYNC_OUTBOUND_ALLOW`` (``Settings.outbound_allow``) lists the exceptions: hosts (matched by
name, exactly, without a trailing dot), addresses or CIDR ranges, comma separated; empty, the
default, allows no internal target at all.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from config.env import get_settings
from erp_sync.errors import ConfigError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

RESOLVE_SECONDS = 5.0

# Explicit, so the verdict does not depend on the Python version's idea of "global".
_INTERNAL_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network", with 0.0.0.0
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, with the cloud metadata endpoint
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, with 255.255.255.255
    )
)
_INTERNAL_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/128",
        "::1/128",
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard
        "2001::/23",  # IETF protocol assignments (Teredo, ORCHID, ...)
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
_HEX = re.compile(r"0[xX][0-9a-fA-F]*")
_OCTAL = re.compile(r"0[0-7]+")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_COMPAT = ipaddress.IPv6Network("::/96")  # IPv4-compatible (deprecated) ::a.b.c.d
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # IPv4-translated (SIIT) ::ffff:0:a.b.c.d


_LOOPBACK = (ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1"))


class Refused(ValueError):
    """An outbound target that the policy does not allow (the message says why, one line)."""


def _number(part: str) -> int | None:
    """One part of an IPv4 address as ``inet_aton`` reads it: 0x hex, leading-0 octal, decimal."""
    if _HEX.fullmatch(part):
        return int(part[2:] or "0", 16)
    if _OCTAL.fullmatch(part):
        return int(part, 8)
    return int(part) if _DECIMAL.fullmatch(part) else None


def parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """``host`` as an IPv4 address in any spelling browsers and ``inet_aton`` accept, else None.

    1-4 dot-separated numbers, each hex (``0x``), octal (leading ``0``) or decimal; the last one
    fills the remaining bytes (``127.1`` is 127.0.0.1, ``2130706433`` too).
    """
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()  # a trailing dot
    if not 1 <= len(parts) <= 4 or any(not p for p in parts):
        return None
    numbers = [_number(p) for p in parts]
    if any(n is None for n in numbers):
        return None
    values = [n for n in numbers if n is not None]
    if any(n > 255 for n in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        return None
    value = values[-1]
    for i, n in enumerate(values[:-1]):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def parse_address(host: str) -> Address | None:
    """``host`` (a URL's host, brackets removed) as an address, or None when it is a name."""
    text = host.strip()
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text.split("%", 1)[0])
        except ValueError:
            return None
    return parse_ipv4(text)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries (mapped, translated, compatible, NAT64, 6to4), if
    any: a translator (SIIT, 464XLAT on IPv6-only clusters) delivers such a form to the IPv4
    address inside, so it is judged by that address."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or address in _TRANSLATED or (address in _COMPAT and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def internal_reason(address: Address) -> str | None:
    """Why ``address`` is internal (``loopback``, ``private``...), or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            why = internal_reason(inner)
            return f"{why}, as {inner} inside IPv6" if why else None
        if any(address in n for n in _INTERNAL_V6) or not address.is_global:
            return _kind(address)
        return None
    if any(address in n for n in _INTERNAL_V4) or not address.is_global:
        return _kind(address)
    return None


def _kind(address: Address) -> str:
    if address.is_loopback:
        return "loopback"
    if address.is_unspecified:
        return "unspecified"
    if address.is_link_local:
        return "link-local" + (" (cloud metadata)" if str(address) == "169.254.169.254" else "")
    if address.is_multicast:
        return "multicast"
    if address in ipaddress.IPv4Network("100.64.0.0/10"):
        return "carrier-grade NAT"
    if address.is_private:
        return "private"
    return "reserved"


def normal_host(host: str) -> str:
    """A host name as compared: lower case, IDNA (so full-width spellings fold), no trailing dot."""
    name = host.strip().lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise Refused(f"{name[:100]!r} is not a valid host name") from None
    return name[:-1] if name.endswith(".") and len(name) > 1 else name


def is_localhost(name: str) -> bool:
    return name in ("localhost", "localhost.localdomain") or name.endswith(".localhost")


def resolve(host: str, port: int, timeout: float = RESOLVE_SECONDS) -> list[str]:
    """Every address ``host`` resolves to, within ``timeout`` seconds (getaddrinfo itself has
    no timeout, so it runs in a helper thread that is abandoned when it takes too long)."""
    found: list[list[str]] = []
    failed: list[OSError] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found.append(list(dict.fromkeys(str(i[4][0]) for i in infos)))
        except OSError as exc:  # socket.gaierror, and UnicodeError's cousins
            failed.append(exc)
        except UnicodeError as exc:
            failed.append(OSError(str(exc)))

    thread = threading.Thread(target=lookup, name="egress-resolve", daemon=True)
    thread.start()
    thread.join(timeout)
    if failed:
        raise failed[0]
    if not found:
        raise TimeoutError(f"resolving {host[:100]!r} took longer than {timeout:g}s")
    return found[0]


@dataclass(frozen=True)
class Policy:
    """The internal targets an operator allows (``ERP_SYNC_OUTBOUND_ALLOW``); none by default."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Policy:
        """``host, 10.0.0.5, 10.1.0.0/16, ::1`` -> a policy (``ConfigError`` on a bad entry)."""
        hosts: set[str] = set()
        networks: list[Network] = []
        for raw in (t.strip() for t in text.split(",")):
            if not raw:
                continue
            entry = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            address = parse_address(entry)
            if address is not None:
                networks.append(ipaddress.ip_network(address))
            elif "/" in entry or " " in entry or not entry:
                raise ConfigError(f"invalid ERP_SYNC_OUTBOUND_ALLOW entry {raw[:100]!r}")
            else:
                hosts.add(normal_host(entry))
        return cls(frozenset(hosts), tuple(networks))

    @classmethod
    def from_settings(cls) -> Policy:
        return cls.parse(get_settings().outbound_allow)

    def allows_host(self, host: str) -> bool:
        return normal_host(host) in self.hosts

    def allows_address(self, address: Address) -> bool:
        forms: list[Address] = [address]
        if isinstance(address, ipaddress.IPv6Address):
            inner = embedded_ipv4(address)
            if inner is not None:
                forms.append(inner)
        return any(a in n for a in forms for n in self.networks if a.version == n.version)

    def refusal(self, address: Address, host: str | None = None) -> str | None:
        """What makes connecting to ``address`` (for URL host ``host``) refused: its kind
        (``loopback``, ``private``...), or None when it is public or allowed."""
        why = internal_reason(address)
        if why is None or self.allows_address(address) or (host and self.allows_host(host)):
            return None
        return why

    def check_host(self, host: str, port: int, resolver: Resolver = resolve) -> None:
        """Refuse (``Refused``) a URL host that is, or resolves to, an internal address.

        A name the allow list names is allowed whatever it resolves to; a name that does not
        resolve now is left to the connect-time check.
        """
        name = normal_host(host)
        if self.allows_host(name):
            return
        address = parse_address(name)
        if address is not None:
            why = self.refusal(address)
            if why:
                raise Refused(f"{name} is an internal address ({why})")
            return
        if is_localhost(name):  # loopback by definition (RFC 6761), whatever DNS says
            if any(self.allows_address(a) for a in _LOOPBACK):
                return
            raise Refused(f"{name} is a loopback name")
        try:
            addresses = resolver(name, port)
        except (OSError, TimeoutError):
            return
        for text in addresses:
            parsed = parse_address(text)
            why = self.refusal(parsed) if parsed is not None else None
            if why:  # the address itself is not shown: the answer would map internal names
                raise Refused(f"{name} resolves to an internal address ({why})")
