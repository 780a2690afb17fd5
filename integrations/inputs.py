"""Input that no lookup or table can take is a 400 (or a 404), never a 500.

PostgreSQL refuses a NUL in any text ("A string literal cannot contain NUL"), and an unpaired
surrogate is not text at all (it cannot be encoded as UTF-8 for the database, Redis or a log).
Either reaching a query was a 500. `BadInputMiddleware` refuses a request whose path or query
string holds a NUL or bytes that are not UTF-8 (an encoded surrogate included), before any
view runs: a problem document for the API, a readable page for people. Bodies are checked
where they are parsed, so the answer can name the field and keep what was typed: JSON in
integrations.api.parsers.JSONParser and the inbox's edited arguments (`unstorable_at`), form text by
each form (Django's and DRF's CharField refuse a NUL; form decoding never yields a
surrogate). Behind them, the middleware turns a lookup that a sent value could not take
(`_selected_action=1%00` in an admin action, an id "abc") into a 400 or 404 instead of a 500.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import chain
from urllib.parse import unquote_to_bytes

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import get_resolver, get_urlconf

from tools.schemas import text_problem, unstorable_at

API_PREFIXES = ("/api/", "/v1/")  # as portal.views: the paths that answer problem documents
UNREADABLE = "holds a NUL character or bytes that are not UTF-8 text, which Warden cannot read"


def unstorable(value) -> str | None:
    """Why PostgreSQL could not keep `value` (text, or JSON for a jsonb column), or None: a NUL
    character, or an unpaired surrogate (valid JSON, not valid UTF-8)."""
    if not isinstance(value, str):
        try:
            json.dumps(value)
        except (TypeError, ValueError, RecursionError):
            return "it is not JSON that can be stored"
    found = unstorable_at(value)
    if found is None:
        return None
    where, problem = found
    return f"it {problem}" if isinstance(value, str) else f"{where} {problem}"


# The middleware --------------------------------------------------------------------------------


def undecodable(raw: bytes | str) -> bool:
    """Whether percent-encoded `raw` (a path, a query string, a form body) holds a NUL once
    decoded, or bytes that are not UTF-8 (an encoded surrogate, such as %ED%A0%80, among
    them)."""
    if isinstance(raw, str):
        try:
            raw = raw.encode()
        except UnicodeEncodeError:
            return True
    return _unreadable(unquote_to_bytes(raw))


def _path_bytes(request: HttpRequest) -> bytes:
    """The path's bytes as the client sent them, percent-decoded. Under ASGI (daphne) the
    server has already decoded the path, replacing what is not UTF-8 with U+FFFD, and keeps the
    original in `raw_path`; under WSGI Django itself percent-encodes such bytes again, so the
    path is readable text either way, and only the raw one tells."""
    scope = getattr(request, "scope", None)
    if scope is not None and scope.get("raw_path"):
        return unquote_to_bytes(scope["raw_path"].split(b"?", 1)[0])
    return request.path_info.encode("utf-8", "surrogatepass")


def _unreadable(decoded: bytes) -> bool:
    if b"\x00" in decoded:
        return True
    try:
        decoded.decode()
    except UnicodeDecodeError:
        return True
    return False


class BadInputMiddleware:
    """Answer 400 when the path or the query string holds a NUL or bytes that are not UTF-8
    (module docstring), before any view runs; and, when a view looks up a value the request
    sent in a field that cannot take it, answer what that means instead of a 500
    (process_exception)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if text_problem(request.path) or _unreadable(_path_bytes(request)):
            return self._answer(request, f"the path {UNREADABLE}")
        if undecodable(request.META.get("QUERY_STRING", "")):
            return self._answer(request, f"the query string {UNREADABLE}")
        return self.get_response(request)

    def _answer(self, request: HttpRequest, detail: str) -> HttpResponse:
        if request.path.startswith(API_PREFIXES):
            from integrations.api.problems import problem_response

            return problem_response(request, 400, "unreadable-input", detail)
        return render(request, "400.html", {"detail": detail}, status=400)

    def process_exception(self, request: HttpRequest, exception: Exception):
        """A value the request sent that a lookup cannot take: a path parameter is a resource
        that does not exist (404, as Django's own converters answer); a form or query value is
        a bad request (400). Views that take any text where the model wants a number raised a
        ValueError (a 500): the admin's object-permission pages and its bulk actions
        (`_selected_action=abc`), oauth2_provider's application pages. Likewise a NUL sent in a
        form that reached a text column (psycopg refuses it)."""
        if not isinstance(exception, ValueError) or request.resolver_match is None:
            return None
        message = str(exception)
        match = request.resolver_match
        in_path = [v for v in chain(match.args, match.kwargs.values()) if isinstance(v, str)]
        try:
            data = [request.GET, request.POST]  # POST: the form already parsed, or nothing
        except Exception:  # a body that cannot be parsed sent no form values
            data = [request.GET]
        sent = [value for values in data for _, listed in values.lists() for value in listed]
        if message.startswith("Field '") and " but got " in message:
            if any(repr(value) in message for value in in_path):
                # The site's own 404 (handler404: a problem document or the page), as Django
                # answers an Http404 (django-stubs types every handler as taking the request only).
                handler = get_resolver(get_urlconf()).resolve_error_handler(404)
                return handler(request, Http404("no such object"))  # type: ignore[call-arg]
            if any(repr(value) in message for value in sent):
                return self._answer(request, "a value sent is not one Warden can look up")
        elif "cannot contain NUL" in message and any("\x00" in value for value in sent):
            return self._answer(request, f"the form {UNREADABLE}")
        return None
