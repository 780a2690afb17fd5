"""The invocation ledger is fenced by the run's lease token: a worker whose lease was taken over
can neither claim a call nor record its outcome (it changes nothing, and says so in the log)."""

import logging
import threading
import time
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import F

from tools.models import Tool, ToolInvocation
from tools.registry import ToolContext
from tools.services import Fenced, tool_invoke
from tools.tests.endpoint import Answer

pytestmark = pytest.mark.usefixtures("committing_db")


@pytest.fixture
def user():
    return get_user_model().objects.create_user(f"u-{uuid.uuid4().hex[:6]}")


@pytest.fixture
def tool(crm):
    return Tool.objects.create(
        name=f"order_{uuid.uuid4().hex[:6]}",
        description="Place an order.",
        kind="http",
        parameters={"type": "object"},
        config={"method": "POST", "url": crm.url("/orders"), "allow_networks": ["127.0.0.1/32"]},
        enabled=True,
    )


def test_a_stale_holders_outcome_changes_nothing(crm, tool, user, caplog):
    """Token 1 calls; while the endpoint holds the call, token 2 claims the row (the run was
    taken over); token 1's outcome then writes nothing."""
    key = "run:5:step:0:call:0"
    crm.answer("/orders", Answer(body={"order": 1}, delay=1))
    raised = []

    def stale() -> None:
        try:
            tool_invoke(tool=tool, arguments={}, key=key, context=ToolContext(user, fence=1))
        except Fenced as exc:
            raised.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=stale)
    with caplog.at_level(logging.WARNING, logger="tools.services"):
        thread.start()
        deadline = time.monotonic() + 30
        while not crm.requests:  # the endpoint holds token 1's call
            assert time.monotonic() < deadline
            assert thread.is_alive()
            time.sleep(0.02)
        ToolInvocation.objects.filter(key=key).update(fence=2, attempts=F("attempts") + 1)
        thread.join(30)

    assert len(raised) == 1
    row = ToolInvocation.objects.get(key=key)
    assert (row.status, row.fence, row.attempts, row.result) == ("started", 2, 2, None)
    assert f"stale write of {key} under token 1 ignored" in caplog.text


def test_a_stale_holder_cannot_claim_a_call_a_newer_lease_holds(crm, tool, user, caplog):
    key = "run:6:step:0:call:0"
    ToolInvocation.objects.create(key=key, tool=tool.name, status="started", fence=2, attempts=1)
    crm.answer("/orders", Answer(body={"order": 2}))

    with caplog.at_level(logging.WARNING, logger="tools.services"), pytest.raises(Fenced):
        tool_invoke(tool=tool, arguments={}, key=key, context=ToolContext(user, fence=1))

    assert crm.requests == []  # no call was made
    row = ToolInvocation.objects.get(key=key)
    assert (row.status, row.fence, row.attempts) == ("started", 2, 1)
    assert f"stale claim of {key} under token 1 ignored" in caplog.text


def test_a_newer_holder_claims_a_started_call_and_counts_it(crm, tool, user):
    """The first holder died mid-call: the next one calls again with the same key (the endpoint
    deduplicates on it), and the ledger says it was the second start."""
    key = "run:7:step:0:call:0"
    ToolInvocation.objects.create(key=key, tool=tool.name, status="started", fence=1, attempts=1)
    crm.answer("/orders", Answer(body={"order": 3}))

    outcome = tool_invoke(tool=tool, arguments={}, key=key, context=ToolContext(user, fence=2))

    assert outcome.ok
    assert [r.headers["idempotency-key"] for r in crm.requests] == [key]
    row = ToolInvocation.objects.get(key=key)
    assert (row.status, row.fence, row.attempts, row.result) == ("succeeded", 2, 2, {"order": 3})


def test_a_finished_call_is_reused_whatever_the_token(crm, tool, user):
    key = "run:8:step:0:call:0"
    crm.answer("/orders", Answer(body={"order": 4}))
    first = tool_invoke(tool=tool, arguments={}, key=key, context=ToolContext(user, fence=1))

    again = tool_invoke(tool=tool, arguments={}, key=key, context=ToolContext(user, fence=2))

    assert (first.reused, again.reused, again.result) == (False, True, {"order": 4})
    assert len(crm.requests) == 1
    row = ToolInvocation.objects.get(key=key)
    assert (row.status, row.fence, row.attempts) == ("succeeded", 1, 1)
