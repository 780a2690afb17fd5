"""`http` tools: one HTTP request per call, built from the arguments.

- `url` is a template: `{name}` takes that argument, URL-encoded as one path segment.
- Arguments named in `query` go in the query string; the rest go in a JSON body for POST, PUT
  and PATCH, in the query string otherwise.
- `headers` are sent as given; `auth` adds a credential from an encrypted `Secret` (bearer,
  basic from "user:password", or a named header). The value never reaches logs, the ledger,
  audit data or the model.
- Every request carries the call's `Idempotency-Key`, so retrying is safe for every method:
  connection failures, timeouts, 429 and 502-504 are retried up to `retries` times within the
  tool's timeout.
- Connections go through tools.outbound (SSRF-safe: private and reserved addresses are refused
  unless `allow_networks` names them; each address is checked as it is connected to).
  Redirects are followed for GET only, each hop checked again.
- `select` is a JSON Pointer (RFC 6901) into a JSON response: only that part is returned.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import time
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx

from tools.executors import Call, ToolError
from tools.outbound import OutboundError, check_url, guarded_client

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
BODY_METHODS = ("POST", "PUT", "PATCH")
RETRY_STATUSES = (429, 502, 503, 504)
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


def config_problem(config: dict, parameters: dict) -> str | None:
    arguments = set(parameters.get("properties", {}))
    required = set(parameters.get("required", []))
    for name in _placeholders(config["url"]):
        if name not in required:
            return f"the URL's {{{name}}} must be a required argument of the tool"
    for name in config.get("query", []):
        if name not in arguments:
            return f"query argument {name!r} is not an argument of the tool"
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
    headers = {
        **config.get("headers", {}),
        **_auth_headers(config.get("auth")),
        "Idempotency-Key": call.idempotency_key,
        "User-Agent": "Warden",
    }
    response = _send(
        method,
        url,
        params={k: _query_value(v) for k, v in params.items()},
        body=body,
        headers=headers,
        timeout=float(call.tool.timeout),
        retries=config.get("retries", 1),
        allow_networks=config.get("allow_networks", []),
    )
    return _select(_decode(response, url), config.get("select", ""))


class _Response:
    def __init__(self, status: int, content_type: str, content: bytes):
        self.status, self.content_type, self.content = status, content_type, content


def _send(method, url, *, params, body, headers, timeout, retries, allow_networks) -> _Response:
    deadline = time.monotonic() + timeout
    host = urlsplit(url).hostname or url
    attempt = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ToolError("timeout", f"{host} did not answer within {timeout:g} s")
        try:
            response = _request(
                method, url, params, body, headers, remaining, allow_networks=allow_networks
            )
        except OutboundError as exc:
            raise ToolError("blocked", str(exc)) from None
        except httpx.TimeoutException:
            failure = ToolError("timeout", f"{host} did not answer within {timeout:g} s")
        except httpx.HTTPError as exc:
            reason = type(exc).__name__
            failure = ToolError("unreachable", f"{host} could not be reached ({reason})")
        else:
            if response.status not in RETRY_STATUSES:
                if response.status >= 400:
                    raise ToolError("http_error", _status_message(host, response))
                return response
            failure = ToolError("http_error", _status_message(host, response))
        if attempt >= retries:
            raise failure
        attempt += 1
        time.sleep(min(0.2 * 2**attempt, max(0.0, deadline - time.monotonic())))


def _request(method, url, params, body, headers, timeout, *, allow_networks) -> _Response:
    with guarded_client(timeout=timeout, allow_networks=allow_networks) as client:
        for _hop in range(MAX_REDIRECTS + 1):
            check_url(url)
            request = client.build_request(
                method, url, params=params or None, json=body, headers=headers
            )
            response = client.send(request, stream=True)
            try:
                if response.is_redirect and method == "GET":
                    url = urljoin(str(response.url), response.headers.get("location", ""))
                    params = None  # the Location is the whole new URL
                    continue
                if response.is_redirect:
                    raise ToolError(
                        "http_error",
                        f"{response.url.host} redirected a {method}; Warden follows redirects "
                        "of GET requests only",
                    )
                content = bytearray()
                for piece in response.iter_bytes():
                    content += piece
                    if len(content) > MAX_RESPONSE_BYTES:
                        raise ToolError(
                            "invalid_response",
                            f"the response is over {MAX_RESPONSE_BYTES // 2**20} MB",
                        )
                return _Response(
                    response.status_code, response.headers.get("content-type", ""), bytes(content)
                )
            finally:
                response.close()
    raise ToolError("http_error", f"more than {MAX_REDIRECTS} redirects")


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


def _expand(template: str, arguments: dict) -> str:
    def segment(match: re.Match) -> str:
        name = match.group(1)
        if name not in arguments:
            raise ToolError("invalid_arguments", f"the argument {name!r} is required")
        return quote(str(arguments.pop(name)), safe="")

    return PLACEHOLDER.sub(segment, template)


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _auth_headers(auth: dict | None) -> dict:
    if not auth:
        return {}
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
        return {"Authorization": f"Bearer {value}"}
    if auth["scheme"] == "basic":
        return {"Authorization": "Basic " + base64.b64encode(value.encode()).decode()}
    return {auth["header"]: value}


def _status_message(host: str, response: _Response) -> str:
    excerpt = response.content[:300].decode("utf-8", errors="replace").strip()
    return f"{host} answered HTTP {response.status}" + (f": {excerpt}" if excerpt else "")
