"""Outbound HTTP that cannot be turned against Warden's own network (SSRF).

Every connection goes through a checked network backend (httpx's in `guarded_client`, httpx2's
in `guarded_async_transport` for the MCP SDK, both under public httpcore pools): it resolves the
host name itself, once, checks every address it got (`checked_address`), and connects to one of
those very addresses, so a name that resolves to a public address for the check and to
127.0.0.1 for the connection (DNS rebinding) gains nothing.
An address must be public (`is_global`: not loopback, private, link-local, cloud metadata,
carrier-grade NAT, multicast or reserved), unless an operator lists its network in
WARDEN_OUTBOUND_ALLOW_NETWORKS or the caller (an HTTP tool's allowlist) passes it. TLS still
verifies the certificate against the host name. Redirects are followed by hand, each hop a new
check; `fetch` cuts the body off at a size limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx
from django.conf import settings

if TYPE_CHECKING:
    import httpcore2
    import httpx2

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class OutboundError(Exception):
    """The URL may not or could not be fetched; the message is for the person who gave it."""


class AddressRefused(OutboundError):
    """The host is (or resolves to) a private or reserved address: refused, not unreachable."""


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
    with guarded_client(timeout=timeout) as client:
        for _hop in range(max_redirects + 1):
            check_url(url)
            with client.stream("GET", url, headers={"User-Agent": "Warden"}) as response:
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


def guarded_client(*, timeout: float, allow_networks: Iterable[str] = ()) -> httpx.Client:
    """An httpx client whose every connection is checked by `_CheckedBackend`. It does not
    follow redirects (callers check each hop's URL) and ignores proxy environment variables."""
    return httpx.Client(
        transport=_GuardedTransport(allow_networks),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
    )


class _GuardedTransport(httpx.BaseTransport):
    """httpx's transport API over a public httpcore pool whose connections `_CheckedBackend`
    makes: httpx.HTTPTransport takes no network backend (encode/httpx#3749, open)."""

    def __init__(self, allow_networks: Iterable[str]) -> None:
        self.pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            network_backend=_CheckedBackend(allow_networks),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with _errors_as(httpx, httpcore):
            answer = self.pool.handle_request(_core_request(httpcore, request))
        stream = _ResponseStream(answer.stream)
        return httpx.Response(
            answer.status, headers=answer.headers, stream=stream, extensions=answer.extensions
        )

    def close(self) -> None:
        self.pool.close()


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: Any) -> None:  # httpcore's Iterable[bytes] with close()
        self.stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _errors_as(httpx, httpcore):
            yield from self.stream

    def close(self) -> None:
        self.stream.close()


class _CheckedBackend(httpcore.SyncBackend):
    """Resolve once, check every address, connect to a checked address."""

    def __init__(self, allow_networks: Iterable[str]) -> None:
        self.allow = networks(allow_networks)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        address = checked_address(host, _resolve(host, port), self.allow)
        return super().connect_tcp(address, port, timeout, local_address, socket_options)


def guarded_async_transport(allow_networks: Iterable[str] = ()) -> httpx2.AsyncBaseTransport:
    """The same guard for httpx2's AsyncClient (which the MCP SDK takes): every connection
    resolved once, each address checked, connected to a checked address."""
    import httpcore2
    import httpx2

    allow = networks(allow_networks)

    class CheckedBackend(httpcore2.AnyIOBackend):
        async def connect_tcp(
            self,
            host: str,
            port: int,
            timeout: float | None = None,
            local_address: str | None = None,
            socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
        ) -> httpcore2.AsyncNetworkStream:
            loop = asyncio.get_running_loop()
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            address = checked_address(host, [str(info[4][0]) for info in infos], allow)
            return await super().connect_tcp(
                address, port, timeout, local_address, socket_options=socket_options
            )

    class ResponseStream(httpx2.AsyncByteStream):
        def __init__(self, stream: Any) -> None:  # httpcore2's AsyncIterable[bytes] with aclose
            self.stream = stream

        async def __aiter__(self) -> AsyncIterator[bytes]:
            with _errors_as(httpx2, httpcore2):
                async for part in self.stream:
                    yield part

        async def aclose(self) -> None:
            await self.stream.aclose()

    class GuardedTransport(httpx2.AsyncBaseTransport):
        def __init__(self) -> None:
            self.pool = httpcore2.AsyncConnectionPool(
                ssl_context=httpx2.create_ssl_context(trust_env=False),
                network_backend=CheckedBackend(),
            )

        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            with _errors_as(httpx2, httpcore2):
                answer = await self.pool.handle_async_request(_core_request(httpcore2, request))
            stream = ResponseStream(answer.stream)
            return httpx2.Response(
                answer.status, headers=answer.headers, stream=stream, extensions=answer.extensions
            )

        async def aclose(self) -> None:
            await self.pool.aclose()

    return GuardedTransport()


def _core_request(core: ModuleType, request: httpx.Request | httpx2.Request) -> Any:
    """An httpx(2) request as its httpcore(2) pool takes it (a `core.Request`)."""
    url = core.URL(
        scheme=request.url.raw_scheme,
        host=request.url.raw_host,
        port=request.url.port,
        target=request.url.raw_path,
    )
    return core.Request(
        method=request.method,
        url=url,
        headers=request.headers.raw,
        content=request.stream,
        extensions=request.extensions,
    )


@contextlib.contextmanager
def _errors_as(client: ModuleType, core: ModuleType) -> Iterator[None]:
    """An httpcore(2) error raised as the httpx(2) error of the same name (as httpx's own
    transport does): callers catch httpx.ConnectError, httpx.TimeoutException..."""
    try:
        yield
    except Exception as exc:
        for kind in type(exc).__mro__:
            if kind.__module__.split(".")[0] == core.__name__ and hasattr(client, kind.__name__):
                raise getattr(client, kind.__name__)(str(exc)) from exc
        raise


def checked_address(host: str, addresses: list[str], allow: Iterable[Network] = ()) -> str:
    """The address to connect to, once every address `host` resolved to has passed (a name
    with one private address among public ones is refused: which one a retry gets is the
    resolver's choice)."""
    for address in addresses:
        _check_address(address, host, allow)
    return addresses[0]


def networks(cidrs: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]


def check_url(url: str) -> None:
    """Refuse anything but an absolute http(s) URL (addresses are checked on connecting)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OutboundError(f"not an http(s) URL: {url[:200]}")


def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise OutboundError(f"{host} does not resolve") from None
    return [str(info[4][0]) for info in infos]  # the address, a str for AF_INET(6)


NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known prefix: the last 32 bits are IPv4
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


def _check_address(address: str, host: str, allow: Iterable[Network] = ()) -> None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if _public(ip) or any(ip in network for network in [*_allowed_networks(), *allow]):
        return
    raise AddressRefused(
        f"{host} is on a private or reserved network ({ip}); Warden does not fetch from there"
    )


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A global unicast address, and so is any IPv4 address it embeds (IPv4-mapped, 6to4,
    Teredo, NAT64). Explicit beyond `is_global`, which before Python 3.11.10 takes IPv6 to be
    global whenever it is not private."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo and ip.teredo[1])
        if ip in NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not _public(embedded):
            return False
        if ip in NAT64_LOCAL or ip.is_site_local or int(ip) >> 96 == 0:  # ::/96: IPv4-compatible
            return False
    return ip.is_global and not (
        ip.is_multicast
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_unspecified
    )


def _allowed_networks() -> list[Network]:
    return networks(getattr(settings, "WARDEN_OUTBOUND_ALLOW_NETWORKS", []))


def _host(url: str) -> str:
    return urlsplit(url).hostname or url[:100]


def _too_big(size: int, limit: int, *, at_least: bool = False) -> str:
    more = "more than " if at_least else ""
    return f"the document is {more}{size / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB"
