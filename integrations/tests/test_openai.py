"""The OpenAI-compatible endpoint, driven by the official `openai` SDK against a live portal:
daphne in its own process, a real Celery worker, the agent's model served by the scripted
OpenAI-compatible server; every request governed as a chat message is."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal

import httpx
import openai
import pytest
from django.core.cache import cache
from oauth2_provider.models import Application

from agents.models import Agent, Conversation, Deployment, ModelRoute, Run, RunState
from agents.services import runs_to_resume
from agents.tasks import run_resume_task
from audit.models import AuditEvent
from audit.services import SYSTEM
from governance.models import Action, ApprovalRequest
from governance.services import access_grant
from integrations.tests.conftest import SECRET, application_for
from tests.model_server import Reply
from tests.processes import daphne_on_test_database
from tools.models import Tool

ANSWER = "The VPN is back up for everyone."


@dataclass
class Live:
    url: str
    model: object  # tests.model_server.ScriptedModelServer

    def token(self, user, scope: str = "agents:run", application=None) -> str:
        """A client-credentials token acting as `user` (its application's account)."""
        application = application or application_for(user, f"Client {uuid.uuid4().hex[:4]}")
        response = httpx.post(
            f"{self.url}/o/token/",
            data={"grant_type": "client_credentials", "scope": scope},
            auth=(application.client_id, SECRET),
        )
        assert response.status_code == 200, response.text
        return response.json()["access_token"]

    def client(self, user, scope: str = "agents:run") -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=self.token(user, scope), max_retries=0, timeout=60
        )


@pytest.fixture
def live(committing_db, server, unused_tcp_port):
    """daphne on the test database (runs need a worker too: `start_worker()`)."""
    from django.db import connection

    with daphne_on_test_database(unused_tcp_port, WARDEN_OPENAI_WAIT_SECONDS="60") as url:
        yield Live(url, server)
    connection.close()  # the flush after the test waits for nobody


def _agent(server, name: str, *, holders=(), tools=()) -> Agent:
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}", num_retries=0)
    Deployment.objects.create(
        route=route, position=1, model="openai/scripted", api_base=server.base(name)
    )
    agent = Agent.objects.create(
        name=name.title(), slug=f"{name}-{uuid.uuid4().hex[:4]}", route=route
    )
    agent.tools.add(*tools)
    for holder in holders:
        for obj in (agent, route, *tools):
            access_grant(obj=obj, holder=holder, action=Action.USE, actor=SYSTEM)
    return agent


@pytest.fixture
def desk(live, people):
    """An agent the integration account may use; `other` is one it may not."""
    return _agent(live.model, "desk", holders=[people.integration])


@pytest.fixture
def other(live, people, team):
    return _agent(live.model, "other", holders=[team])


def test_models_are_exactly_the_agents_the_account_may_use(live, people, desk, other):
    models = live.client(people.integration).models.list()

    assert [(m.id, m.object, m.owned_by) for m in models.data] == [
        (f"agent:{desk.slug}", "model", "warden")
    ]
    assert live.client(people.integration).models.retrieve(f"agent:{desk.slug}").id == (
        f"agent:{desk.slug}"
    )
    with pytest.raises(openai.NotFoundError) as missing:
        live.client(people.integration).models.retrieve(f"agent:{other.slug}")
    assert missing.value.code == "model_not_found"


def test_a_completion_is_a_governed_audited_run_with_the_model_s_answer_and_usage(
    live, people, desk
):
    """An agent that can only answer is run by the web process that waits for it (the fast
    path): no worker runs here, and the run is the same governed, audited run."""
    live.model.script("desk", Reply.say(ANSWER, prompt_tokens=21, completion_tokens=9))

    completion = live.client(people.integration).chat.completions.create(
        model=f"agent:{desk.slug}",
        messages=[
            {"role": "system", "content": "ignored: the agent has its own"},
            {"role": "user", "content": "Is the VPN working?"},
        ],
    )

    run = Run.objects.get()
    assert completion.id == f"chatcmpl-warden-{run.pk}"
    assert completion.model == f"agent:{desk.slug}"
    assert completion.choices[0].message.content == ANSWER
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (21, 9)
    assert completion.usage.total_tokens == 30
    assert completion.warden == {
        "run": run.pk,
        "state": "succeeded",
        "conversation": run.conversation_id,
        "url": f"{live.url}/api/v1/runs/{run.pk}",
    }
    assert (run.actor, run.agent, run.input, run.state) == (
        people.integration,
        desk,
        "Is the VPN working?",
        "succeeded",
    )
    queued = AuditEvent.objects.get(action="run.queued", run=str(run.pk))
    assert (queued.actor_id, queued.actor_type) == (str(people.integration.pk), "user")
    trail = list(AuditEvent.objects.filter(run=str(run.pk)).values_list("action", flat=True))
    assert trail == ["run.queued", "policy.decided", "run.step.model", "run.succeeded"]
    assert [s.kind for s in run.steps.all()] == ["model"]
    assert (run.lease_holder, run.fencing_token) == ("", 1)  # taken once, let go at the end
    # The model saw the agent's conversation, not the caller's system message.
    sent = live.model.requests["desk"][0]["messages"]
    assert [m["role"] for m in sent] == ["user"]
    assert sent[0]["content"] == "Is the VPN working?"


def test_a_web_process_killed_mid_call_leaves_its_run_for_a_worker_to_finish(
    committing_db, server, people, unused_tcp_port, start_worker
):
    """The fast path keeps the durability contract: daphne killed while the model thinks leaves
    the run running under a lease nobody renews; once it lapses the resume job hands the run to
    a worker, which asks the model again and finishes it: one model step, one answer."""
    desk = _agent(server, "desk", holders=[people.integration])
    server.script("desk", Reply.say("never delivered", delay=20), Reply.say(ANSWER))
    daphnes: list = []
    with daphne_on_test_database(
        unused_tcp_port, started=daphnes, WARDEN_RUN_LEASE_SECONDS="2"
    ) as url:
        client = Live(url, server).client(people.integration)

        def ask() -> None:
            with contextlib.suppress(openai.APIConnectionError):  # its server dies
                client.chat.completions.create(
                    model=f"agent:{desk.slug}", messages=[{"role": "user", "content": "VPN?"}]
                )

        asking = threading.Thread(target=ask, daemon=True)
        asking.start()
        _until(lambda: server.count("desk") == 1, "the model was asked")
        held = Run.objects.get()
        assert (held.state, held.fencing_token) == (RunState.RUNNING, 1)
        assert ":web-" in held.lease_holder  # the web process holds it, no worker runs
        daphnes[0].kill()
        daphnes[0].wait()
    asking.join(30)

    _until(lambda: held.pk in runs_to_resume(), "the lapsed lease was found")
    start_worker(WARDEN_RUN_LEASE_SECONDS="2")
    assert run_resume_task() >= 1
    _until(lambda: Run.objects.get().state == RunState.SUCCEEDED, "a worker finished the run")

    run = Run.objects.get()
    assert (run.answer, run.fencing_token, server.count("desk")) == (ANSWER, 2, 2)
    assert [s.kind for s in run.steps.all()] == ["model"]
    trail = list(AuditEvent.objects.filter(run=str(run.pk)).values_list("action", flat=True))
    assert trail == ["run.queued", "policy.decided", "run.step.model", "run.succeeded"]


def _until(condition, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds:g} s: {what}"
        time.sleep(0.1)


def test_a_streamed_completion_sends_the_model_s_words_in_order(live, people, desk):
    live.model.script("desk", Reply.say(ANSWER))  # run by the web process: no worker here

    stream = live.client(people.integration).chat.completions.create(
        model=f"agent:{desk.slug}",
        messages=[{"role": "user", "content": "Is the VPN working?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta]
    assert [p for p in pieces if p] == ["The", " VPN", " is", " back", " up", " for", " everyone."]
    assert "".join(p or "" for p in pieces) == ANSWER
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes == [None] * (len(finishes) - 1) + ["stop"]
    run = Run.objects.get()
    assert chunks[-1].usage.total_tokens == run.prompt_tokens + run.completion_tokens == 18
    assert {c.id for c in chunks} == {f"chatcmpl-warden-{run.pk}"}


def test_refusals_are_errors_the_sdk_understands_and_start_nothing(live, people, desk, other):
    from governance.budgets import budget_reserve, budget_settle
    from governance.models import Budget

    outsider = live.client(people.outsider)
    with pytest.raises(openai.NotFoundError) as unknown:
        outsider.chat.completions.create(
            model=f"agent:{desk.slug}", messages=[{"role": "user", "content": "hi"}]
        )
    assert unknown.value.code == "model_not_found"
    assert unknown.value.status_code == 404
    client = live.client(people.integration)
    with pytest.raises(openai.NotFoundError):  # exists, but not the account's to use
        client.chat.completions.create(
            model=f"agent:{other.slug}", messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.BadRequestError) as malformed:
        client.chat.completions.create(
            model=f"agent:{desk.slug}", messages=[{"role": "assistant", "content": "hi"}]
        )
    assert malformed.value.code == "invalid_request"
    assert malformed.value.param == "messages"
    assert malformed.value.body["message"] == (
        "the last message must be the user's: it is the agent's input"
    )
    with pytest.raises(openai.PermissionDeniedError) as unscoped:
        live.client(people.integration, scope="runs:read").chat.completions.create(
            model=f"agent:{desk.slug}", messages=[{"role": "user", "content": "hi"}]
        )
    assert unscoped.value.body["message"] == "the token lacks the scope 'agents:run'"
    budget = Budget.objects.create(name="Trial", user=people.integration, max_tokens=100)
    budget_reserve(budget_ids=[budget.pk], key="k", tokens=10, cost=Decimal(0))
    budget_settle(key="k", tokens=100, cost=Decimal(0))
    with pytest.raises(openai.PermissionDeniedError) as broke:
        client.chat.completions.create(
            model=f"agent:{desk.slug}", messages=[{"role": "user", "content": "hi"}]
        )
    assert broke.value.code == "budget_exhausted"
    assert broke.value.body["message"].startswith(
        "the monthly budget 'Trial' has no room for this (100 of 100 tokens used or in use)"
    )
    assert Run.objects.count() == 0
    assert Conversation.objects.count() == 0
    assert AuditEvent.objects.filter(action="policy.decided").count() == 1  # the budget's no


def test_a_run_awaiting_approval_is_no_answer_and_says_where_to_look(live, start_worker, people):
    ticket = Tool.objects.get(name="create_ticket")  # risk: write, so a reviewer approves
    ticket.enabled = True
    ticket.save(update_fields=["enabled"])
    helper = _agent(live.model, "helper", holders=[people.integration], tools=[ticket])
    helper.runs_per_user_per_minute = 1
    helper.save(update_fields=["runs_per_user_per_minute"])
    live.model.script(
        "helper", Reply.call("create_ticket", {"title": "VPN down"}), Reply.say("Ticket opened.")
    )
    start_worker()
    client = live.client(people.integration)
    asked = {
        "model": f"agent:{helper.slug}",
        "messages": [{"role": "user", "content": "open a ticket: the VPN is down"}],
        "extra_headers": {"Idempotency-Key": "vpn-ticket"},
    }

    chunks = []
    with pytest.raises(openai.APIError) as streamed:
        chunks.extend(client.chat.completions.create(**asked, stream=True))

    run = Run.objects.get()
    url = f"{live.url}/api/v1/runs/{run.pk}"
    notice = (
        f"Run {run.pk} is waiting for a reviewer to approve a tool call; it continues once they "
        f"decide. Its state and answer: {url}"
    )
    assert run.state == "awaiting_approval"
    assert ApprovalRequest.objects.get().run_id == run.pk
    # The stream ends in an error, not in an answer: no text, no finish_reason "stop".
    assert (streamed.value.code, streamed.value.body["message"]) == (
        "run_awaiting_approval",
        notice,
    )
    assert [c.choices[0].finish_reason for c in chunks] == [None]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ""
    # The same key again: the same run, as it stands, at once: a 409 the SDK does not retry.
    with pytest.raises(openai.ConflictError) as again:
        client.chat.completions.create(**asked)
    assert again.value.code == "run_awaiting_approval"
    assert again.value.response.headers["x-should-retry"] == "false"
    assert again.value.response.headers["Location"] == url
    problem = again.value.response.json()
    assert (problem["type"], problem["detail"]) == ("/api/problems/run-pending", notice)
    assert problem["warden"] == {
        "run": run.pk,
        "state": "awaiting_approval",
        "conversation": run.conversation_id,
        "url": url,
    }
    assert len(live.model.requests["helper"]) == 1  # no retry started anything
    # A second run in the same minute is one too many for this agent (this minute's window
    # and the next, in case the clock turns a minute meanwhile, already hold one run).
    minute = int(time.time() // 60)
    for window in (minute, minute + 1):
        cache.add(f"run-rate:{helper.pk}:user:{people.integration.pk}:{window}", 1, timeout=180)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(
            model=f"agent:{helper.slug}", messages=[{"role": "user", "content": "and another"}]
        )
    assert limited.value.code == "rate_limit_exceeded"
    assert 0 < int(limited.value.response.headers["Retry-After"]) <= 60
    assert limited.value.body["message"].startswith(
        f"the agent {helper.name} takes at most 1 runs a minute by one user"
    )
    assert Run.objects.count() == 1


def test_a_held_answer_is_no_answer_to_the_sdk_nor_to_langchain(live, people):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel

    from agents.orchestrator import run_execute
    from agents.submit import run_submit

    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}", num_retries=0)
    Deployment.objects.create(route=route, position=1, model="warden-local/demo")
    agent = Agent.objects.create(
        name="Offline", slug=f"offline-{uuid.uuid4().hex[:4]}", route=route
    )  # no knowledge: "I don't know" at confidence 0, under the agent's threshold
    for obj in (agent, route):
        access_grant(obj=obj, holder=people.integration, action=Action.USE, actor=SYSTEM)
    application = application_for(people.integration, "Framework")
    key = "held-1"
    run = run_submit(
        actor=people.integration,
        agent=agent,
        input="What is the boiling point of tungsten?",
        idempotency_key=key,
        surface="openai",
        client_application_id=application.pk,
        stream=False,
    )
    run_execute(run_id=run.pk, holder="test")
    run.refresh_from_db()
    assert run.state == "awaiting_review"
    url = f"{live.url}/api/v1/runs/{run.pk}"
    notice = (
        f"Run {run.pk}'s answer is held for a reviewer; it is released once they decide. "
        f"Its state and answer: {url}"
    )
    token = live.token(people.integration, application=application)
    asked = {
        "model": f"agent:{agent.slug}",
        "messages": [{"role": "user", "content": "What is the boiling point of tungsten?"}],
        "extra_headers": {"Idempotency-Key": key},  # the run above, as it stands
    }
    sdk = openai.OpenAI(base_url=f"{live.url}/v1", api_key=token, timeout=60)

    with pytest.raises(openai.ConflictError) as plain:
        sdk.chat.completions.create(**asked)
    with pytest.raises(openai.APIError) as streamed:
        list(sdk.chat.completions.create(**asked, stream=True))

    class Boiling(BaseModel):
        celsius: float

    chat = ChatOpenAI(
        model=f"agent:{agent.slug}",
        base_url=f"{live.url}/v1",
        api_key=token,
        default_headers={"Idempotency-Key": key},
        timeout=60,
    )
    with pytest.raises(openai.ConflictError) as structured:
        chat.with_structured_output(Boiling, method="json_mode").invoke(
            "What is the boiling point of tungsten?"
        )
    with pytest.raises(openai.ConflictError) as invoked:
        chat.invoke("What is the boiling point of tungsten?")

    for raised in (plain, streamed, structured, invoked):
        assert (raised.value.code, raised.value.body["message"]) == ("run_awaiting_review", notice)
    assert plain.value.response.json()["warden"]["url"] == url
    assert Run.objects.count() == 1  # every request was answered by the run as it stands
    assert Run.objects.get().answer == ""  # nothing of the held answer went out


@pytest.mark.django_db
def test_malformed_requests_are_400s_that_name_the_field(client, people, governed):
    from datetime import timedelta

    from django.utils import timezone
    from oauth2_provider.models import AccessToken

    application = Application.objects.create(
        name="CRM",
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
        user=people.integration,
    )
    AccessToken.objects.create(
        application=application,
        token="t0ken",
        scope="agents:run",
        expires=timezone.now() + timedelta(hours=1),
    )
    model = f"agent:{governed.agent.slug}"
    hi = [{"role": "user", "content": "hi"}]

    def post(body, **headers):
        data = body if isinstance(body, str) else json.dumps(body)
        return client.post(
            "/v1/chat/completions",
            data,
            content_type="application/json",
            HTTP_AUTHORIZATION="Bearer t0ken",
            **headers,
        )

    bad, unknown = "invalid_request", "conversation_not_found"
    cases = [
        ("{not json", 400, "parse_error", None),
        ([1], 400, "invalid_request", "body"),
        ({"messages": hi}, 400, "invalid_request", "model"),
        ({"model": model, "messages": []}, 400, "invalid_request", "messages"),
        ({"model": model, "messages": [{"content": "hi"}]}, 400, "invalid_request", "messages[0]"),
        (
            {"model": model, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            400,
            "invalid_request",
            "messages[0].content",
        ),
        ({"model": model, "messages": hi, "n": 2}, 400, "invalid_request", "n"),
        ({"model": model, "messages": hi, "stream": "yes"}, 400, "invalid_request", "stream"),
        ({"model": model, "messages": hi, "tools": [{}]}, 400, "invalid_request", "tools"),
        ({"model": model, "messages": hi, "conversation": "1"}, 400, bad, "conversation"),
        ({"model": "gpt-4o", "messages": hi}, 404, "model_not_found", None),
        ({"model": model, "messages": hi, "conversation": 10**9}, 404, unknown, None),
    ]
    for body, status, code, param in cases:
        response = post(body)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), body
        assert response.json()["error"]["param"] == param, body
        assert response["Content-Type"] == "application/problem+json"
    assert Run.objects.count() == 0
    anonymous = client.post("/v1/chat/completions", {}, content_type="application/json")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["type"] == "authentication_error"
    wrong_method = client.get("/v1/chat/completions", HTTP_AUTHORIZATION="Bearer t0ken")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
