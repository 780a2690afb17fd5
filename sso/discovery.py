"""The provider's configuration, from its issuer URL (OpenID Connect Discovery 1.0).

Fetched once and kept for an hour per issuer (a failure is not kept: the next sign-in tries
again). The issuer is the operator's configuration, not user input, and providers commonly live
on the company's own network, so this is plain `requests` (as mozilla-django-oidc's own calls
are) rather than tools.outbound, which refuses private addresses; instead every URL must be
https, except plain http on a loopback address when WARDEN_OIDC_ALLOW_HTTP_LOOPBACK says so.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from django.conf import settings

CACHE_SECONDS = 3600
MAX_BYTES = 1_000_000
_cache: dict[str, tuple[float, ProviderConfig]] = {}
_lock = threading.Lock()


class DiscoveryError(Exception):
    """The provider's configuration could not be had or is not usable; the message says why."""


@dataclass(frozen=True)
class ProviderConfig:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str


def provider_config() -> ProviderConfig:
    """The configured issuer's endpoints (cached)."""
    issuer = settings.WARDEN_OIDC_ISSUER
    if not issuer:
        raise DiscoveryError("single sign-on is not configured (WARDEN_OIDC_ISSUER)")
    now = time.monotonic()
    with _lock:
        cached = _cache.get(issuer)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
    config = _discover(issuer)
    with _lock:
        _cache[issuer] = (now, config)
    return config


def forget() -> None:
    """Drop every cached configuration (a provider that rotated its endpoints, the tests)."""
    with _lock:
        _cache.clear()


def check_endpoint_url(url: str, *, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and settings.WARDEN_OIDC_ALLOW_HTTP_LOOPBACK and _loopback(parts):
        return url
    raise DiscoveryError(f"the provider's {what} is not an https URL: {url[:200]}")


def _loopback(parts) -> bool:
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _discover(issuer: str) -> ProviderConfig:
    check_endpoint_url(issuer, what="issuer")
    url = f"{issuer}/.well-known/openid-configuration"
    try:
        response = requests.get(
            url,
            timeout=settings.WARDEN_OIDC_TIMEOUT_SECONDS,
            allow_redirects=False,
            headers={"Accept": "application/json"},
        )
    except requests.RequestException as exc:
        raise DiscoveryError(
            f"the provider at {issuer} could not be reached ({type(exc).__name__})"
        ) from exc
    if response.status_code != 200:
        raise DiscoveryError(f"{url} answered HTTP {response.status_code}")
    if len(response.content) > MAX_BYTES:
        raise DiscoveryError(f"{url} answered more than {MAX_BYTES} bytes")
    try:
        document = response.json()
    except ValueError:
        raise DiscoveryError(f"{url} did not answer JSON") from None
    if not isinstance(document, dict):
        raise DiscoveryError(f"{url} did not answer a JSON object")
    # The document must name the very issuer it was fetched for (Discovery §4.3): a
    # configuration served for another issuer would have tokens checked against the wrong one.
    if str(document.get("issuer", "")).rstrip("/") != issuer:
        raise DiscoveryError(
            f"{url} names the issuer {str(document.get('issuer'))[:200]!r}, not {issuer!r}"
        )
    endpoints = {}
    for key in ("authorization_endpoint", "token_endpoint", "jwks_uri", "userinfo_endpoint"):
        value = document.get(key)
        if not isinstance(value, str) or not value:
            raise DiscoveryError(f"{url} does not give a {key}")
        endpoints[key] = check_endpoint_url(value, what=key)
    methods = document.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" not in methods:
        raise DiscoveryError("the provider does not support PKCE with S256")
    return ProviderConfig(issuer=str(document["issuer"]), **endpoints)
