"""Hosts for the outbound policy tests: every internal spelling the issue tried, and public ones."""

from __future__ import annotations

# Every spelling the issue tried, and the IPv6 forms that carry an internal IPv4 address.
INTERNAL = [
    "169.254.169.254",
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "100.64.0.1",
    "100.127.255.254",
    "127.0.0.1",
    "127.8.9.10",
    "localhost",
    "LOCALHOST",
    "localhost.",
    "api.localhost",
    "::1",
    "0:0:0:0:0:0:0:1",
    "0.0.0.0",
    "0",
    "::",
    "2130706433",
    "0x7f000001",
    "0X7F.0.0.1",
    "127.1",
    "127.0.1",
    "0177.0.0.1",
    "0177.1",
    "127.0.0.1.",
    "0xa9.0xfe.0xa9.0xfe",
    "::ffff:127.0.0.1",
    "::ffff:7f00:1",
    "::ffff:169.254.169.254",
    "::ffff:0:7f00:1",  # IPv4-translated (SIIT): 127.0.0.1 behind a translator
    "::ffff:0:a9fe:a9fe",  # the same form of 169.254.169.254
    "::127.0.0.1",
    "64:ff9b::a9fe:a9fe",
    "64:ff9b::10.0.0.1",
    "2002:7f00:1::1",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "fe80::1%eth0",
    "ff02::1",
    "224.0.0.1",
    "239.255.255.250",
    "255.255.255.255",
    "240.0.0.1",
    "198.18.0.1",
    "192.0.0.8",
]
PUBLIC = ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8", "1.1.1.1"]


def url_of(host: str) -> str:
    return f"http://[{host}]/hook" if ":" in host else f"http://{host}/hook"
