"""The chat's footer actions on an answer: rate it (up or down, with a comment) and ask again
(regenerate). Each is a CSRF-protected POST calling one service (agents.feedback,
agents.regenerate); the page's script (static/portal/feedback.js) asks for JSON and shows the
result in place, a plain form gets a redirect back to the conversation with a message."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.text import capfirst
from django.views.decorators.http import require_POST

from agents.feedback import feedback_record
from agents.regenerate import run_regenerate
from agents.services import RunError
from governance.access import NoAccess
from integrations.api.problems import problem_response, refusal
from portal.replies import wants_json


def _refused(request: HttpRequest, exc: RunError, back: str) -> HttpResponse:
    """A refusal as the API words it: a problem document for the script, else a message."""
    refused = refusal(exc)
    if refused is None:  # (never: a RunError has its answer)
        raise exc
    if wants_json(request):
        answer = refused.answer
        return problem_response(
            request, answer.status, answer.slug, refused.detail, **refused.extra
        )
    detail = refused.detail
    if errors := refused.extra.get("errors"):
        detail = "; ".join(message for field in errors.values() for message in field)
    messages.error(request, capfirst(detail))
    return redirect(back)


def _conversation(request: HttpRequest) -> int | None:
    """The conversation the form was on (its hidden field), to go back to after a refusal."""
    value = request.POST.get("conversation", "")
    return int(value) if value.isascii() and value.isdigit() and len(value) < 12 else None


def _back(run_id: int, conversation_id: int | None) -> str:
    if conversation_id is None:
        return reverse("run-trace", args=[run_id])
    return reverse("conversation", args=[conversation_id]) + f"#run-{run_id}"


@login_required
@require_POST
def feedback_send(request: HttpRequest, pk: int) -> HttpResponse:
    """Rate the run's answer; a comment box that was on the form is saved with it."""
    comment = request.POST.get("comment")  # None: no box on the form, the comment stays
    try:
        feedback = feedback_record(
            actor=request.user, run_id=pk, rating=request.POST.get("rating", ""), comment=comment
        )
    except NoAccess:
        raise Http404("no such run") from None
    except RunError as exc:
        return _refused(request, exc, _back(pk, _conversation(request)))
    if wants_json(request):
        return JsonResponse(
            {"run": pk, "rating": feedback.rating, "comment": feedback.comment}, status=200
        )
    messages.success(request, "Thank you: your feedback is recorded.")
    return redirect(_back(pk, feedback.run.conversation_id))


@login_required
@require_POST
def regenerate(request: HttpRequest, pk: int) -> HttpResponse:
    """Ask the run's agent its message again, in the same conversation."""
    try:
        run = run_regenerate(actor=request.user, run_id=pk)
    except NoAccess:
        raise Http404("no such run") from None
    except RunError as exc:
        return _refused(request, exc, _back(pk, _conversation(request)))
    url = reverse("conversation", args=[run.conversation_id])
    if wants_json(request):
        status = 200 if run.replayed else 201
        return JsonResponse(
            {"run": run.pk, "conversation": run.conversation_id, "url": url}, status=status
        )
    return redirect(url)
