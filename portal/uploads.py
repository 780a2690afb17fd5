"""Files attached in the chat: each goes into the conversation's own knowledge base (private to
its owner, agents.knowledge.services.conversation_file_add), is read by a worker as any other
document, and the page shows where its reading stands (`conversation_files`, which the page's
script, static/portal/upload.js, fetches again until every file is ready or failed).

Each view answers JSON (an RFC 9457 problem on a refusal) to the page's script and a redirect
with a message to a plain form.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from agents.knowledge.extract import too_big
from agents.knowledge.selectors import access_conversation_file
from agents.knowledge.services import (
    UploadRefused,
    conversation_file_add,
    conversation_file_remove,
    upload_check,
)
from agents.models import Conversation
from agents.selectors import access_conversation
from agents.submit import conversation_title
from governance.access import NoAccess, access_agent
from portal.replies import refuse, wants_json

# What a request attaching a file may carry beyond the file: its form's other fields and the
# multipart framing.
FRAMING = 64 * 1024
ATTACH_PATH = "/chat/files/"


def body_refusal(scope: dict[str, Any]) -> tuple[int, str] | None:
    """Whether to refuse a request attaching a file before its body is read: Django's ASGI
    handler reads a whole body (to disk past 2.5 MB) before any view runs, so a view's own check
    would come after the bytes. (411, why) without a Content-Length, (413, why) when it is over
    the limit (config.asgi answers); None otherwise."""
    if scope.get("method") != "POST" or scope.get("path") != ATTACH_PATH:
        return None
    headers = dict(scope.get("headers") or [])
    try:
        length = int(headers.get(b"content-length", b""))
    except ValueError:
        return 411, "send the file with its length (Content-Length)"
    limit = settings.WARDEN_UPLOAD_MAX_BYTES
    if length > limit + FRAMING:
        return 413, too_big(length - FRAMING, limit)
    return None


@login_required
@require_POST
def file_attach(request: HttpRequest) -> HttpResponse:
    """Attach the posted `file` to the conversation `conversation` (the user's own), or to a
    new conversation with the agent `agent` (one the user may use)."""
    upload = request.FILES.get("file")
    if upload is None:
        return refuse(request, 400, "choose a file to attach")
    try:
        if request.POST.get("conversation"):
            conversation = access_conversation(request.user, request.POST["conversation"])
        else:  # saved with its first file
            agent = access_agent(request.user, request.POST.get("agent"))
            if not agent.enabled:
                raise NoAccess("no such agent")
            owner: Any = request.user  # signed in (login_required)
            conversation = Conversation(
                owner=owner, agent=agent, title=conversation_title(upload.name or "")
            )
        # Refused before the file is read: its type, its size.
        upload_check(name=upload.name or "", size=upload.size or 0)
        document, added = conversation_file_add(
            conversation=conversation,
            actor=request.user,
            name=upload.name or "",
            data=upload.read(),
        )
    except NoAccess as exc:  # no such conversation (of the user's), or agent (they may use)
        return refuse(request, 404, str(exc))
    except UploadRefused as exc:
        wait = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
        return refuse(request, exc.status, str(exc), headers=wait)
    url = reverse("conversation", args=[conversation.pk])
    if wants_json(request):
        return JsonResponse(
            {
                "document": document.pk,
                "added": added,
                "status": document.progress,
                "conversation": conversation.pk,
                "url": url,
                "files": reverse("conversation-files", args=[conversation.pk]),
            },
            status=201 if added else 200,
        )
    if added:
        messages.success(request, f"{document.filename} is attached; it is being read.")
    else:
        messages.info(request, f"{document.filename} was already attached.")
    return redirect(url)


@login_required
@require_GET
def conversation_files(request: HttpRequest, pk: int) -> HttpResponse:
    """The conversation's files and where their reading stands (the page's list)."""
    try:
        conversation = access_conversation(request.user, pk)
    except NoAccess:
        raise Http404("no such conversation") from None
    base = getattr(conversation, "upload_base", None)
    files = list(base.files()) if base is not None else []
    return render(request, "portal/_files.html", {"files": files})


@login_required
@require_POST
def file_remove(request: HttpRequest, pk: int) -> HttpResponse:
    """Take one of the user's attached files out of its conversation."""
    try:
        document = access_conversation_file(request.user, pk)
    except NoAccess:
        if wants_json(request):
            return refuse(request, 404, "no such file")
        raise Http404("no such file") from None
    conversation_id = document.knowledge_base.conversation_id
    conversation_file_remove(document=document, actor=request.user)
    if wants_json(request):
        return JsonResponse({"document": pk, "removed": True})
    messages.success(request, f"{document.filename} is removed from this conversation.")
    return redirect("conversation", conversation_id)
