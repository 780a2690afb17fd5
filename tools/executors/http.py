"""`http` tools: one HTTP request per call, built from the arguments.

- `url` is a template: `{name}` takes that argument, URL-encoded as one path segment.
- Arguments named in `query` go in the query string; the rest go in a JSON body for POST, PUT
  and PATCH, in the query string otherwise.
- `headers` are sent as given; `auth` adds a credential from an encrypted `Secret` (bearer,
  basic from "user:password", or a named header). The value never reaches logs, the ledger,
  audit data or the model.
- Every request carries the call's `Idempotency-Key`. Retries (up to `retries`, within the
  tool's timeout) are only where they are safe: for GET, PUT and DELETE on connection failures,
  timeouts, 429 and 502-504; for POST and PATCH only when the request cannot have been acted on
  (the connection failed, 429, 503).
- Connections go through tools.outbound (SSRF-safe: private and reserved addresses are refused
  unless `allow_networks` names them; each address is checked as it is connected to).
  Redirects are followed for GET only, each hop checked again; a redirect to another origin
  loses the credential and the configured headers, and one from https to http is refused.
- A credential never comes back: its value is removed from error messages and text results
  (an API that echoes a rejected token). Credential headers go in `auth`, not `headers`.
- `select` is a JSON Pointer (RFC 6901) into a JSON response: only that part is returned.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx

from tools.executors import Call, ToolError
from tools.outbound import OutboundError, check_url, guarded_client

log = logging.getLogger(__name__)

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
BODY_METHODS = ("POST", "PUT", "PATCH")
IDEMPOTENT = ("GET", "PUT", "DELETE")
RETRY_STATUSES = (429, 502, 503, 504)
NOT_ACTED_ON = (429, 503)  # the server says it did not act on the request
CREDENTIAL_HEADERS = {"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key"}
MAX_RESPONSE_BYTES = 10 * 2**20  # read no more than this of any response
MAX_REDIRECTS = 3

CONFIG_SCHEMA = {
    "type": "object",
    "properties": {
        "method": {"enum": list(METHODS)},
        "url": {"type": "string", "pattern": "^https?://", "maxLength": 2000},
        "query": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "headers": {
            "type": "object",
            "propertyNames": {"pattern": "^[A-Za-z0-9-]+$"},
            "additionalProperties": {"type": "string"},
        },
        "auth": {
            "type": "object",
            "properties": {
                "secret": {"type": "string"},
                "scheme": {"enum": ["bearer", "basic", "header"]},
                "header": {"type": "string", "pattern": "^[A-Za-z0-9-]+$"},
            },
            "required": ["secret", "scheme"],
            "additionalProperties": False,
        },
        "select": {"type": "string", "pattern": "^(/.*)?$"},
        "retries": {"type": "integer", "minimum": 0, "maximum": 5},
        "allow_networks": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["method", "url"],
    "additionalProperties": False,
}


def config_problem(config: dict[str, Any], parameters: dict[str, Any]) -> str | None:
    arguments = set(parameters.get("properties", {}))
    required = set(parameters.get("required", []))
    for name in _placeholders(config["url"]):
        if name not in required:
            return f"the URL's {{{name}}} must be a required argument of the tool"
    for name in config.get("query", []):
        if name not in arguments:
            return f"query argument {name!r} is not an argument of the tool"
    for name in config.get("headers", {}):
        if name.lower() in CREDENTIAL_HEADERS:
            return f"the header {name} carries a credential: put it in a secret and use auth"
    for network in config.get("allow_networks", []):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            return f"the allowed network {network!r} is not an address or network (CIDR)"
    auth = config.get("auth")
    if auth:
        from tools.models import Secret

        if not Secret.objects.filter(name=auth["secret"]).exists():
            return f"there is no secret named {auth['secret']!r}"
        if auth["scheme"] == "header" and not auth.get("header"):
            return 'auth with scheme "header" needs the header\'s name in "header"'
    return None


def execute(call: Call) -> Any:
    config = call.tool.config
    method = config["method"]
    arguments = dict(call.arguments)
    url = _expand(config["url"], arguments)  # takes the path arguments out of `arguments`
    params = {name: arguments.pop(name) for name in config.get("query", []) if name in arguments}
    body = None
    if method in BODY_METHODS:
        body = arguments
    else:
        params.update(arguments)
    credential, secrets = _auth_headers(config.get("auth"))
    request = _Request(
        method=method,
        url=url,
        params={k: _query_value(v) for k, v in params.items()},
        body=body,
        private={**config.get("headers", {}), **credential},  # for the tool's origin only
        public={"Idempotency-Key": call.idempotency_key, "User-Agent": "Warden"},
        allow_networks=config.get("allow_networks", []),
    )
    try:
        response = _send(
            request, timeout=float(call.tool.timeout), retries=config.get("retries", 1)
        )
        return _scrub(_select(_decode(response, url), config.get("select", "")), secrets)
    except ToolError as error:
        error.message = _scrub(error.message, secrets)
        raise


@dataclass
class _Request:
    method: str
    url: str
    params: dict[str, str] | None
    body: Any
    private: dict[
        str, str
    ]  # headers sent only to the tool's own origin (its credential among them)
    public: dict[str, str]
    allow_networks: list[str]


class _Response:
    def __init__(self, status: int, content_type: str, content: bytes):
        self.status, self.content_type, self.content = status, content_type, content


def _send(request: _Request, *, timeout: float, retries: int) -> _Response:
    deadline = time.monotonic() + timeout
    host = urlsplit(request.url).hostname or request.url
    late = ToolError("timeout", f"{host} did not answer within {timeout:g} s")
    safe = request.method in IDEMPOTENT
    attempt = 0
    while True:
        if deadline - time.monotonic() <= 0:
            raise late
        retry = False
        try:
            response = _request(request, deadline)
        except OutboundError as exc:
            raise ToolError("blocked", str(exc)) from None
        except httpx.ConnectError as exc:  # nothing was sent
            failure, retry = ToolError("unreachable", f"{host} could not be reached"), True
            log.info("http tool: %s unreachable (%s)", host, type(exc).__name__)
        except httpx.TimeoutException as exc:
            failure, retry = late, safe or isinstance(exc, httpx.ConnectTimeout)
        except httpx.HTTPError as exc:
            reason = type(exc).__name__
            failure, retry = ToolError("unreachable", f"{host} failed ({reason})"), safe
        else:
            if response.status < 400:
                return response
            failure = ToolError("http_error", _status_message(host, response))
            retry = response.status in (NOT_ACTED_ON if not safe else RETRY_STATUSES)
        if not retry or attempt >= retries:
            raise failure
        attempt += 1
        time.sleep(min(0.2 * 2**attempt, max(0.0, deadline - time.monotonic())))


def _request(request: _Request, deadline: float) -> _Response:
    origin = _origin(request.url)
    url, params = request.url, request.params
    timeout = max(0.001, deadline - time.monotonic())
    with guarded_client(timeout=timeout, allow_networks=request.allow_networks) as client:
        for _hop in range(MAX_REDIRECTS + 1):
            check_url(url)
            same_origin = _origin(url) == origin
            headers = {**(request.private if same_origin else {}), **request.public}
            sent = client.build_request(
                request.method, url, params=params or None, json=request.body, headers=headers
            )
            response = client.send(sent, stream=True)
            try:
                if response.is_redirect:
                    url = _redirect(request.method, url, response)
                    params = None  # the Location is the whole new URL
                    continue
                content = bytearray()
                for piece in response.iter_bytes():
                    content += piece
                    if len(content) > MAX_RESPONSE_BYTES:
                        cap = MAX_RESPONSE_BYTES
                        size = f"{cap // 2**20} MB" if cap >= 2**20 else f"{cap // 2**10} KB"
                        raise ToolError("invalid_response", f"the response is over {size}")
                    if time.monotonic() > deadline:  # a server trickling bytes
                        raise httpx.ReadTimeout("the tool's timeout passed")
                return _Response(
                    response.status_code, response.headers.get("content-type", ""), bytes(content)
                )
            finally:
                response.close()
    raise ToolError("http_error", f"more than {MAX_REDIRECTS} redirects")


def _redirect(method: str, url: str, response: httpx.Response) -> str:
    target: str = urljoin(url, response.headers.get("location", ""))
    if method != "GET":
        raise ToolError(
            "http_error",
            f"{response.url.host} redirected a {method}; Warden follows redirects of GET only",
        )
    if urlsplit(url).scheme == "https" and urlsplit(target).scheme != "https":
        raise ToolError("blocked", f"{response.url.host} redirected from https to http")
    return target


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


def _decode(response: _Response, url: str) -> Any:
    text = response.content.decode("utf-8", errors="replace")
    if "json" in response.content_type:
        try:
            return json.loads(text) if text.strip() else None
        except json.JSONDecodeError as exc:
            raise ToolError(
                "invalid_response",
                f"{urlsplit(url).hostname} sent invalid JSON ({exc.msg} at character {exc.pos})",
            ) from None
    return text


def _select(document: Any, pointer: str) -> Any:
    """RFC 6901: '' is the whole document, '/a/0/b~1c' is document['a'][0]['b/c']."""
    if not pointer:
        return document
    for token in pointer[1:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(document, dict) and token in document:
            document = document[token]
        elif isinstance(document, list) and token.isdigit() and int(token) < len(document):
            document = document[int(token)]
        else:
            raise ToolError("invalid_response", f"the response has nothing at {pointer}")
    return document


PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def _placeholders(template: str) -> list[str]:
    return PLACEHOLDER.findall(template)


def _expand(template: str, arguments: dict[str, Any]) -> str:
    def segment(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in arguments:
            raise ToolError("invalid_arguments", f"the argument {name!r} is required")
        value = str(arguments.pop(name))
        if value in ("", ".", ".."):  # would change the path's meaning, not fill a segment
            raise ToolError("invalid_arguments", f"{name} may not be {value!r}")
        return quote(value, safe="")

    return PLACEHOLDER.sub(segment, template)


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _auth_headers(auth: dict[str, str] | None) -> tuple[dict[str, str], list[str]]:
    """The credential's header, and the strings that would give it away if echoed back."""
    if not auth:
        return {}, []
    from tools.models import Secret
    from tools.secrets import SecretError

    secret = Secret.objects.filter(name=auth["secret"]).first()
    if secret is None:
        raise ToolError("configuration", f"the secret {auth['secret']!r} no longer exists")
    try:
        value = secret.reveal()
    except SecretError as exc:
        raise ToolError("configuration", str(exc)) from None
    if auth["scheme"] == "bearer":
        return {"Authorization": f"Bearer {value}"}, [value]
    if auth["scheme"] == "basic":
        encoded = base64.b64encode(value.encode()).decode()
        return {"Authorization": f"Basic {encoded}"}, [value, encoded, *value.split(":", 1)[1:]]
    return {auth["header"]: value}, [value]


def _scrub(value: Any, secrets: list[str]) -> Any:
    """`value` with every secret string replaced by [redacted], in strings at any depth."""
    secrets = [s for s in secrets if len(s) >= 4]
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, "[redacted]")
        return value
    if isinstance(value, list):
        return [_scrub(v, secrets) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v, secrets) for k, v in value.items()}
    return value


def _status_message(host: str, response: _Response) -> str:
    excerpt = response.content[:300].decode("utf-8", errors="replace").strip()
    return f"{host} answered HTTP {response.status}" + (f": {excerpt}" if excerpt else "")
