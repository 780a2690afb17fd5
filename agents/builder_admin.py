"""The agent builder: one admin page per agent with its configuration on the left and a test chat
with it on the right (`<pk>/builder/`, linked from the agent's change page).

- Who may open it: whoever may change that agent in the admin (the ModelAdmin's
  has_change_permission with the object, as every admin page about one object asks).
- The configuration: the system prompt, the model route and its deployments (tried in order:
  the later ones are the fallbacks), the tools (with their approval setting, and whether they
  are enabled and open to the admin), the knowledge bases and the thresholds. What is editable
  is saved through the agent admin's own form and its save, related-save and log steps, in one
  transaction, as the change page does: the same validation, the same field history
  (django-auditlog) and the same admin log entry.
- The test chat: real runs through the one front door (agents.submit.run_submit), as the admin,
  in a conversation of the admin's own, followed live by the chat's own machinery (the run's
  part, portal/_run.html; the websocket; static/portal/live.js). An admin who may not use the
  agent is told so, and why; nothing bypasses the access check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from django import forms
from django.contrib import messages
from django.contrib.admin.utils import unquote
from django.contrib.admin.widgets import RelatedFieldWidgetWrapper
from django.core.exceptions import PermissionDenied
from django.db import router, transaction
from django.db.models import QuerySet
from django.forms.boundfield import BoundWidget
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.text import capfirst
from django.views.decorators.http import require_POST

from agents.models import Agent, Conversation, Run
from agents.selectors import access_conversation, run_views, runs_with_steps
from agents.services import ConversationNotFound, InputRefused, RateLimited, RunError
from agents.submit import MAX_INPUT, run_submit
from agents.versions import versions_live_and_newest
from agents.versions_admin import DRAFT as DRAFT_VERSION
from governance.access import NoAccess, access_agent, may, restrict
from governance.models import Action

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin

    _ModelAdmin = ModelAdmin[Agent]
else:
    _ModelAdmin = object

# What the builder edits; the rest stays on the change page.
EDITABLE = (
    "system_prompt",
    "route",
    "tools",
    "knowledge_bases",
    "confidence_threshold",
    "passages_per_run",
    "max_steps",
    "max_tokens_per_run",
)
THRESHOLDS = ("confidence_threshold", "passages_per_run", "max_steps", "max_tokens_per_run")
DRAFT = "agents.builder.draft"  # a refused test message, put back in the box (no script)
TESTS_SHOWN = 8  # the admin's earlier test conversations listed

NO_GRANT = (
    "You may not use this agent yourself, so it cannot be tested as you: the test chat runs "
    "under the same rules as everyone's. Grant yourself (or a group of yours) use of it on "
    "its Access page to test it."
)


class BuilderMixin(_ModelAdmin):
    """Adds the builder page and its test chat's send endpoint to the agent's admin."""

    def get_urls(self) -> list[URLPattern]:
        site = self.admin_site
        return [
            path(
                "<path:object_id>/builder/",
                site.admin_view(self.builder_view),
                name="agents_agent_builder",
            ),
            path(
                "<path:object_id>/builder/send/",
                site.admin_view(require_POST(self.builder_send)),
                name="agents_agent_builder_send",
            ),
            *super().get_urls(),
        ]

    def _builder_form(self, request: HttpRequest, agent: Agent) -> type[forms.ModelForm[Agent]]:
        """The admin's own form for the agent (its field callbacks, querysets and validation),
        with the fields the builder edits; tools and knowledge bases as checkboxes."""
        choices = {
            "tools": forms.CheckboxSelectMultiple,
            "knowledge_bases": forms.CheckboxSelectMultiple,
        }
        editable = [f for f in EDITABLE if f not in self.get_readonly_fields(request, agent)]
        return self.get_form(request, agent, change=True, fields=editable, widgets=choices)

    def builder_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        agent = self.get_object(request, unquote(object_id))
        if agent is None:  # missing, or hidden from this admin: as for the change page
            # Django's own answer for a missing object: a private method django-stubs omits.
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)  # type: ignore[attr-defined]
        if not self.has_change_permission(request, agent):
            raise PermissionDenied
        form_class = self._builder_form(request, agent)
        if request.method == "POST":
            form = _plain(form_class(request.POST, instance=agent))
            if form.is_valid():
                if form.has_changed():
                    changed = self._builder_save(request, form)
                    if form.cleaned_data.get("version_release") == DRAFT_VERSION:
                        messages.success(
                            request,
                            f"Saved ({changed}) as a draft version: the test chat, as every "
                            "run, keeps to the live version until the draft is released.",
                        )
                    else:
                        messages.success(
                            request, f"Saved ({changed}). The next test message uses it."
                        )
                else:
                    messages.info(request, "Nothing changed.")
                return HttpResponseRedirect(request.get_full_path())
        else:
            form = _plain(form_class(instance=agent))
        return TemplateResponse(
            request,
            "admin/agents/agent/builder.html",
            self._builder_context(request, agent, form),
        )

    def _builder_save(self, request: HttpRequest, form: forms.ModelForm[Agent]) -> str:
        """The change page's save, step for step (ModelAdmin._changeform_view); says what
        changed, by the fields' labels."""
        change = self.construct_change_message(request, form, [])  # type: ignore[arg-type]
        with transaction.atomic(using=router.db_for_write(self.model)):
            agent = self.save_form(request, form, change=True)
            self.save_model(request, agent, form, change=True)
            self.save_related(request, form, formsets=[], change=True)
            self.log_change(request, agent, change)
        return ", ".join(change[0]["changed"]["fields"]).lower() if change else "nothing"

    def _builder_context(
        self, request: HttpRequest, agent: Agent, form: forms.ModelForm[Agent]
    ) -> dict[str, Any]:
        user = request.user
        route = agent.route
        tool_rows = _choices(form, "tools", user, Action.USE)
        base_rows = _choices(form, "knowledge_bases", user, Action.READ)
        conversation = self._test_conversation(request, agent)
        runs: list[Run] = []
        if conversation is not None:
            runs = list(runs_with_steps(conversation.runs.order_by("created_at")))
        earlier = Conversation.objects.filter(
            owner_id=user.pk, agent=agent, builder_test=True
        ).order_by("-updated_at")[:TESTS_SHOWN]
        builder_url = reverse("admin:agents_agent_builder", args=[agent.pk])
        live, newest = versions_live_and_newest(agent)
        return {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": agent,
            "title": f"Builder: {agent}",
            "page_title": "Builder",
            "form": form,
            "thresholds": [form[name] for name in THRESHOLDS if name in form.fields],
            "media": self.media + form.media,
            "route": route,
            "deployments": list(route.deployments.order_by("position")),
            "tool_rows": tool_rows,
            "base_rows": base_rows,
            "may_use": may(user, agent, Action.USE),
            "no_grant": NO_GRANT,
            "may_use_route": may(user, route, Action.USE),
            "conversation": conversation,
            "runs": run_views(runs),
            "earlier": earlier,
            "builder_url": builder_url,
            "versions": {"live": live, "newest": newest},
            "versions_url": reverse("admin:agents_agent_versions", args=[agent.pk]),
            "draft": request.session.pop(f"{DRAFT}.{agent.pk}", ""),
            "max_input": MAX_INPUT,
        }

    def _test_conversation(self, request: HttpRequest, agent: Agent) -> Conversation | None:
        """The admin's own conversation with this agent named by `?conversation=`, if any."""
        wanted = request.GET.get("conversation")
        if not wanted:
            return None
        try:
            conversation = access_conversation(request.user, wanted)
        except NoAccess:
            return None
        return (
            conversation
            if conversation.agent_id == agent.pk and conversation.builder_test
            else None
        )

    def builder_send(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Start a test run on the posted message, as the chat's send does: JSON for live.js,
        a redirect for a plain form. A refusal keeps the text."""
        wants_json = "application/json" in request.headers.get("Accept", "")
        text = request.POST.get("text", "")
        agent = self.get_object(request, unquote(object_id))
        if agent is None or not self.has_change_permission(request, agent):
            if wants_json:
                return _refused(403, "you may not change this agent, so not test it here", text)
            raise PermissionDenied
        back = reverse("admin:agents_agent_builder", args=[agent.pk])
        conversation = request.POST.get("conversation") or None
        try:
            usable = access_agent(request.user, agent.pk)
            run = run_submit(
                actor=request.user,
                agent=usable,
                input=text,
                conversation=conversation,
                builder_test=True,
            )
        except NoAccess:
            refused = (403, NO_GRANT)
        except RunError as exc:
            status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 403)
            refused = (status, str(exc))
        else:
            url = f"{back}?conversation={run.conversation_id}"
            if wants_json:
                body = {"run": run.pk, "conversation": run.conversation_id, "url": url}
                return JsonResponse(body, status=201)
            return HttpResponseRedirect(url)
        status, detail = refused
        if wants_json:
            return _refused(status, detail, text)
        messages.error(request, capfirst(detail))
        request.session[f"{DRAFT}.{agent.pk}"] = text  # the page puts it back in the box
        kept = (
            conversation
            if conversation and conversation.isascii() and conversation.isdigit()
            else None
        )
        return HttpResponseRedirect(f"{back}?conversation={kept}" if kept else back)


def _plain(form: forms.ModelForm[Agent]) -> forms.ModelForm[Agent]:
    """The fields' own widgets, without the admin's add, change and delete links around the
    related ones (the page links to the route itself; the change page has the rest): the tools
    and knowledge bases as checkboxes, each laid out with its facts, the route as a select."""
    for field in form.fields.values():
        if isinstance(field.widget, RelatedFieldWidgetWrapper):
            field.widget = field.widget.widget
    return form


def _choices(form: forms.ModelForm[Agent], name: str, user: Any, action: str) -> list[Choice]:
    """The checkboxes of a many-to-many field, each with its object and whether `user` may
    `action` it (one query for all of them, besides the choices' own)."""
    if name not in form.fields:  # read-only for this admin
        return []
    field = cast(forms.ModelMultipleChoiceField, form.fields[name])
    choices = cast("QuerySet[Any]", field.queryset)  # set by the admin's form field
    yours = set(restrict(choices, user, action).values_list("pk", flat=True))
    rows = []
    for box in form[name]:
        obj = box.data["value"].instance  # a ModelChoiceIteratorValue
        rows.append(Choice(box, obj, obj.pk in yours))
    return rows


@dataclass
class Choice:
    box: BoundWidget
    obj: Any
    yours: bool  # the admin may use (read) it: their test runs are offered it


# The test chat's statuses (the portal's and the API's are integrations.api.problems's, which
# the admin sits below); live.js shows the detail, whatever the status.
_STATUS: tuple[tuple[type[RunError], int], ...] = (
    (InputRefused, 400),
    (ConversationNotFound, 404),
    (RateLimited, 429),
)


def _refused(status: int, detail: str, text: str) -> JsonResponse:
    """The chat's kind of refusal for live.js: a problem document with the text to put back."""
    body = {"type": "about:blank", "status": status, "detail": detail, "text": text}
    return JsonResponse(body, status=status, content_type="application/problem+json")
