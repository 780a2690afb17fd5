"""A request id on every response (`X-Request-ID`): the caller's, if it sent a sensible one,
else a new one; log lines and problem documents can be matched to a request by it. The
request is also counted (telemetry.metrics.HTTP_REQUESTS), by the view that answered it."""

import re
import uuid

from django.http import HttpRequest, HttpResponse

from telemetry import context, metrics

_SENSIBLE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIdMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        given = request.headers.get("X-Request-ID", "")
        request_id = given if _SENSIBLE.fullmatch(given) else uuid.uuid4().hex
        # An attribute of our own on the request, read back with getattr (portal/views.py).
        request.request_id = request_id  # type: ignore[attr-defined]
        with context.serving(request):
            response = self.get_response(request)
        response["X-Request-ID"] = request_id
        match = getattr(request, "resolver_match", None)
        view = (match.view_name or "other") if match else "unresolved"
        metrics.HTTP_REQUESTS.labels(view=view, status=f"{response.status_code // 100}xx").inc()
        return response
