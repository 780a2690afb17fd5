"""Open websockets' access checks, batched (agents.consumers._verdicts, _Checks and
agents.revocation.session_users): the same verdict as one socket's check, in a fixed number of
queries however many sockets ask, and checks asked together answered by one trip."""

import asyncio
from importlib import import_module

import pytest
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, get_user_model
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext

from agents import consumers
from agents.consumers import FORBIDDEN, UNAUTHENTICATED, Probe, _verdicts
from agents.revocation import session_user, session_users
from portal.tests.test_websocket import a_run, agent  # noqa: F401 - a fixture
from tests.test_live_access import signed_in

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(agent):  # noqa: F811 - the fixture imported above
    users = [
        get_user_model().objects.create_user(f"u{i}", password="pw-0123456789") for i in range(6)
    ]
    runs = [a_run(user, agent) for user in users]
    return users, [run.conversation for run in runs], runs


def probe(user, key, *, runs=(), conversations=()) -> Probe:
    return Probe(user.pk, key, frozenset(runs), frozenset(conversations), frozenset())


def test_verdicts_are_each_socket_s_own_in_a_fixed_number_of_queries(world):
    users, conversations, runs = world
    keys = [signed_in(u) for u in users]
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


def test_session_users_in_bulk_say_whom_each_session_signs_in(world):
    users, _, _ = world
    keys = [signed_in(u) for u in users]
    unknown_backend = import_module(settings.SESSION_ENGINE).SessionStore(signed_in(users[0]))
    unknown_backend[BACKEND_SESSION_KEY] = "not.a.Backend"
    unknown_backend.save()
    users[1].set_password("another-0123456789")  # its sessions no longer sign it in
    users[1].save()
    found = session_users([*keys, unknown_backend.session_key, "no-such-session", None])
    assert found == {
        **dict(zip(keys, [users[0], None, *users[2:]], strict=True)),
        unknown_backend.session_key: None,
        "no-such-session": None,
    }
    assert session_user(keys[0]) == users[0]
    assert session_user(keys[1]) is None


@pytest.mark.usefixtures("committing_db")  # the checks read on the database thread
def test_checks_asked_together_are_answered_by_one_trip(world, monkeypatch):
    users, conversations, _ = world
    keys = [signed_in(u) for u in users]
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
