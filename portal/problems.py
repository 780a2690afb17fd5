"""RFC 9457 problem details, for the page scripts' JSON endpoints."""

from http import HTTPStatus

from django.http import HttpRequest, JsonResponse


def problem(request: HttpRequest, status: int, detail: str, **extra) -> JsonResponse:
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": request.path,
        **extra,
    }
    return JsonResponse(body, status=status, content_type="application/problem+json")
