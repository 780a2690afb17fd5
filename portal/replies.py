"""How the portal's posting views answer: JSON to the page's scripts (which ask for it), a
redirect with a message to a plain form. One place for the two things every such view did on
its own: telling which was asked for, and refusing in the asker's terms."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.text import capfirst

from integrations.api.problems import problem_response


def wants_json(request: HttpRequest) -> bool:
    """Whether the page's script asked (Accept: application/json), not a plain form."""
    return "application/json" in request.headers.get("Accept", "")


def refuse(
    request: HttpRequest,
    status: int,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> HttpResponse:
    """A refusal: for a script, a problem document (`extra` as its members, `headers` set);
    for a form, the detail as an error message and a redirect back to the page it came from
    (when that is this site's), else to the chat."""
    if wants_json(request):
        response = problem_response(request, status, None, detail, **extra)
        for header, value in (headers or {}).items():
            response[header] = value
        return response
    messages.error(request, capfirst(detail))
    back = request.META.get("HTTP_REFERER", "")
    safe = url_has_allowed_host_and_scheme(back, {request.get_host()})
    return redirect(back if safe and back else reverse("chat"))
