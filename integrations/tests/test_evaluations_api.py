"""Evaluations through the API: the agent's owner starts one of a set on a version (202,
Location), reads it as it runs and once finished, and compares two of one set case by case;
anyone else, a missing set and a foreign version are problems that write nothing; a run that
drew on a knowledge base the reader may not read shows no answer."""

import json
from decimal import Decimal

import pytest
from django.utils import timezone
from guardian.shortcuts import assign_perm

from agents.evaluation.services import evaluation_execute
from agents.models import (
    Agent,
    Conversation,
    EvaluationCase,
    EvaluationResult,
    EvaluationRun,
    EvaluationSet,
    KnowledgeBase,
    Run,
    RunStep,
)
from agents.selectors import HIDDEN
from agents.versions import version_record
from audit.models import AuditEvent
from integrations.tests.test_resources import problem

pytestmark = pytest.mark.django_db
BOTH = "evaluations:run evaluations:read"


@pytest.fixture
def owner(people, governed):
    """The integration account (granted use of the agent), which may also change it."""
    assign_perm("agents.change_agent", people.integration, governed.agent)
    return people.integration


@pytest.fixture
def a_set(governed, owner):
    found = EvaluationSet.objects.create(agent=governed.agent, name="Pricing")
    EvaluationCase.objects.create(set=found, question="What does Pro cost?", expected_facts=["$20"])
    return found


@pytest.fixture
def version(governed, owner):
    return version_record(agent=governed.agent, actor=owner, reason="first")


def start(client, auth, **body):
    return client.post(
        "/api/v1/evaluations", json.dumps(body), content_type="application/json", **auth
    )


def test_the_owner_starts_an_evaluation_follows_it_and_reads_its_results(
    client, bearer, owner, a_set, version
):
    auth = bearer(owner, BOTH)

    response = start(client, auth, set=a_set.pk, version=version.pk)

    evaluation = EvaluationRun.objects.get()
    assert response.status_code == 202, response.content
    assert response["Location"] == f"/api/v1/evaluations/{evaluation.pk}"
    body = response.json()
    assert {k: body[k] for k in ("id", "url", "set", "agent", "version", "state", "done")} == {
        "id": evaluation.pk,
        "url": f"/api/v1/evaluations/{evaluation.pk}",
        "set": a_set.pk,
        "agent": a_set.agent.slug,
        "version": version.pk,
        "state": "queued",
        "done": 0,
    }
    assert (body["total"], body["results"], body["passed"]) == (1, [], None)
    assert (evaluation.started_by, evaluation.version) == (owner, version)
    assert AuditEvent.objects.filter(action="evaluation.queued", actor_id=str(owner.pk)).exists()

    evaluation_execute(evaluation_id=evaluation.pk)  # as the worker does

    done = client.get(response["Location"], **auth).json()
    result = EvaluationResult.objects.get()
    assert (done["state"], done["done"], done["total"]) == ("succeeded", 1, 1)
    assert done["scores"]["overall"] == result.scores["overall"]
    assert done["results"] == [
        {
            "case": a_set.cases.get().pk,
            "question": "What does Pro cost?",
            "expect": "answer",
            "passed": result.passed,
            "answer": result.answer,
            "scores": {
                "overall": result.scores["overall"],
                "correctness": result.scores["correctness"],
                "citations": result.scores["citations"],
                "tools": result.scores["tools"],
                "behaviour": result.scores["behaviour"],
                "outcome": result.scores["outcome"],
            },
            "tool_calls": result.tool_calls,
            "latency_ms": result.latency_ms,
            "tokens": result.tokens,
            "cost": float(result.cost),
            "run": f"/api/v1/runs/{result.run_id}",
        }
    ]
    # The run that answered is the owner's to read.
    assert (
        client.get(f"/api/v1/runs/{result.run_id}", **bearer(owner, "runs:read")).status_code == 200
    )


def test_left_out_the_version_is_the_live_one(client, bearer, owner, a_set, version):
    response = start(client, bearer(owner, BOTH), set=a_set.pk)

    assert response.status_code == 202
    assert EvaluationRun.objects.get().version == version


def test_refusals_are_problems_that_start_nothing(client, bearer, people, owner, governed, a_set):
    auth = bearer(owner, BOTH)
    other = Agent.objects.create(name="Other", slug="other-agent", route=governed.route)
    foreign = version_record(agent=other, actor=people.admin, reason="theirs")
    theirs = EvaluationSet.objects.create(agent=other, name="Theirs")
    EvaluationCase.objects.create(set=theirs, question="Hello?")
    empty = EvaluationSet.objects.create(agent=governed.agent, name="Empty")
    version_record(agent=governed.agent, actor=owner, reason="first")

    missing = problem(start(client, auth, set=999_999), 404, "not-found")
    not_owned = problem(start(client, auth, set=theirs.pk), 404, "not-found")
    wrong_version = problem(start(client, auth, set=a_set.pk, version=foreign.pk), 400, "invalid")
    nothing_to_do = problem(start(client, auth, set=empty.pk), 400, "evaluation-refused")
    no_set = problem(start(client, auth, version=foreign.pk), 400, "invalid")
    unscoped = start(client, bearer(owner, "evaluations:read runs:read"), set=a_set.pk)

    assert missing["detail"] == not_owned["detail"] == "no such evaluation set"
    assert wrong_version["errors"] == {"version": ["not a version of the set's agent"]}
    assert nothing_to_do["detail"] == "the evaluation set 'Empty' has no case"
    assert set(no_set["errors"]) == {"set"}
    assert problem(unscoped, 403, "forbidden")["detail"] == (
        "the token lacks the scope 'evaluations:run'"
    )
    assert EvaluationRun.objects.count() == 0
    assert not AuditEvent.objects.filter(action="evaluation.queued").exists()


@pytest.mark.parametrize("who", ["member", "outsider", "reviewer", "denied"])
def test_nobody_but_the_owners_starts_or_reads_one(
    client, bearer, people, governed, a_set, who, version
):
    user = people.named(who)
    assign_perm("agents.change_agent", people.denied, governed.agent)  # denied its use
    evaluation = EvaluationRun.objects.create(set=a_set, version=version, started_by=people.admin)
    auth = bearer(user, BOTH)

    refused = start(client, auth, set=a_set.pk)

    assert problem(refused, 404, "not-found")["detail"] == "no such evaluation set"
    assert problem(client.get(f"/api/v1/evaluations/{evaluation.pk}", **auth), 404, "not-found")
    compare = client.get(f"/api/v1/evaluations/{evaluation.pk}/compare/{evaluation.pk}", **auth)
    problem(compare, 404, "not-found")
    assert EvaluationRun.objects.count() == 1


def result_of(evaluation, case, owner, answer, passed, overall, *, base=None):
    conversation = Conversation.objects.create(
        owner=owner, agent=evaluation.set.agent, evaluation=True
    )
    run = Run.objects.create(
        agent=evaluation.set.agent,
        conversation=conversation,
        actor=owner,
        input=case.question,
        state="succeeded",
        answer=answer,
        sandbox=True,
    )
    if base is not None:
        RunStep.objects.create(
            run=run,
            index=0,
            kind="retrieval",
            output={"passages": [{"n": 1, "knowledge_base": base.pk, "document": 1}]},
            started_at=timezone.now(),
            finished_at=timezone.now(),
        )
    return EvaluationResult.objects.create(
        evaluation=evaluation,
        case=case,
        run=run,
        answer=answer,
        passed=passed,
        scores={"overall": overall, "correctness": overall, "behaviour": 1.0},
        cost=Decimal("0.01"),
    )


def test_two_evaluations_of_one_set_compare_case_by_case(
    client, bearer, people, owner, a_set, version
):
    auth = bearer(owner, "evaluations:read")
    first = a_set.cases.get()
    second = EvaluationCase.objects.create(set=a_set, question="Is there a free plan?")
    a = EvaluationRun.objects.create(
        set=a_set, version=version, started_by=owner, state="succeeded", scores={"overall": 1.0}
    )
    b = EvaluationRun.objects.create(
        set=a_set, version=version, started_by=owner, state="succeeded", scores={"overall": 0.5}
    )
    result_of(a, first, owner, "$20", True, 1.0)
    result_of(a, second, owner, "Yes", True, 1.0)
    result_of(b, first, owner, "<b>$25</b>", False, 0.0)
    result_of(b, second, owner, "Yes", True, 1.0)

    body = client.get(f"/api/v1/evaluations/{a.pk}/compare/{b.pk}", **auth).json()

    assert body["a"] == f"/api/v1/evaluations/{a.pk}"
    assert body["counts"] == {
        "broken": 1,
        "fixed": 0,
        "worse": 0,
        "better": 0,
        "new": 0,
        "gone": 0,
        "same": 1,
    }
    assert body["scores"][0] == {"score": "overall", "a": 1.0, "b": 0.5, "change": -0.5}
    broken = body["cases"][0]
    assert (broken["case"], broken["change"]) == (first.pk, "broken")
    assert (broken["a"]["answer"], broken["b"]["answer"]) == ("$20", "<b>$25</b>")
    assert (broken["a"]["passed"], broken["b"]["passed"]) == (True, False)
    assert broken["scores"][0] == {"score": "overall", "a": 1.0, "b": 0.0, "change": -1.0}
    assert [c["change"] for c in body["cases"]] == ["broken", "same"]


def test_two_sets_do_not_compare(client, bearer, owner, governed, a_set, version):
    other_set = EvaluationSet.objects.create(agent=governed.agent, name="Other")
    a = EvaluationRun.objects.create(set=a_set, version=version, started_by=owner)
    b = EvaluationRun.objects.create(set=other_set, version=version, started_by=owner)

    response = client.get(f"/api/v1/evaluations/{a.pk}/compare/{b.pk}", **bearer(owner, BOTH))

    assert problem(response, 400, "invalid")["errors"] == {
        "other": ["an evaluation of the same set"]
    }


def test_an_answer_drawn_from_a_base_the_reader_may_not_read_is_hidden(
    client, bearer, people, owner, a_set, version
):
    secret = KnowledgeBase.objects.create(name="Board", slug="board", owner=people.admin)
    evaluation = EvaluationRun.objects.create(
        set=a_set, version=version, started_by=people.admin, state="succeeded"
    )
    result_of(
        evaluation,
        a_set.cases.get(),
        people.admin,
        "The board approved Project Quartz-7731.",
        True,
        1.0,
        base=secret,
    )

    body = client.get(f"/api/v1/evaluations/{evaluation.pk}", **bearer(owner, BOTH)).json()

    assert body["results"][0]["answer"] == HIDDEN
    # Words of the answer, not a number a timestamp or an id could also hold.
    assert "Quartz" not in json.dumps(body)
