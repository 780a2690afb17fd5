"""The websocket's subscriptions (agents.consumers) against every persona of the access matrix
(tests/test_access_matrix_html.py): member A's run and conversation, a run of A's that the
reviewer reviews, the inbox; each refusal the same as for a missing id (4403), the signed-out
refused at connect (4401), a member disabled mid-session refused at the next subscription
(4401), and no frame carrying A's marker to anyone but A. The real channel layer (Redis)."""

import json
import uuid
from datetime import timedelta
from importlib import import_module

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone

from agents.events import publish
from agents.models import Agent, Conversation, Deployment, ModelRoute, Run, RunState
from config.asgi import application
from governance import roles
from governance.models import ApprovalRequest
from portal.tests.test_websocket import closed_with, wait_logged
from tools.models import Tool

pytestmark = pytest.mark.usefixtures("committing_db")  # the consumer reads on its own thread

MARK = "matrix-secret-7Q2"
MISSING = 987_654_321
PERSONAS = ["member_a", "member_b", "reviewer", "admin", "denied", "disabled", "anonymous"]
TARGETS = ["run", "conversation", "reviewed run", "inbox"]

REFUSED, SIGNED_OUT = 4403, 4401
OWN = {"run": "replay", "conversation": "subscribed", "reviewed run": "replay", "inbox": REFUSED}
# A run is followed by its owner only: a reviewer reads a run they review on its trace page.
NOTHING = dict.fromkeys(TARGETS, REFUSED)
EXPECTED = {
    "member_a": OWN,
    "member_b": NOTHING,
    "reviewer": NOTHING | {"inbox": "subscribed"},
    "admin": NOTHING | {"inbox": "subscribed"},
    "denied": NOTHING,
    "disabled": dict.fromkeys(TARGETS, SIGNED_OUT),
    "anonymous": dict.fromkeys(TARGETS, SIGNED_OUT),
}


@pytest.fixture
def world():
    group = {name: Group.objects.get_or_create(name=name)[0] for name in roles.ROLE_GROUPS}

    def user(name, *groups, **extra):
        made = get_user_model().objects.create_user(f"{name}-{uuid.uuid4().hex[:6]}", **extra)
        made.groups.add(*groups)
        return made

    a = user("a", group[roles.MEMBER])
    users = {
        "member_a": a,
        "member_b": user("b", group[roles.MEMBER]),
        "reviewer": user("reviewer", group[roles.REVIEWER]),
        "admin": user("admin", group[roles.GOVERNANCE_ADMIN], is_staff=True, is_superuser=True),
        "denied": user("denied", group[roles.MEMBER]),
        "disabled": a,
        "anonymous": None,
    }
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}")
    Deployment.objects.create(route=route, position=1, model="warden-local/demo")
    agent = Agent.objects.create(name="Sales", slug=f"s-{uuid.uuid4().hex[:6]}", route=route)
    conversation = Conversation.objects.create(owner=a, agent=agent, title=f"Plans {MARK}")
    run = Run.objects.create(
        agent=agent, conversation=conversation, actor=a, input=MARK, state=RunState.RUNNING
    )
    reviewed = Run.objects.create(
        agent=agent,
        conversation=conversation,
        actor=a,
        input="open a ticket",
        state=RunState.AWAITING_APPROVAL,
    )
    tool = Tool.objects.get(name="create_ticket")
    ApprovalRequest.objects.create(
        key=f"run:{reviewed.pk}:step:0:call:0",
        run_id=reviewed.pk,
        agent_id=agent.pk,
        tool_id=tool.pk,
        tool_name=tool.name,
        tool_version="1",
        requested_by=a,
        arguments={"title": "VPN down"},
        arguments_hash="0" * 64,
        expires_at=timezone.now() + timedelta(days=1),
    )
    for each in (run, reviewed):
        publish(each.pk, {"type": "token", "step": 0, "text": f"about {MARK}"})
        wait_logged(each.pk, 1)
    frames = {
        "run": ({"type": "subscribe", "run": run.pk}, {"type": "subscribe", "run": MISSING}),
        "conversation": (
            {"type": "subscribe", "conversation": conversation.pk},
            {"type": "subscribe", "conversation": MISSING},
        ),
        "reviewed run": (
            {"type": "subscribe", "run": reviewed.pk},
            {"type": "subscribe", "run": MISSING},
        ),
        "inbox": ({"type": "subscribe", "inbox": True}, None),
    }
    return users, frames


def socket(user=None) -> WebsocketCommunicator:
    """A socket as the browser opens it, with a session signing `user` in (by ModelBackend:
    the first backend, axes', signs no one in)."""
    headers = [(b"origin", b"http://localhost"), (b"host", b"localhost")]
    if user is not None:
        session = import_module(settings.SESSION_ENGINE).SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.save()
        cookie = f"{settings.SESSION_COOKIE_NAME}={session.session_key}"
        headers.append((b"cookie", cookie.encode()))
    return WebsocketCommunicator(application, "/ws/", headers=headers)


async def opened(user) -> WebsocketCommunicator:
    communicator = await sync_to_async(socket)(user)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    return communicator


async def subscribe(user, frame, *, disable: bool) -> tuple[int | str, list[str]]:
    """What the socket answers `frame` with (the first frame's type, or the close code) and
    every text it sent."""
    if user is None:
        communicator = socket()
        await communicator.connect(timeout=5)
        return await closed_with(communicator), []
    communicator = await opened(user)
    if disable:  # an administrator disables the account while the socket is open
        await sync_to_async(get_user_model().objects.filter(pk=user.pk).update)(is_active=False)
    await communicator.send_json_to(frame)
    texts = []
    while True:
        output = await communicator.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            answer = output["code"]
            break
        texts.append(output["text"])
        kind = json.loads(output["text"])["type"]
        if kind in ("replay", "subscribed"):
            answer = kind
            break
    await communicator.disconnect()
    if disable:
        await sync_to_async(get_user_model().objects.filter(pk=user.pk).update)(is_active=True)
    return answer, texts


@pytest.mark.parametrize("persona", PERSONAS)
def test_subscriptions_by_persona(world, persona):
    users, frames = world
    user = users[persona]

    def answer(frame):
        return async_to_sync(subscribe)(user, frame, disable=persona == "disabled")

    got, missing, texts = {}, {}, []
    for target, (frame, absent) in frames.items():
        got[target], sent = answer(frame)
        texts += sent
        if absent is not None:
            missing[target], sent = answer(absent)
            texts += sent

    assert got == EXPECTED[persona]
    # Someone else's object is refused as a missing one is.
    for target, code in missing.items():
        assert code == (SIGNED_OUT if persona in ("disabled", "anonymous") else REFUSED), target
    seen = any(MARK in t for t in texts)
    assert seen == (persona == "member_a")  # the owner's replay has it: the check can fail
