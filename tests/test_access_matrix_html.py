"""Every route of the URLconf (HTML pages, the admin console, the API) against every persona,
on objects member A owns (IDOR): who gets what, the same 404 for someone else's object as for
a missing one, and no text of A's (MARK) nor of a knowledge base one may not read (DENIED) in
any body of a persona who should not see it.

The routes are read from the URLconf itself (get_resolver()), so a page added later is not
forgotten: `test_every_route_is_in_the_matrix` fails until it is given an entry: ROUTES (a
route with someone's object behind it: how to fill its parameters, each persona's outcome),
OPEN (nobody's data: requested by all, checked for the markers only) or EXEMPT (a prefix not
requested here, with the reason). The admin's routes are the admin site's own
(`admin.site.get_urls()` through the URLconf), filled per model and needing no entry.

The world is built once for the module inside a transaction rolled back at its end; each test
runs in a savepoint of it (pytest-django's `db`), so a test may change it (disable a user,
lift a denial) without the next one seeing it. Websockets: tests/test_access_matrix_ws.py."""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.apps import apps
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from agents.models import (
    Agent,
    Conversation,
    Deployment,
    Document,
    EvaluationCase,
    EvaluationResult,
    EvaluationRun,
    EvaluationSet,
    Feedback,
    KnowledgeBase,
    Message,
    ModelRoute,
    Run,
    RunState,
    RunStep,
)
from agents.versions import version_record
from audit.services import SYSTEM
from governance import roles
from governance.models import Action, ApprovalRequest, Escalation
from governance.services import access_deny, access_grant
from integrations.models import PersonalAccessToken
from integrations.tokens import token_create
from tools.models import Tool

MARK = "matrix-secret-7Q2"  # in everything member A owns that only A may read
DENIED = "matrix-denied-9K4"  # in base D's document, and in what A's runs drew from it
MISSING = 987_654_321  # an id nothing has

PERSONAS = ["member_a", "member_b", "reviewer", "admin", "denied", "disabled", "anonymous"]
# What each persona must never read: the admin reads A's objects in the console (a superuser),
# never what comes from base D, which the admin is denied.
FORBIDDEN = {p: (MARK, DENIED) for p in PERSONAS} | {"member_a": (), "admin": (DENIED,)}


@dataclass
class World:
    users: dict  # persona -> user (None: anonymous; "disabled" is A, disabled once signed in)
    agent: Agent
    tool: Tool
    base: KnowledgeBase  # D: A's, the admin denied it, the reviewer may not read it
    document: Document  # in D
    private: Conversation  # A's, every text MARK
    private_run: Run
    reviewed: Conversation  # A's: a run drew on D, another waits for an approval
    drawn_run: Run  # answered from D
    approval_run: Run
    held_run: Run
    approval: ApprovalRequest  # any reviewer may decide
    restricted: ApprovalRequest  # only a group the reviewer is not in may decide
    held: Escalation  # an answer drawn from D
    token: PersonalAccessToken
    attached: Document  # a file A attached to `private`: A's alone, whatever is granted
    evaluation: EvaluationRun  # its one case answered by drawn_run: the owners', D hidden
    objects: dict = field(default_factory=dict)  # model -> the object its admin pages show


def _user(name: str, *groups, **extra):
    user = get_user_model().objects.create_user(
        f"{name}-{uuid.uuid4().hex[:6]}", email=f"{name}@example.com", **extra
    )
    user.groups.add(*groups)
    return user


def build() -> World:
    group = {name: Group.objects.get_or_create(name=name)[0] for name in roles.ROLE_GROUPS}
    team = Group.objects.create(name=f"Sales {uuid.uuid4().hex[:4]}")
    member = group[roles.MEMBER]
    a = _user("a", member, team)
    users = {
        "member_a": a,
        "member_b": _user("b", member, team),  # may use all A may: only ownership differs
        "reviewer": _user("reviewer", group[roles.REVIEWER]),
        "admin": _user("admin", group[roles.GOVERNANCE_ADMIN], is_staff=True, is_superuser=True),
        "denied": _user("denied", member, team),
        "disabled": a,
        "anonymous": None,
    }
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}")
    Deployment.objects.create(route=route, position=1, model="warden-local/demo")
    agent = Agent.objects.create(name="Sales", slug=f"s-{uuid.uuid4().hex[:6]}", route=route)
    tool = Tool.objects.get(name="create_ticket")
    tool.enabled = True
    tool.save(update_fields=["enabled"])
    agent.tools.add(tool)
    for obj in (agent, route, tool):
        access_grant(obj=obj, holder=team, action=Action.USE, actor=SYSTEM)
        access_deny(obj=obj, holder=users["denied"], action=Action.USE, actor=SYSTEM)

    base = KnowledgeBase.objects.create(name="Vault", slug=f"v-{uuid.uuid4().hex[:6]}", owner=a)
    agent.knowledge_bases.add(base)
    text = f"# Vault procedures {DENIED}\n\nThe vault passphrase is {DENIED}."
    document = Document.objects.create(
        knowledge_base=base,
        source="upload",
        filename=f"vault-{DENIED}.md",
        title=f"Vault procedures {DENIED}",
        content=text.encode(),
        size=len(text),
        status="ready",
    )
    access_deny(obj=base, holder=users["admin"], action=Action.READ, actor=SYSTEM)

    now = timezone.now()

    def run(conversation, state, question, answer="") -> Run:
        run = Run.objects.create(
            agent=agent,
            conversation=conversation,
            actor=a,
            input=question,
            state=state,
            answer=answer,
        )
        Message.objects.create(conversation=conversation, run=run, role="user", content=question)
        if answer:
            Message.objects.create(
                conversation=conversation, run=run, role="assistant", content=answer
            )
        return run

    private = Conversation.objects.create(owner=a, agent=agent, title=f"Plans {MARK}")
    private_run = run(private, RunState.RUNNING, f"my plans {MARK}")
    RunStep.objects.create(
        run=private_run,
        index=0,
        kind="model",
        output={"content": f"about {MARK}"},
        started_at=now,
        finished_at=now,
    )

    reviewed = Conversation.objects.create(owner=a, agent=agent, title="Vault")
    drawn_run = run(
        reviewed, RunState.SUCCEEDED, "what is the vault passphrase?", f"It is {DENIED} [1]."
    )
    passage = {
        "n": 1,
        "knowledge_base": base.pk,
        "document": document.pk,
        "title": f"Vault procedures {DENIED}",
        "text": f"The vault passphrase is {DENIED}.",
    }
    RunStep.objects.create(
        run=drawn_run,
        index=0,
        kind="retrieval",
        output={"passages": [passage]},
        started_at=now,
        finished_at=now,
    )
    approval_run = run(reviewed, RunState.AWAITING_APPROVAL, "open a ticket to rotate it")

    def approval_of(run, arguments, key) -> ApprovalRequest:
        return ApprovalRequest.objects.create(
            key=f"run:{run.pk}:step:0:call:{key}",
            run_id=run.pk,
            agent_id=agent.pk,
            tool_id=tool.pk,
            tool_name=tool.name,
            tool_version="1",
            requested_by=a,
            arguments=arguments,
            arguments_hash="0" * 64,
            expires_at=now + timedelta(days=1),
        )

    approval = approval_of(approval_run, {"title": "Rotate the vault passphrase"}, 0)
    restricted_run = run(private, RunState.AWAITING_APPROVAL, f"a ticket {MARK}")
    restricted = approval_of(restricted_run, {"title": f"Payroll {MARK}"}, 1)
    restricted.approver_groups.add(Group.objects.create(name=f"Finance {uuid.uuid4().hex[:4]}"))

    held_run = run(reviewed, RunState.AWAITING_REVIEW, "and the backup passphrase?")
    RunStep.objects.create(
        run=held_run,
        index=0,
        kind="retrieval",
        output={"passages": [passage]},
        started_at=now,
        finished_at=now,
    )
    held = Escalation.objects.create(
        run_id=held_run.pk,
        agent_id=agent.pk,
        requested_by=a,
        question="and the backup passphrase?",
        answer=f"Maybe {DENIED} too [1].",
        confidence="0.400",
        threshold="0.80",
    )
    token, _ = token_create(user=a, name=f"laptop {MARK}", scopes=["runs:read"], days=1)
    files = KnowledgeBase.objects.create(
        name="Files", slug=f"f-{uuid.uuid4().hex[:6]}", owner=a, conversation=private
    )
    access_grant(obj=files, holder=team, action=Action.READ, actor=SYSTEM)  # opens nothing
    attached = Document.objects.create(
        knowledge_base=files,
        source="upload",
        filename=f"plans-{MARK}.txt",
        title=f"plans-{MARK}.txt",
        content=f"My plans: {MARK}".encode(),
        size=20,
        status="ready",
    )
    evaluation_set = EvaluationSet.objects.create(agent=agent, name="Vault")
    case = EvaluationCase.objects.create(set=evaluation_set, question="the vault passphrase?")
    version = version_record(agent=agent, actor=users["admin"], reason="first")
    evaluation = EvaluationRun.objects.create(
        set=evaluation_set, version=version, started_by=a, state="succeeded"
    )
    EvaluationResult.objects.create(
        evaluation=evaluation,
        case=case,
        run=drawn_run,
        answer=drawn_run.answer,
        scores={"overall": 1.0, "held_answer": f"It is {DENIED}."},
        tool_calls=[{"name": "create_ticket", "arguments": {"title": DENIED}}],
        passed=True,
    )
    world = World(
        users=users,
        agent=agent,
        tool=tool,
        base=base,
        document=document,
        private=private,
        private_run=private_run,
        reviewed=reviewed,
        drawn_run=drawn_run,
        approval_run=approval_run,
        held_run=held_run,
        approval=approval,
        restricted=restricted,
        held=held,
        token=token,
        attached=attached,
        evaluation=evaluation,
    )
    world.objects = {
        Run: drawn_run,
        Document: document,
        KnowledgeBase: base,
        Escalation: held,
        ApprovalRequest: approval,
        PersonalAccessToken: token,
        Conversation: reviewed,
        Agent: agent,
        Tool: tool,
        ModelRoute: route,
        EvaluationSet: evaluation_set,
        EvaluationRun: evaluation,
    }
    return world


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock(), transaction.atomic():
        yield build()
        transaction.set_rollback(True)


# The routes ------------------------------------------------------------------------------------


def url_patterns() -> dict[str, URLPattern]:
    """Every route of the URLconf by its full pattern, includes followed."""
    found = {}

    def walk(patterns, prefix: str) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, prefix + str(pattern.pattern))
            else:
                found[prefix + str(pattern.pattern)] = pattern

    walk(get_resolver().url_patterns, "")
    return found


LOGIN = "login"  # a redirect to the sign-in page (HTML) for the signed-out and the disabled
ADMIN_LOGIN = "admin-login"  # a redirect to /admin/login/, which sends each on (admin_sign_in)
SIGNED_OUT = {"anonymous": LOGIN, "disabled": LOGIN}
API_SIGNED_OUT = {"anonymous": 401, "disabled": 401}


def everyone(status, **others) -> dict:
    return {p: status for p in PERSONAS} | SIGNED_OUT | others


def owner_only(**others) -> dict:
    return everyone(404, member_a=200) | others


def api(table: dict) -> dict:
    return table | API_SIGNED_OUT


@dataclass
class Route:
    """How a route's parameters are filled (param -> a function of the world, or of None for
    the missing object) and what each persona gets from a GET."""

    statuses: dict
    fill: dict = field(default_factory=dict)


def pk(attribute: str):
    return lambda world: MISSING if world is None else getattr(world, attribute).pk


def slug(world):
    return "no-such-agent" if world is None else world.agent.slug


def agent_model(world):
    return "agent:no-such-agent" if world is None else f"agent:{world.agent.slug}"


REVIEWERS = {"reviewer": 200, "admin": 200}

ROUTES: dict[str, Route] = {
    "": Route(everyone(200)),
    "chat/": Route(everyone(200)),
    "chat/new/<slug:slug>/": Route(
        everyone(200, reviewer=404, denied=404), {"slug": slug}
    ),  # the agent is the team's: who may use it
    "chat/c/<int:pk>/": Route(owner_only(), {"pk": pk("private")}),
    "chat/send/": Route(everyone(405)),  # POST: test_writes_to_others_objects
    "chat/search/": Route(everyone(200)),  # what it finds: test_only_a_finds_as_words
    "chat/runs/<int:pk>/": Route(owner_only(), {"pk": pk("private_run")}),
    "chat/runs/<int:pk>/stop/": Route(everyone(405), {"pk": pk("private_run")}),
    "chat/runs/<int:pk>/feedback/": Route(everyone(405), {"pk": pk("private_run")}),
    "chat/runs/<int:pk>/regenerate/": Route(everyone(405), {"pk": pk("private_run")}),
    "chat/workers/": Route(everyone(200)),  # whether a worker is ready: nobody's data
    "chat/files/": Route(everyone(405)),  # POST: test_a_file_into_as_conversation_...
    "chat/files/<int:pk>/remove/": Route(everyone(405), {"pk": pk("attached")}),
    "chat/c/<int:pk>/files/": Route(owner_only(), {"pk": pk("private")}),
    "runs/<int:pk>/": Route(owner_only(admin=200), {"pk": pk("private_run")}),
    "inbox/": Route(everyone(200)),
    "inbox/bulk/": Route(everyone(405)),  # POST: portal/tests/test_inbox_review.py
    "inbox/approvals/<int:pk>/": Route(everyone(404) | REVIEWERS, {"pk": pk("approval")}),
    "inbox/answers/<int:pk>/": Route(everyone(404) | REVIEWERS, {"pk": pk("held")}),
    "account/tokens/": Route(everyone(200)),
    "account/tokens/<int:pk>/revoke/": Route(everyone(405), {"pk": pk("token")}),
    "api/v1/agents": Route(api(everyone(200))),
    "api/v1/agents/<slug:slug>/runs": Route(api(everyone(405)), {"slug": slug}),
    "api/v1/agents/<slug:slug>/versions": Route(
        api(everyone(200, reviewer=404, denied=404)), {"slug": slug}
    ),
    "api/v1/runs/<int:pk>": Route(api(owner_only()), {"pk": pk("private_run")}),
    # a finished run's: its stream ends
    "api/v1/runs/<int:pk>/events": Route(api(owner_only()), {"pk": pk("drawn_run")}),
    "api/v1/runs/<int:pk>/cancel": Route(api(everyone(405)), {"pk": pk("private_run")}),
    # nobody rated it (A's own rating: integrations/tests/test_feedback_api.py)
    "api/v1/runs/<int:pk>/feedback": Route(api(everyone(404)), {"pk": pk("private_run")}),
    "api/v1/feedback": Route(api(everyone(200))),
    "api/v1/conversations": Route(api(everyone(200))),
    "api/v1/conversations/<int:pk>": Route(api(owner_only()), {"pk": pk("private")}),
    "api/v1/approvals": Route(api(everyone(200))),
    "api/v1/approvals/<int:pk>": Route(api(everyone(404) | REVIEWERS), {"pk": pk("approval")}),
    "api/v1/approvals/<int:pk>/decide": Route(api(everyone(405)), {"pk": pk("approval")}),
    "api/v1/escalations": Route(api(everyone(200))),
    "api/v1/escalations/<int:pk>/decide": Route(api(everyone(405)), {"pk": pk("held")}),
    "api/v1/tools": Route(api(everyone(200))),
    "api/v1/tools/<int:pk>": Route(
        api(everyone(200, reviewer=404, denied=404)), {"pk": pk("tool")}
    ),
    "api/v1/knowledge-bases": Route(api(everyone(200))),
    # D is A's; the admin is denied it.
    "api/v1/knowledge-bases/<slug:slug>/documents": Route(
        api(owner_only()),
        {"slug": lambda world: "no-such-base" if world is None else world.base.slug},
    ),
    "api/v1/documents/<int:pk>": Route(api(owner_only()), {"pk": pk("document")}),
    "api/v1/audit/events": Route(api(everyone(403, admin=200))),
    "api/v1/audit/export": Route(api(everyone(403, admin=200))),
    "api/v1/evaluations": Route(api(everyone(405))),  # POST: test_evaluations_api.py
    # The agent's owners' (the admin: a superuser, not denied the agent); D's answer hidden.
    "api/v1/evaluations/<int:pk>": Route(api(everyone(404, admin=200)), {"pk": pk("evaluation")}),
    "api/v1/evaluations/<int:pk>/compare/<int:other>": Route(
        api(everyone(404, admin=200)), {"pk": pk("evaluation"), "other": pk("evaluation")}
    ),
    "v1/models": Route(api(everyone(200))),
    "v1/models/<str:model>": Route(
        api(everyone(200, reviewer=404, denied=404)), {"model": agent_model}
    ),
    "v1/chat/completions": Route(api(everyone(405))),
}

# Routes with nobody's object behind them, requested by every persona all the same (no MARK or
# DENIED may show), whatever status they answer.
OPEN = {
    "favicon.ico": "a file",
    "login/": "the sign-in page",
    "logout/": "signing out (GET shows nothing of anyone's)",
    "admin/login/": "portal.views.admin_sign_in: test_admin_sign_in_refuses_the_non_staff",
    "admin/logout/": "the admin's sign-out: a redirect to its index for whoever is not staff",
    "api/schema/": "the OpenAPI schema: the API's shape, no data",
    "api/docs/": "the API's documentation page",
    "api/problems/<slug:slug>": "the problem types' documentation",
    "o/token/": "OAuth2 protocol (POST): integrations/tests/test_tokens.py",
    ".well-known/oauth-protected-resource/mcp": "/mcp's metadata (RFC 9728): test_mcp_oauth.py",
    ".well-known/oauth-authorization-server": "the OAuth2 server's metadata (RFC 8414)",
    "login/second-factor/": "the signed-in person's own second step (tests/test_second_factor.py)",
    "login/second-factor/enrol/": "the signed-in person's own enrolment (test_second_factor.py)",
    "sso/login/": "a redirect to the identity provider (tests/test_sso.py)",
    "sso/callback/": "the provider's answer: refused without its state (tests/test_sso.py)",
}
# Routes not requested here, with the reason.
EXEMPT = {
    "o/": "django-oauth-toolkit's protocol and application pages (integrations/tests)",
    "admin/r/": "view_on_site: a redirect to the object's own page, which is in ROUTES",
}


def admin_routes(patterns: dict[str, URLPattern]) -> dict[str, URLPattern]:
    """The admin site's routes (admin.site.get_urls(), as the URLconf includes them: no need
    for the private registry), but those in OPEN or EXEMPT."""
    return {
        route: pattern
        for route, pattern in patterns.items()
        if route.startswith("admin/") and route not in OPEN and not exempt(route)
    }


def exempt(route: str) -> bool:
    return any(route.startswith(prefix) for prefix in EXEMPT)


def test_every_route_is_in_the_matrix():
    patterns = url_patterns()
    covered = set(ROUTES) | set(OPEN) | set(admin_routes(patterns))

    forgotten = sorted(r for r in patterns if r not in covered and not exempt(r))
    gone = sorted((set(ROUTES) | set(OPEN)) - set(patterns))

    assert forgotten == [], "routes with no entry in ROUTES, OPEN or EXEMPT"
    assert gone == [], "entries for routes the URLconf no longer has"


# Requests ----------------------------------------------------------------------------------------


def path_of(route: str, fill: dict, world) -> str:
    def value(match):
        name = match.group(1).split(":")[-1]
        return str(fill[name](world))

    return "/" + re.sub(r"<([^>]+)>", value, route)


ADMIN_ROUTE = re.compile(r"admin/(\w+)/(\w+)/")
# The admin's two regular-expression routes, by their meaning.
ADMIN_REGEX = {"app_list": "/admin/agents/", None: "/admin/no-such-page/"}


def admin_path(route: str, pattern: URLPattern, world: World) -> str:
    """The route filled with the world's object of its model (the one that shows what A owns
    or what came from base D), else the model's first, else a missing id."""
    if "(?P<" in route:
        return ADMIN_REGEX[pattern.name]
    try:
        found = ADMIN_ROUTE.match(route)
        model = apps.get_model(found[1], found[2]) if found else None
    except LookupError:  # not a model's: password_change/done/
        model = None
    obj = world.objects.get(model)
    if obj is None and model is not None:
        obj = model.objects.order_by("pk").first()
    user = world.users["member_a"]
    fill = {
        name: (lambda w, obj=obj: MISSING if obj is None else obj.pk)
        for name in ("object_id", "object_pk", "pk")
    } | {
        "id": lambda w: user.pk,
        "user_id": lambda w: user.pk,
        "group_id": lambda w: user.groups.order_by("pk").first().pk,
        "field": lambda w: "name",
        "agent_id": lambda w: w.agent.pk,  # the console's drift page of an agent
        "check_id": lambda w: MISSING,
        "version_id": lambda w: w.agent.live_version_id,  # a version of the agent's pages
    }
    return path_of(route, fill, world)


def client_of(world: World, persona: str) -> Client:
    client = Client()
    user = world.users[persona]
    if user is not None:
        client.force_login(user)
    if persona == "disabled":  # signed in, then disabled by an administrator
        get_user_model().objects.filter(pk=user.pk).update(is_active=False)
    return client


def outcome(response) -> int | str:
    if response.status_code == 302:
        to = response["Location"]
        if to.startswith("/login/"):
            return LOGIN
        if to.startswith("/admin/login/"):
            return ADMIN_LOGIN
    return response.status_code


def text(response) -> str:
    if not getattr(response, "streaming", False):
        return response.content.decode(errors="replace")
    content = response.streaming_content
    if hasattr(content, "__aiter__"):  # an event stream: it ends (WARDEN_SSE_MAX_SECONDS)

        async def read() -> list[bytes]:
            return [chunk async for chunk in content]

        chunks = async_to_sync(asyncio.wait_for)(read(), 30)
    else:
        chunks = list(content)
    return b"".join(c if isinstance(c, bytes) else c.encode() for c in chunks).decode(
        errors="replace"
    )


def leaked(persona: str, body: str) -> list[str]:
    return [marker for marker in FORBIDDEN[persona] if marker in body]


CSRF = re.compile(r'(csrfmiddlewaretoken" value="|csrf-token" content="|csrfToken": ")[^"]+')


def shape(response, path: str, values) -> tuple[int, str]:
    """The status and the body with what is the request's own (its path, the values it put in
    the path, its CSRF token) taken out: what must be the same for someone else's object and a
    missing one."""
    body = text(response).replace(path, "<path>")
    for value in values:
        if not isinstance(value, int):  # a slug or a name echoed back; an id is in the path
            body = body.replace(value, "<value>")
    return response.status_code, CSRF.sub(r"\1-", body)


@pytest.mark.django_db
@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_route_by_persona(world, route, persona, settings):
    settings.WARDEN_SSE_MAX_SECONDS = 2
    spec = ROUTES[route]
    client = client_of(world, persona)
    path = path_of(route, spec.fill, world)

    response = client.get(path)

    assert outcome(response) == spec.statuses[persona]
    body = text(response)
    assert leaked(persona, body) == []
    if spec.fill and spec.statuses[persona] == 404:
        missing = path_of(route, spec.fill, None)
        ours = [f(world) for f in spec.fill.values()]
        theirs = [f(None) for f in spec.fill.values()]
        assert shape(response, path, ours) == shape(client.get(missing), missing, theirs)


@pytest.mark.django_db
@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize("route", sorted(OPEN))
def test_open_route_by_persona(world, route, persona):
    path = path_of(route, {"slug": lambda w: "not-found"}, world)

    response = client_of(world, persona).get(path)

    assert response.status_code < 500
    assert leaked(persona, text(response)) == []


ADMIN_PATTERNS = admin_routes(url_patterns())
# What the admin gets where it is not a page (after its redirects are followed).
ADMIN_OK: dict[str, int] = {
    "admin/(?P<url>.*)$": 404,  # a page the admin does not have
    "admin/autocomplete/": 403,  # without the model and field it completes for
    # POST-only actions
    "admin/agents/agent/<path:object_id>/builder/send/": 405,
    "admin/agents/release/<path:object_id>/end/": 405,
    "admin/portal/webhook/<int:pk>/rotate-secret/": 405,
    "admin/tools/mcpserver/<int:pk>/sync/": 405,
    "admin/tools/tool/check/<str:field>/": 405,
    "admin/dashboard/drift/<int:agent_id>/reference/": 405,
    "admin/dashboard/drift/alerts/<int:check_id>/acknowledge/": 405,
}
# Pages of base D and its document: the admin is denied D, so they are gone for the admin.
GONE_FOR_THE_ADMIN = re.compile(r"admin/agents/(knowledgebase|document)/<[^>]+>/")


@pytest.mark.django_db
@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize("route", sorted(ADMIN_PATTERNS))
def test_admin_route_by_persona(world, route, persona):
    path = admin_path(route, ADMIN_PATTERNS[route], world)
    client = client_of(world, persona)

    response = client.get(path)

    assert leaked(persona, text(response)) == []
    if persona != "admin":
        assert outcome(response) == ADMIN_LOGIN
        return
    if GONE_FOR_THE_ADMIN.match(route):
        assert response.status_code in (302, 404)
        if response.status_code == 302 and not route.endswith("<path:object_id>/"):
            assert response["Location"] == "/admin/"  # "... doesn't exist", as for a missing id
    final = client.get(path, follow=True)  # object/ goes on to object/change/
    assert leaked(persona, text(final)) == []
    if not GONE_FOR_THE_ADMIN.match(route):
        assert final.status_code == admin_expects(route, final.wsgi_request)


def admin_expects(route: str, request) -> int:
    """200, but where the model's admin says this admin may not (a read-only model's add and
    delete pages: 403), and for a page nobody has (404)."""
    if route in ADMIN_OK:
        return ADMIN_OK[route]
    found = ADMIN_ROUTE.match(route)
    if found is None or not route.endswith(("add/", "delete/")):
        return 200
    try:
        model = apps.get_model(found[1], found[2])
    except LookupError:
        return 200
    model_admin = admin.site.get_model_admin(model)  # public since Django 5.0
    if route.endswith("add/"):
        allowed = model_admin.has_add_permission(request)
    else:
        allowed = model_admin.has_delete_permission(request)
    return 200 if allowed else 403


# What the matrix's "nothing leaked" rests on: the markers do show where they may ---------------


@pytest.mark.django_db
def test_the_owner_reads_both_markers_so_the_matrix_can_fail(world):
    client = client_of(world, "member_a")

    assert MARK in text(client.get(f"/chat/c/{world.private.pk}/"))
    assert DENIED in text(client.get(f"/chat/c/{world.reviewed.pk}/"))
    assert DENIED in text(client.get(f"/api/v1/documents/{world.document.pk}"))


@pytest.mark.django_db
def test_only_a_finds_as_words(world):
    """The conversation search is over one's own conversations: nobody else finds A's words,
    the admin included (who reads them in the console, not in a chat)."""
    for persona in ("member_a", "member_b", "reviewer", "admin", "denied"):
        page = text(client_of(world, persona).get("/chat/search/", {"q": "my plans"}))
        found = f"#run-{world.private_run.pk}" in page
        assert found == (persona == "member_a"), persona


@pytest.mark.django_db
def test_the_admin_reads_a_members_run_and_base_d_once_the_denial_is_lifted(world):
    from governance.models import AccessDenial

    client = client_of(world, "admin")
    document = f"/admin/agents/document/{world.document.pk}/change/"
    run = f"/admin/agents/run/{world.drawn_run.pk}/change/"
    assert MARK in text(client.get(f"/admin/agents/run/{world.private_run.pk}/change/"))
    assert DENIED not in text(client.get(run))

    AccessDenial.objects.filter(user=world.users["admin"]).delete()

    assert DENIED in text(client.get(document))
    assert DENIED in text(client.get(run))


@pytest.mark.django_db
def test_the_reviewer_sees_only_what_they_may_decide(world):
    client = client_of(world, "reviewer")

    inbox = text(client.get("/inbox/"))
    page = text(client.get(f"/inbox/approvals/{world.approval.pk}/"))
    answer = text(client.get(f"/inbox/answers/{world.held.pk}/"))
    restricted = client.get(f"/inbox/approvals/{world.restricted.pk}/")
    missing = client.get(f"/inbox/approvals/{MISSING}/")

    assert f"/inbox/approvals/{world.approval.pk}/" in inbox
    assert f"/inbox/answers/{world.held.pk}/" in inbox
    assert f"/inbox/approvals/{world.restricted.pk}/" not in inbox
    # What the decision needs is there; what came from base D is not.
    assert "Rotate the vault passphrase" in page
    assert "what is the vault passphrase?" in page
    assert DENIED not in page
    assert "and the backup passphrase?" in answer
    assert DENIED not in answer
    assert shape(restricted, restricted.wsgi_request.path, []) == shape(
        missing, missing.wsgi_request.path, []
    )
    assert restricted.status_code == 404
    assert MARK not in text(restricted)


@pytest.mark.django_db
@pytest.mark.parametrize("persona", ["member_a", "member_b", "reviewer", "denied"])
def test_admin_sign_in_refuses_the_non_staff(world, persona):
    client = client_of(world, persona)

    response = client.get("/admin/agents/run/", follow=True)

    assert response.status_code == 403
    assert response.redirect_chain == [("/admin/login/?next=/admin/agents/run/", 302)]
    assert leaked(persona, text(response)) == []


@pytest.mark.django_db
@pytest.mark.parametrize("persona", ["anonymous", "disabled"])
def test_the_signed_out_and_the_disabled_are_sent_to_sign_in_by_the_admin(world, persona):
    response = client_of(world, persona).get("/admin/agents/run/", follow=True)

    assert response.redirect_chain[-1][0].startswith("/login/")
    assert response.status_code == 200
    assert leaked(persona, text(response)) == []


# Writes to A's objects: refused as for a missing object, and nothing changes -------------------


def _state(world) -> tuple:
    world.private_run.refresh_from_db()
    world.token.refresh_from_db()
    world.approval.refresh_from_db()
    world.held.refresh_from_db()
    return (
        world.private_run.cancel_requested,
        world.token.revoked_at,
        world.approval.status,
        world.held.status,
        Run.objects.count(),
        Feedback.objects.count(),
        Document.objects.count(),
        KnowledgeBase.objects.count(),
    )


WRITES = {
    "stop a run": ("/chat/runs/{}/stop/", "private_run", {}),
    "rate a run": ("/chat/runs/{}/feedback/", "private_run", {"rating": "down"}),
    "regenerate a run": ("/chat/runs/{}/regenerate/", "private_run", {}),
    "remove a file": ("/chat/files/{}/remove/", "attached", {}),
    "revoke a token": ("/account/tokens/{}/revoke/", "token", {}),
    "decide an approval": (
        "/inbox/approvals/{}/",
        "approval",
        {"decision": "reject", "arguments": "", "comment": ""},
    ),
    "decide a held answer": (
        "/inbox/answers/{}/",
        "held",
        {"decision": "reject", "answer": "", "comment": ""},
    ),
}


@pytest.mark.django_db
@pytest.mark.parametrize("persona", ["member_b", "denied", "disabled", "anonymous"])
@pytest.mark.parametrize("write", sorted(WRITES))
def test_a_write_to_as_object_is_refused_as_for_a_missing_one(world, write, persona):
    url, attribute, data = WRITES[write]
    client = client_of(world, persona)
    before = _state(world)

    response = client.post(url.format(getattr(world, attribute).pk), data)
    missing = client.post(url.format(MISSING), data)

    assert _state(world) == before
    expected = LOGIN if persona in SIGNED_OUT else 404
    assert outcome(response) == expected
    path = response.wsgi_request.path
    assert shape(response, path, []) == shape(missing, missing.wsgi_request.path, [])
    assert leaked(persona, text(response)) == []


@pytest.mark.django_db
@pytest.mark.parametrize("persona", ["member_b", "reviewer", "admin", "denied"])
def test_a_message_into_as_conversation_is_refused_as_into_a_missing_one(world, persona):
    client = client_of(world, persona)
    before = _state(world)

    def send(conversation):
        return client.post(
            "/chat/send/",
            {"agent": world.agent.pk, "conversation": conversation, "text": "hello"},
            HTTP_ACCEPT="application/json",
        )

    response, missing = send(world.private.pk), send(MISSING)

    assert _state(world) == before
    assert response.status_code == 404
    assert (response.status_code, response.json()) == (missing.status_code, missing.json())
    assert leaked(persona, text(response)) == []


@pytest.mark.django_db
@pytest.mark.parametrize("persona", ["member_b", "reviewer", "admin", "denied"])
def test_a_file_into_as_conversation_is_refused_as_into_a_missing_one(world, persona):
    from django.core.files.uploadedfile import SimpleUploadedFile

    client = client_of(world, persona)
    before = _state(world)

    def attach(conversation):
        return client.post(
            "/chat/files/",
            {
                "agent": world.agent.pk,
                "conversation": conversation,
                "file": SimpleUploadedFile("notes.txt", b"Some notes."),
            },
            HTTP_ACCEPT="application/json",
        )

    response, missing = attach(world.private.pk), attach(MISSING)

    assert _state(world) == before
    assert response.status_code == 404
    assert (response.status_code, response.json()) == (missing.status_code, missing.json())
    assert leaked(persona, text(response)) == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("persona", "run", "expected"),
    [
        ("member_a", "drawn_run", 200),
        ("member_a", "held_run", 200),
        ("admin", "drawn_run", 200),  # agents.view_run; base D denied
        ("admin", "held_run", 200),
        ("reviewer", "held_run", 200),  # reviews its held answer; may not read base D
        ("reviewer", "approval_run", 200),
        ("reviewer", "drawn_run", 404),  # reviews nothing of it
        ("member_b", "drawn_run", 404),
    ],
)
def test_the_trace_of_a_run_drawn_from_base_d(world, persona, run, expected):
    client = client_of(world, persona)
    path = f"/runs/{getattr(world, run).pk}/"

    response = client.get(path)

    assert response.status_code == expected
    body = text(response)
    assert leaked(persona, body) == []
    if persona == "member_a" and run != "approval_run":
        assert DENIED in body  # the passage, for the base's owner
    if expected == 404:
        missing = client.get(f"/runs/{MISSING}/")
        assert shape(response, path, []) == shape(missing, f"/runs/{MISSING}/", [])
