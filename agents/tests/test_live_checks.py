"""Open websockets' access checks, batched (agents.consumers._verdicts, _Checks and
agents.revocation.session_users): the same verdict as one socket's check, in a fixed number of
queries however many sockets ask, and checks asked together answered by one trip."""

import asyncio
import uuid
from importlib import import_module

import pytest
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext

from agents import consumers
from agents.consumers import FORBIDDEN, UNAUTHENTICATED, Probe, _verdicts
from agents.models import Agent, Conversation, Deployment, ModelRoute, Run
from agents.revocation import session_user, session_users

pytestmark = pytest.mark.django_db


def session(user, *, backend="django.contrib.auth.backends.ModelBackend") -> str:
    store = import_module(settings.SESSION_ENGINE).SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = backend
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.save()
    return store.session_key


@pytest.fixture
def world():
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}")
    Deployment.objects.create(route=route, position=1, model="warden-local/demo")
    agent = Agent.objects.create(name="A", slug=f"a-{uuid.uuid4().hex[:6]}", route=route)
    users = [
        get_user_model().objects.create_user(f"u{i}", password="pw-0123456789") for i in range(6)
    ]
    conversations = [Conversation.objects.create(owner=u, agent=agent) for u in users]
    runs = [
        Run.objects.create(agent=agent, conversation=c, actor=c.owner, input="hi")
        for c in conversations
    ]
    return users, conversations, runs


def probe(user, key, *, runs=(), conversations=()) -> Probe:
    return Probe(user.pk, key, frozenset(runs), frozenset(conversations), frozenset())


def test_verdicts_are_each_socket_s_own_in_a_fixed_number_of_queries(world):
    users, conversations, runs = world
    keys = [session(u) for u in users]
    # u1 changed their password (their sessions no longer sign them in); u2 was disabled; u3's
    # socket follows u4's run; u5's session is gone.
    users[1].set_password("another-0123456789")
    users[1].save()
    get_user_model().objects.filter(pk=users[2].pk).update(is_active=False)
    import_module(settings.SESSION_ENGINE).SessionStore(keys[5]).delete()
    probes = [
        probe(u, k, runs=[r.pk], conversations=[c.pk])
        for u, k, r, c in zip(users, keys, runs, conversations, strict=True)
    ]
    probes[3] = probe(users[3], keys[3], runs=[runs[4].pk])
    probes.append(probe(users[0], keys[4]))  # a session of someone else's, given as u0's
    probes.append(probe(users[0], None))
    probes.append(probe(users[0], keys[0], conversations=[10**9]))  # gone

    with CaptureQueriesContext(connection) as queries:
        codes = _verdicts(probes)
    assert codes == [
        None,
        UNAUTHENTICATED,
        UNAUTHENTICATED,
        FORBIDDEN,
        None,
        UNAUTHENTICATED,
        UNAUTHENTICATED,
        UNAUTHENTICATED,
        FORBIDDEN,
    ]
    assert len(queries) == 4  # sessions, users, runs, conversations

    many = [probe(users[0], keys[0], runs=[runs[0].pk], conversations=[conversations[0].pk])] * 200
    with CaptureQueriesContext(connection) as queries:
        assert _verdicts(many) == [None] * 200
    assert len(queries) == 4


def test_session_users_agree_with_one_session_s_check(world):
    users, _, _ = world
    keys = [session(u) for u in users] + [
        session(users[0], backend="not.a.Backend"),
        "no-such-session",
    ]
    users[1].set_password("another-0123456789")
    users[1].save()
    found = session_users(keys)
    assert {k: (u.pk if u else None) for k, u in found.items()} == {
        k: (u.pk if u else None) for k in keys for u in [session_user(k)]
    }
    assert found[keys[0]] == users[0]
    assert found[keys[1]] is None
    assert found[keys[-2]] is None


@pytest.mark.usefixtures("committing_db")  # the checks read on the database thread
def test_checks_asked_together_are_answered_by_one_trip(world, monkeypatch):
    users, conversations, _ = world
    keys = [session(u) for u in users]
    trips = []
    real = consumers._verdicts

    def counted(probes):
        trips.append(len(probes))
        return real(probes)

    monkeypatch.setattr(consumers, "_verdicts", counted)

    async def ask():
        checks = consumers._Checks()
        asked = [
            checks.verdict(probe(u, k, conversations=[c.pk]))
            for u, k, c in zip(users, keys, conversations, strict=True)
        ]
        return await asyncio.gather(*asked)

    assert asyncio.run(ask()) == [None] * len(users)
    assert trips == [len(users)]


@pytest.mark.parametrize(
    ("raised", "expected"),
    [(DatabaseError("gone"), consumers.UNAVAILABLE), (RuntimeError("bug"), RuntimeError)],
)
def test_a_failed_batch_answers_every_socket_in_it(monkeypatch, raised, expected):
    """The database away: every socket in the batch is told (4503: the page reconnects). Any
    other error reaches every socket's check, none is left waiting."""

    def failing(probes):
        raise raised

    monkeypatch.setattr(consumers, "_verdicts", failing)

    async def ask():
        checks = consumers._Checks()
        asked = [
            checks.verdict(Probe(i, f"k{i}", frozenset(), frozenset(), frozenset()))
            for i in range(5)
        ]
        return await asyncio.wait_for(asyncio.gather(*asked, return_exceptions=True), 10)

    answers = asyncio.run(ask())
    if isinstance(expected, type):
        assert all(isinstance(a, expected) for a in answers), answers
    else:
        assert answers == [expected] * 5
