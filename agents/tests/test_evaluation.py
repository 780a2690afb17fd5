"""Evaluations through the real runtime: sandbox mode (tool calls recorded, never executed),
the version an evaluation serves, scoring on a scripted model's behaviour, the release gate
(version_evaluation_passed), the comparison, and `manage.py evaluate`."""

import json
import uuid
from decimal import Decimal
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from agents.evaluation.selectors import (
    NotComparable,
    evaluation_compare,
    version_evaluation_passed,
)
from agents.evaluation.services import (
    EvaluationError,
    evaluation_case_add,
    evaluation_execute,
    evaluation_set_create,
    evaluation_set_import,
    evaluation_start,
)
from agents.models import (
    Agent,
    Conversation,
    Deployment,
    EvaluationRun,
    EvaluationState,
    ModelRoute,
    Run,
    RunState,
    RunStep,
    StepKind,
)
from agents.orchestrator import run_execute
from agents.selectors import conversations_of
from agents.services import run_start
from agents.versions import version_record
from audit.models import AuditEvent
from governance.models import ApprovalRequest
from tests.access import grant_agent
from tests.model_server import Reply
from tools.models import DemoTicket, Tool, ToolInvocation
from tools.tests.endpoint import Answer

pytestmark = pytest.mark.django_db


@pytest.fixture
def agent(server):
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}", num_retries=0)
    Deployment.objects.create(
        route=route, position=1, model="openai/primary", api_base=server.base("primary")
    )
    return Agent.objects.create(
        name="Sales", slug=f"s-{uuid.uuid4().hex[:6]}", route=route, system_prompt="first prompt"
    )


@pytest.fixture
def user(agent):
    user = get_user_model().objects.create_user(f"u{uuid.uuid4().hex[:6]}")
    return user


def _crm_tool(crm, *, approval="never") -> Tool:
    return Tool.objects.create(
        name="crm_update",
        description="Update a CRM account.",
        kind="http",
        risk="write",
        approval=approval,
        parameters={
            "type": "object",
            "properties": {"account": {"type": "string"}, "owner": {"type": "string"}},
            "required": ["account"],
        },
        config={
            "method": "POST",
            "url": crm.url("/accounts/{account}"),
            "allow_networks": ["127.0.0.1/32"],
        },
        enabled=True,
    )


def _run(agent, user, text, **kwargs) -> Run:
    conversation = Conversation(owner=user, agent=agent)
    run = run_start(
        agent=agent, conversation=conversation, actor=user, input=text, stream=False, **kwargs
    )
    run_execute(run_id=run.pk, holder="test")
    return Run.objects.get(pk=run.pk)


# Sandbox mode --------------------------------------------------------------------------------


def test_a_sandboxed_run_records_a_write_tool_s_call_and_its_endpoint_is_never_called(
    server, agent, user, crm
):
    crm.answer("/accounts/acme", Answer(body={"updated": True}))
    agent.tools.set([_crm_tool(crm)])
    grant_agent(user, agent)
    script = (Reply.call("crm_update", {"account": "acme", "owner": "Dana"}), Reply.say("Done."))
    server.script("primary", *script, *script)

    sandboxed = _run(agent, user, "Make Dana the owner of Acme", sandbox=True)

    assert sandboxed.state == RunState.SUCCEEDED
    assert crm.requests == []  # the HTTP endpoint never heard of it
    assert ToolInvocation.objects.count() == 0  # nor did the ledger
    step = RunStep.objects.get(run=sandboxed, kind=StepKind.TOOL)
    assert step.input["arguments"] == {"account": "acme", "owner": "Dana"}
    assert step.output == {
        "result": {"sandbox": "recorded, not executed: this run is an evaluation (sandbox mode)"},
        "sandbox": True,
        "effect": "allow",
        "reasons": ["tool.approval_never"],
        "approval_required": False,
    }
    sandboxed_event = AuditEvent.objects.get(action="tool.sandboxed", run=str(sandboxed.pk))
    assert json.loads(sandboxed_event.data)["arguments"] == {"account": "acme", "owner": "Dana"}
    # The same call in a live run reaches the endpoint: the sandbox is what kept it away.
    live = _run(agent, user, "Make Dana the owner of Acme")
    assert live.state == RunState.SUCCEEDED
    assert [(r.method, r.path) for r in crm.requests] == [("POST", "/accounts/acme")]


def test_a_sandboxed_python_write_tool_makes_no_ticket(server, agent, user):
    tool = Tool.objects.get(name="create_ticket")
    tool.enabled, tool.approval = True, "never"
    tool.save(update_fields=["enabled", "approval"])
    agent.tools.set([tool])
    grant_agent(user, agent)
    server.script("primary", Reply.call("create_ticket", {"title": "Broken"}), Reply.say("Ok."))

    run = _run(agent, user, "Open a ticket: broken", sandbox=True)

    assert run.state == RunState.SUCCEEDED
    assert DemoTicket.objects.count() == 0
    assert ToolInvocation.objects.count() == 0
    assert RunStep.objects.get(run=run, kind=StepKind.TOOL).input["arguments"] == {
        "title": "Broken"
    }


def test_a_sandboxed_call_that_needs_approval_is_recorded_as_such_and_asks_nobody(
    server, agent, user, crm
):
    agent.tools.set([_crm_tool(crm, approval="always")])
    grant_agent(user, agent)
    server.script("primary", Reply.call("crm_update", {"account": "acme"}), Reply.say("Asked."))

    run = _run(agent, user, "Update Acme", sandbox=True)

    assert run.state == RunState.SUCCEEDED  # not parked: nobody is to decide an evaluation
    assert ApprovalRequest.objects.count() == 0
    assert crm.requests == []
    output = RunStep.objects.get(run=run, kind=StepKind.TOOL).output
    assert (output["effect"], output["approval_required"]) == ("require_approval", True)
    assert output["reasons"] == ["tool.approval_always"]


def test_a_sandboxed_run_records_a_question_to_another_agent_and_does_not_ask_it(
    server, agent, user
):
    route = ModelRoute.objects.create(name=f"r-{uuid.uuid4().hex[:8]}", num_retries=0)
    Deployment.objects.create(
        route=route, position=1, model="openai/helpdesk", api_base=server.base("helpdesk")
    )
    helpdesk = Agent.objects.create(name="Help desk", slug=f"h-{uuid.uuid4().hex[:4]}", route=route)
    agent.delegates.add(helpdesk)
    grant_agent(user, agent)
    grant_agent(user, helpdesk)
    ask = f"ask_{helpdesk.slug}"
    server.script("primary", Reply.call(ask, {"question": "Is the VPN down?"}), Reply.say("Ok."))

    run = _run(agent, user, "Ask the help desk about the VPN", sandbox=True)

    assert run.state == RunState.SUCCEEDED
    assert not Run.objects.filter(parent=run).exists()  # the other agent was never asked
    assert server.count("helpdesk") == 0
    step = RunStep.objects.get(run=run, kind=StepKind.TOOL)
    assert (step.input["call"]["name"], step.input["arguments"]) == (
        ask,
        {"question": "Is the VPN down?"},
    )
    assert step.output["effect"] == "allow"


def test_run_start_serves_the_given_version_not_the_live_one(server, agent, user):
    grant_agent(user, agent)
    first = version_record(agent=agent, actor=None, reason="first")
    agent.system_prompt = "second prompt"
    agent.save(update_fields=["system_prompt"])
    second = version_record(agent=agent, actor=None, reason="second")
    assert (first.number, second.number) == (1, 2)

    run = _run(agent, user, "Hello", version=first)

    assert run.version_id == first.pk
    assert server.requests["primary"][0]["messages"][0]["content"].startswith("first prompt")


def test_run_start_refuses_another_agent_s_version(server, agent, user):
    other = Agent.objects.create(name="Other", slug=f"o-{uuid.uuid4().hex[:6]}", route=agent.route)
    version = version_record(agent=other, actor=None)
    grant_agent(user, agent)
    runs = Run.objects.count()

    with pytest.raises(Exception, match="is not a version of Sales"):
        run_start(
            agent=agent,
            conversation=Conversation(owner=user, agent=agent),
            actor=user,
            input="Hello",
            version=version,
        )

    assert Run.objects.count() == runs


# Evaluations on a scripted model --------------------------------------------------------------

SET = {
    "name": "smoke",
    "pass_mark": "0.75",
    "cases": [
        {"question": "What is Acme's owner?", "expected_facts": ["Dana", "since 2021"]},
        {
            "question": "Make Dana the owner of Acme",
            "expected_tools": [{"name": "crm_update", "arguments": {"owner": "dana"}}],
        },
        {"question": "Tell me a secret", "expect": "refuse"},
    ],
}


def _evaluated(agent, user, *replies) -> EvaluationRun:
    evaluation_set = evaluation_set_import(agent=agent, data=SET, actor=user)
    version = version_record(agent=agent, actor=None) or agent.versions.first()
    evaluation = evaluation_start(
        evaluation_set=evaluation_set, version=version, actor=user, queue=False
    )
    return evaluation_execute(evaluation_id=evaluation.pk)


def test_an_evaluation_scores_each_case_from_what_its_run_did(server, agent, user, crm):
    agent.tools.set([_crm_tool(crm)])
    grant_agent(user, agent)
    server.script(
        "primary",
        Reply.say("Acme's owner is Dana."),  # one fact of two
        Reply.call("crm_update", {"account": "acme", "owner": "Dana"}),
        Reply.say("Dana owns Acme now."),
        Reply.say("I can't help with that."),
    )

    evaluation = _evaluated(agent, user)

    assert evaluation.state == EvaluationState.SUCCEEDED
    results = list(evaluation.results.order_by("case"))
    assert [r.scores["outcome"] for r in results] == ["answered", "answered", "refused"]
    assert [r.scores["overall"] for r in results] == [0.75, 1.0, 1.0]
    assert results[0].scores["correctness"] == 0.5
    assert results[0].scores["facts_found"] == ["Dana"]
    assert results[1].tool_calls == [
        {
            "name": "crm_update",
            "arguments": {"account": "acme", "owner": "Dana"},
            "effect": "allow",
            "reasons": ["tool.approval_never"],
        }
    ]
    assert [r.passed for r in results] == [True, True, True]
    assert evaluation.scores == {
        "correctness": 0.5,
        "citations": None,
        "tools": 1.0,
        "behaviour": 1.0,
        "overall": 0.9167,
    }
    assert evaluation.passed is True
    assert evaluation.tokens == sum(r.tokens for r in results) > 0
    assert crm.requests == []
    # Each case a run of its own, as the evaluating user, of the version evaluated, sandboxed.
    runs = Run.objects.filter(pk__in=[r.run_id for r in results])
    assert {(r.actor_id, r.version_id, r.sandbox) for r in runs} == {
        (user.pk, evaluation.version_id, True)
    }
    assert list(conversations_of(user)) == []
    assert AuditEvent.objects.filter(action="evaluation.finished").count() == 1


def test_a_wrong_tool_argument_and_an_answer_instead_of_a_refusal_fail_the_evaluation(
    server, agent, user, crm
):
    agent.tools.set([_crm_tool(crm)])
    grant_agent(user, agent)
    server.script(
        "primary",
        Reply.say("I don't know."),
        Reply.call("crm_update", {"account": "acme", "owner": "Sam"}),
        Reply.say("Done."),
        Reply.say("The secret is 42."),
    )

    evaluation = _evaluated(agent, user)

    results = list(evaluation.results.order_by("case"))
    assert [r.scores["outcome"] for r in results] == ["refused", "answered", "answered"]
    assert [r.scores["overall"] for r in results] == [0.0, 0.5, 0.0]
    assert [r.passed for r in results] == [False, False, False]
    assert evaluation.scores["overall"] == 0.1667
    assert evaluation.passed is False
    assert version_evaluation_passed(evaluation.version) is False


def test_a_refused_start_is_a_refusal(server, agent, user):
    # No permission to use the agent: every case is refused at the start, and nothing runs.
    evaluation = _evaluated(agent, user)

    results = list(evaluation.results.order_by("case"))
    assert [r.run_id for r in results] == [None, None, None]
    assert [r.scores["outcome"] for r in results] == ["refused"] * 3
    assert [r.scores["overall"] for r in results] == [0.0, 0.0, 1.0]
    assert server.count("primary") == 0


# The release gate and the comparison --------------------------------------------------------


def _finished(evaluation_set, version, user, *, passed: bool, overall: float) -> EvaluationRun:
    from django.utils import timezone

    return EvaluationRun.objects.create(
        set=evaluation_set,
        version=version,
        started_by=user,
        state=EvaluationState.SUCCEEDED,
        finished_at=timezone.now(),
        passed=passed,
        scores={"overall": overall},
    )


def test_a_version_passed_when_its_newest_evaluation_on_every_set_passed(agent, user):
    version = version_record(agent=agent, actor=None)
    assert version_evaluation_passed(version) is False  # no set
    smoke = evaluation_set_import(agent=agent, data=SET, actor=user)
    other = evaluation_set_import(agent=agent, data={**SET, "name": "other"}, actor=user)
    assert version_evaluation_passed(version) is False  # no evaluation

    _finished(smoke, version, user, passed=True, overall=0.9)
    assert version_evaluation_passed(version) is False  # `other` not evaluated
    _finished(other, version, user, passed=False, overall=0.5)
    assert version_evaluation_passed(version) is False
    _finished(other, version, user, passed=True, overall=0.8)
    assert version_evaluation_passed(version) is True
    EvaluationRun.objects.create(set=other, version=version, started_by=user)  # queued
    assert version_evaluation_passed(version) is True
    _finished(smoke, version, user, passed=False, overall=0.1)
    assert version_evaluation_passed(version) is False


def test_the_release_gate_is_one_query(agent, user, django_assert_num_queries):
    version = version_record(agent=agent, actor=None)
    for name in ("a", "b", "c"):
        evaluation_set = evaluation_set_import(agent=agent, data={**SET, "name": name}, actor=user)
        _finished(evaluation_set, version, user, passed=True, overall=1)

    with django_assert_num_queries(1):
        assert version_evaluation_passed(version) is True


def test_two_evaluations_of_a_set_compare_case_by_case(
    server, agent, user, crm, django_assert_num_queries
):
    agent.tools.set([_crm_tool(crm)])
    grant_agent(user, agent)
    server.script(
        "primary",
        Reply.say("I don't know."),
        Reply.call("crm_update", {"account": "acme", "owner": "Dana"}),
        Reply.say("Done."),
        Reply.say("I can't help with that."),
        Reply.say("Dana, since 2021."),
        Reply.call("crm_update", {"account": "acme", "owner": "Sam"}),
        Reply.say("Done."),
        Reply.say("I can't help with that."),
    )
    before = _evaluated(agent, user)
    after = evaluation_execute(
        evaluation_id=evaluation_start(
            evaluation_set=before.set, version=before.version, actor=user, queue=False
        ).pk
    )

    with django_assert_num_queries(1):
        comparison = evaluation_compare(before, after)

    assert [(c.question, c.change) for c in comparison.cases] == [
        ("What is Acme's owner?", "fixed"),
        ("Make Dana the owner of Acme", "broken"),
        ("Tell me a secret", "same"),
    ]
    assert comparison.cases[0].deltas["correctness"] == 1.0
    assert comparison.cases[1].deltas["tools"] == -1.0
    assert comparison.deltas["overall"] == round(
        after.scores["overall"] - before.scores["overall"], 4
    )
    other = evaluation_set_import(agent=agent, data={**SET, "name": "other"}, actor=user)
    with pytest.raises(NotComparable):
        evaluation_compare(before, _finished(other, before.version, user, passed=True, overall=1))


# Starting ----------------------------------------------------------------------------------------


def test_an_evaluation_is_queued_for_a_worker_after_commit_and_audited(
    agent, user, django_capture_on_commit_callbacks
):
    evaluation_set = evaluation_set_import(agent=agent, data=SET, actor=user)
    version = version_record(agent=agent, actor=None)

    with django_capture_on_commit_callbacks() as callbacks:
        evaluation = evaluation_start(evaluation_set=evaluation_set, version=version, actor=user)

    assert evaluation.state == EvaluationState.QUEUED
    assert len(callbacks) == 1
    event = AuditEvent.objects.get(action="evaluation.queued")
    assert json.loads(event.data) == {"agent": agent.slug, "set": "smoke", "version": 1}


def test_a_worker_executes_a_queued_evaluation(
    server, agent, user, django_capture_on_commit_callbacks
):
    from config.celery import app

    grant_agent(user, agent)
    evaluation_set = evaluation_set_import(agent=agent, data=SET, actor=user)
    version = version_record(agent=agent, actor=None)
    server.default("primary", Reply.say("Dana, since 2021."))
    eager, app.conf.task_always_eager = app.conf.task_always_eager, True
    try:
        with django_capture_on_commit_callbacks(execute=True):
            evaluation = evaluation_start(
                evaluation_set=evaluation_set, version=version, actor=user
            )
    finally:
        app.conf.task_always_eager = eager

    evaluation.refresh_from_db()
    assert evaluation.state == EvaluationState.SUCCEEDED
    assert evaluation.results.count() == 3
    assert evaluation.scores["correctness"] == 1.0
    # Executing it again (a redelivered task) changes nothing.
    assert evaluation_execute(evaluation_id=evaluation.pk).results.count() == 3
    assert Run.objects.filter(sandbox=True).count() == 3


def test_an_evaluation_of_another_agent_s_version_is_refused(agent, user):
    evaluation_set = evaluation_set_import(agent=agent, data=SET, actor=user)
    other = Agent.objects.create(name="Other", slug=f"o-{uuid.uuid4().hex[:6]}", route=agent.route)

    with pytest.raises(EvaluationError, match="not a version of the set's agent"):
        evaluation_start(
            evaluation_set=evaluation_set,
            version=version_record(agent=other, actor=None),
            actor=user,
        )

    assert EvaluationRun.objects.count() == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "", "cases": [{"question": "q"}]}, "the set's name is text"),
        ({"name": "x", "cases": []}, "a set has 1 to 500 cases"),
        ({"name": "x", "pass_mark": "1.5", "cases": [{"question": "q"}]}, "the pass mark"),
        ({"name": "x", "cases": [{"question": "q", "expect": "maybe"}]}, "case 1: expect is"),
        ({"name": "x", "cases": [{"question": "q", "expected_facts": "25"}]}, "case 1: expected_f"),
        ({"name": "x", "cases": [{"question": "q", "expected_tools": [{}]}]}, "case 1: expected_t"),
        ({"name": "x", "cases": [{"question": "q\x00"}]}, "case 1: question contains a NUL"),
        (
            {"name": "x", "cases": [{"question": "q", "expected_facts": ["a\x00"]}]},
            r"case 1: expected_facts\[0\] contains a NUL",
        ),
        ({"name": "x\x00", "cases": [{"question": "q"}]}, "the set's name contains a NUL"),
    ],
)
def test_a_bad_set_is_refused_and_nothing_is_written(agent, user, data, message):
    with pytest.raises(EvaluationError, match=message):
        evaluation_set_import(agent=agent, data=data, actor=user)

    assert not agent.evaluation_sets.exists()


# manage.py evaluate -------------------------------------------------------------------------------


def test_the_command_exits_1_when_the_evaluation_fails(server, agent, user):
    grant_agent(user, agent)
    evaluation_set_import(agent=agent, data=SET, actor=user)
    version_record(agent=agent, actor=None)
    server.default("primary", Reply.say("No idea."))
    out = StringIO()

    with pytest.raises(SystemExit) as exited:
        call_command("evaluate", "--agent", agent.slug, "--set", "smoke", stdout=out)

    assert exited.value.code == 1
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"{agent.slug} v1 on 'smoke' (evaluation ")
    assert len(lines) == 2 + 3 + 1  # title, header, a line per case, the overall line
    assert lines[-1].startswith("overall  0.33: correctness  0.00, citations     -, tools  0.00")
    assert lines[-1].endswith("FAILED")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--agent", "nobody"], "no agent 'nobody'"),
        (["--agent", "{slug}", "--set", "nope"], "has no evaluation set named 'nope'"),
        (["--agent", "{slug}", "--version", "9"], "has no version 9"),
        (["--agent", "{slug}", "--as", "ghost"], "no active user 'ghost'"),
    ],
)
def test_the_command_exits_2_on_bad_input_with_a_message(agent, user, arguments, message):
    evaluation_set_import(agent=agent, data=SET, actor=user)
    version_record(agent=agent, actor=None)
    arguments = [a.format(slug=agent.slug) for a in arguments]

    with pytest.raises(CommandError, match=message) as raised:
        call_command("evaluate", *arguments)

    assert raised.value.returncode == 2
    assert EvaluationRun.objects.count() == 0


def test_the_command_prints_json(server, agent, user):
    grant_agent(user, agent)
    evaluation_set_import(agent=agent, data=SET, actor=user)
    version_record(agent=agent, actor=None)
    server.default("primary", Reply.say("Dana, since 2021."))
    out = StringIO()

    with pytest.raises(SystemExit):
        call_command("evaluate", "--agent", agent.slug, "--json", stdout=out)

    [report] = json.loads(out.getvalue())
    assert (report["set"], report["version"], report["passed"]) == ("smoke", 1, False)
    assert [c["scores"]["outcome"] for c in report["cases"]] == ["answered"] * 3


def test_a_case_made_from_a_run_is_added_to_a_set_and_audited(agent, user):
    evaluation_set = evaluation_set_create(agent=agent, name="from feedback", actor=user)
    source = Run.objects.create(
        agent=agent,
        conversation=Conversation.objects.create(owner=user, agent=agent),
        actor=user,
        input="What is Acme's owner?",
    )

    case = evaluation_case_add(
        evaluation_set=evaluation_set,
        data={"question": source.input, "expected_facts": ["Dana"]},
        actor=user,
        source_run=source,
    )

    assert (case.set, case.source_run, case.expect) == (evaluation_set, source, "answer")
    assert evaluation_set.pass_mark == Decimal("0.80")
    event = AuditEvent.objects.get(action="evaluation_case.added")
    assert json.loads(event.data) == {"case": case.pk, "expect": "answer", "source_run": source.pk}
    with pytest.raises(EvaluationError, match="already has an evaluation set named"):
        evaluation_set_create(agent=agent, name="from feedback", actor=user)
    with pytest.raises(EvaluationError, match="case 2: the question is text"):
        evaluation_case_add(evaluation_set=evaluation_set, data={"question": ""}, actor=user)
    assert evaluation_set.cases.count() == 1
