"""Outbound HTTP that cannot be turned against Warden's own network (SSRF).

Every address a host name resolves to must be public (`is_global`: not loopback, private,
link-local, cloud metadata, carrier-grade NAT, multicast or reserved), unless an operator lists
its network in WARDEN_OUTBOUND_ALLOW_NETWORKS. The address the connection actually reached is
checked again before any byte of the body is read, so a name that resolves differently the
second time (DNS rebinding) gains nothing; redirects are followed by hand, each hop checked the
same way; the body is cut off at a size limit.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx
from django.conf import settings


class OutboundError(Exception):
    """The URL may not or could not be fetched; the message is for the person who gave it."""


@dataclass(frozen=True)
class Fetched:
    url: str  # after redirects
    content_type: str
    content: bytes


def fetch(url: str, *, max_bytes: int, timeout: float = 15, max_redirects: int = 3) -> Fetched:
    try:
        return _fetch(url, max_bytes=max_bytes, timeout=timeout, max_redirects=max_redirects)
    except httpx.HTTPError as exc:
        raise OutboundError(f"{_host(url)} could not be reached ({type(exc).__name__})") from exc


def _fetch(url: str, *, max_bytes: int, timeout: float, max_redirects: int) -> Fetched:
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for _hop in range(max_redirects + 1):
            _check_url(url)
            with client.stream("GET", url, headers={"User-Agent": "Warden"}) as response:
                peer = response.extensions["network_stream"].get_extra_info("server_addr")
                if peer:
                    _check_address(peer[0], urlsplit(url).hostname or "")
                if response.is_redirect:
                    url = urljoin(url, response.headers.get("location", ""))
                    continue
                if response.status_code >= 400:
                    raise OutboundError(f"{_host(url)} answered HTTP {response.status_code}")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise OutboundError(_too_big(int(declared), max_bytes))
                body = bytearray()
                for piece in response.iter_bytes():
                    body += piece
                    if len(body) > max_bytes:
                        raise OutboundError(_too_big(len(body), max_bytes, at_least=True))
                return Fetched(url, response.headers.get("content-type", ""), bytes(body))
    raise OutboundError(f"more than {max_redirects} redirects")


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OutboundError(f"not an http(s) URL: {url[:200]}")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise OutboundError(f"{parts.hostname} does not resolve") from None
    for info in infos:
        _check_address(info[4][0], parts.hostname)


def _check_address(address: str, host: str) -> None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip.is_global and not ip.is_multicast:
        return
    if any(ip in network for network in _allowed_networks()):
        return
    raise OutboundError(
        f"{host} is on a private or reserved network ({ip}); Warden does not fetch from there"
    )


def _allowed_networks():
    return [
        ipaddress.ip_network(cidr, strict=False)
        for cidr in getattr(settings, "WARDEN_OUTBOUND_ALLOW_NETWORKS", [])
    ]


def _host(url: str) -> str:
    return urlsplit(url).hostname or url[:100]


def _too_big(size: int, limit: int, *, at_least: bool = False) -> str:
    more = "more than " if at_least else ""
    return f"the document is {more}{size / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB"
