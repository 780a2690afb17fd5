"""A Content-Security-Policy on every page: scripts, styles, images and connections from
Warden itself only. Model output is already sanitised (governance.guardrails.output); this is
the second wall, so a mistake there still runs no script and loads no remote image: images
come from Warden, data: URLs, and only the hosts WARDEN_OUTPUT_IMAGE_HOSTS names (by https)."""

from django.conf import settings
from django.http import HttpRequest, HttpResponse

_POLICY = (
    "default-src 'self'; script-src 'self'; "
    # Django's admin sets a few style attributes; no script can be injected through them.
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:{images}; font-src 'self'; "
    "connect-src 'self' {sockets}; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'"
)


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            host = request.get_host()
            sockets = f"ws://{host} wss://{host}"  # 'self' does not cover ws: everywhere yet
            images = "".join(f" https://{host}" for host in settings.WARDEN_OUTPUT_IMAGE_HOSTS)
            response["Content-Security-Policy"] = _POLICY.format(sockets=sockets, images=images)
        return response
