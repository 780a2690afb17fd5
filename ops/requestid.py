"""A request id on every response (`X-Request-ID`): the caller's, if it sent a sensible one,
else a new one; log lines and problem documents can be matched to a request by it."""

import re
import uuid

from django.http import HttpRequest, HttpResponse

_SENSIBLE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIdMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        given = request.headers.get("X-Request-ID", "")
        request_id = given if _SENSIBLE.fullmatch(given) else uuid.uuid4().hex
        # An attribute of our own on the request, read back with getattr (portal/views.py).
        request.request_id = request_id  # type: ignore[attr-defined]
        response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response
