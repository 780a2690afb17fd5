"""The chat: the agents a user may use, their conversations, and a run as it happens.

A message is posted over HTTP (`chat_send`, CSRF-protected, the front door every interface
calls: agents.submit.run_submit); what the run does then reaches the page over the websocket
(agents.consumers), and each event makes the page fetch the run's part again from the
database (`run_part`), so what it shows is never more than one event behind the truth.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from agents.models import Run
from agents.selectors import (
    SEARCH_MAX,
    access_conversation,
    access_run,
    agents_usable_by,
    conversations_of,
    run_views,
    runs_with_steps,
)
from agents.services import RunError, run_cancel
from agents.submit import MAX_INPUT, run_submit
from agents.workers import workers_ready
from governance.access import NoAccess, access_agent
from governance.budgets import usage_for
from integrations.api.problems import refusal
from portal.replies import refuse, wants_json

DRAFT = "chat.draft"


def _agents(user):
    return agents_usable_by(user).order_by("name")


def _page(request: HttpRequest, **context) -> HttpResponse:
    """The chat page: the agents one may use and one's conversations beside `context`."""
    return render(
        request,
        "portal/chat.html",
        {
            "agents": _agents(request.user),
            "conversations": conversations_of(request.user)[:50],
            "usage": usage_for(request.user),
            "draft": request.session.pop(DRAFT, ""),
            "max_input": MAX_INPUT,  # the box's limit is the front door's
            "search_max": SEARCH_MAX,  # and the search box's, the search's
            **context,
        },
    )


@login_required
@require_GET
def chat_home(request: HttpRequest) -> HttpResponse:
    return _page(request)


@login_required
@require_GET
def chat_new(request: HttpRequest, slug: str) -> HttpResponse:
    agent = _agents(request.user).filter(slug=slug).first()
    if agent is None:
        raise Http404("no such agent")
    return _page(request, agent=agent)


@login_required
@require_GET
def conversation_page(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        conversation = access_conversation(request.user, pk)
    except NoAccess:
        raise Http404("no such conversation") from None
    runs = list(runs_with_steps(conversation.runs.order_by("created_at")))
    return _page(request, agent=conversation.agent, conversation=conversation, runs=run_views(runs))


@login_required
@require_POST
def chat_send(request: HttpRequest) -> HttpResponse:
    """Start a run on the posted message: JSON for the page's script, a redirect for a plain
    form. Nothing typed is lost: a refusal comes back with the text, for another try."""
    text = request.POST.get("text", "")
    try:
        agent = access_agent(request.user, request.POST.get("agent"))
        run = run_submit(
            actor=request.user,
            agent=agent,
            input=text,
            conversation=request.POST.get("conversation") or None,
        )
    except (NoAccess, RunError) as exc:
        refused = refusal(exc)  # the API's answer to it: its status, its words
        if refused is None:  # (never: both are domain errors)
            raise
        if not wants_json(request):
            request.session[DRAFT] = text  # the page puts it back in the box (a script: `text`)
        return refuse(
            request, refused.answer.status, refused.detail, headers=refused.headers, text=text
        )
    url = reverse("conversation", args=[run.conversation_id])
    if wants_json(request):
        return JsonResponse(
            {"run": run.pk, "conversation": run.conversation_id, "url": url}, status=201
        )
    return redirect(url)


@login_required
@require_GET
def run_part(request: HttpRequest, pk: int) -> HttpResponse:
    """The run's part of the conversation page, as it stands in the database."""
    try:
        run = access_run(request.user, pk)
    except NoAccess:
        raise Http404("no such run") from None
    [view] = run_views(list(runs_with_steps(Run.objects.filter(pk=run.pk))))
    return render(request, "portal/_run.html", {"view": view})


@login_required
@require_POST
def run_stop(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        run = access_run(request.user, pk)
    except NoAccess:
        raise Http404("no such run") from None
    run_cancel(run=run, actor=request.user)
    if wants_json(request):
        return JsonResponse({"run": run.pk}, status=202)
    if run.conversation_id is None:  # an MCP client's call: its trace is its page
        return redirect("run-trace", run.pk)
    return redirect("conversation", run.conversation_id)


@login_required
@require_GET
def workers_status(request: HttpRequest) -> HttpResponse:
    """Whether a worker is ready (agents.workers): the chat page says it is warming up until
    one is, asking here every few seconds."""
    response = JsonResponse({"ready": workers_ready()})
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_GET
def chat_search(request: HttpRequest) -> HttpResponse:
    """The user's own messages and the answers they were shown that match the search, each
    with its conversation, agent and date, linked to the conversation at that run."""
    from agents.selectors import SEARCH_LIMIT, SearchRefused, conversations_search

    text = request.GET.get("q")
    hits, refused = [], ""
    if text is not None:
        try:
            hits = conversations_search(request.user, text)
        except SearchRefused as exc:
            refused = str(exc)
    return render(
        request,
        "portal/search.html",
        {
            "q": (text or "")[: SEARCH_MAX * 2],  # back in the box, within reason
            "hits": hits,
            "refused": refused,
            "searched": text is not None and not refused,
            "search_max": SEARCH_MAX,
            "limit": SEARCH_LIMIT,
        },
        status=400 if refused else 200,
    )
