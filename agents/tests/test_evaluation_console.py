"""Evaluations in the admin console: sets and their cases edited by the agent's owners (lists as
lines, checked), nobody else; a set's version evaluated from its page; an evaluation's report
and two side by side, escaped, in a fixed number of queries; feedback turned into cases."""

import json
from decimal import Decimal

import pytest
from auditlog.models import LogEntry
from django.db import connection
from django.test.utils import CaptureQueriesContext
from guardian.shortcuts import assign_perm, remove_perm

from agents.evaluation.cases import evaluation_case_from_feedback
from agents.feedback import feedback_record
from agents.models import (
    Conversation,
    EvaluationCase,
    EvaluationResult,
    EvaluationRun,
    EvaluationSet,
    Feedback,
    Run,
)
from agents.versions import version_record
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db
SETS = "/admin/agents/evaluationset/"
EVALUATIONS = "/admin/agents/evaluationrun/"


def staff(user, *, owns=None):
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    if owns is not None:
        assign_perm("agents.change_agent", user, owns)
    return user


@pytest.fixture
def owner(people, governed):
    """A member (whose team may use the agent) who may change it: its owner."""
    return staff(people.member, owns=governed.agent)


@pytest.fixture
def a_set(governed, owner):
    found = EvaluationSet.objects.create(agent=governed.agent, name="Pricing", created_by=owner)
    EvaluationCase.objects.create(set=found, question="What does Pro cost?", expected_facts=["$20"])
    return found


def case_form(set_pk=None, **case) -> dict:
    """The set's change form with one case in its inline."""
    data = {
        "name": "Pricing",
        "description": "",
        "pass_mark": "0.80",
        "cases-TOTAL_FORMS": "1",
        "cases-INITIAL_FORMS": "0",
        "cases-MIN_NUM_FORMS": "0",
        "cases-MAX_NUM_FORMS": "1000",
        "cases-0-question": "What does Pro cost?",
        "cases-0-expect": "answer",
        "cases-0-expected_facts": "",
        "cases-0-expected_citations": "",
        "cases-0-expected_tools": "",
        "cases-0-notes": "",
    }
    data.update({f"cases-0-{k}": v for k, v in case.items()})
    return data


# --- sets and cases --------------------------------------------------------------------------


def test_an_owner_adds_a_set_with_a_case_whose_lists_are_lines(client, owner, governed):
    client.force_login(owner)
    data = case_form(
        expected_facts="$20 a month\n  per user  \n\n$20 a month",
        expected_citations="Price list",
        expected_tools='create_ticket {"title": "Pricing"}\ncreate_ticket',
    )

    response = client.post(f"{SETS}add/", {**data, "agent": governed.agent.pk})

    assert response.status_code == 302, response.context and response.context["errors"]
    found = EvaluationSet.objects.get()
    assert (found.agent, found.name, found.created_by) == (governed.agent, "Pricing", owner)
    case = found.cases.get()
    assert case.expected_facts == ["$20 a month", "per user"]
    assert case.expected_citations == ["Price list"]
    assert case.expected_tools == [
        {"name": "create_ticket", "arguments": {"title": "Pricing"}},
        {"name": "create_ticket", "arguments": {}},
    ]
    history = LogEntry.objects.get_for_object(case).get()  # django-auditlog's field history
    assert (history.actor, history.action) == (owner, LogEntry.Action.CREATE)
    page = client.get(f"{SETS}{found.pk}/change/").content.decode()
    assert "$20 a month\nper user</textarea>" in page
    assert (
        "create_ticket {&quot;title&quot;: &quot;Pricing&quot;}\ncreate_ticket</textarea>" in page
    )


@pytest.mark.parametrize(
    ("case", "field", "message"),
    [
        ({"expected_tools": "send_rockets"}, "expected_tools", "No tool is named send_rockets."),
        (
            {"expected_tools": "create_ticket title=x"},
            "expected_tools",
            "Line 1: after the tool&#x27;s name, its arguments as a JSON object",
        ),
        (
            {"expect": "refuse", "expected_facts": "$20"},
            "expect",
            "A case that should refuse or escalate expects no facts",
        ),
        ({"question": "   "}, "question", "This field is required."),
        (
            {"expected_facts": "$20\x00 a month"},
            "expected_facts",
            "contains a NUL character, which cannot be kept",
        ),
        (
            {"expected_tools": 'create_ticket {"title": "a\\u0000b"}'},
            "expected_tools",
            "contains a NUL character, which cannot be kept",
        ),
    ],
)
def test_a_case_that_makes_no_sense_is_refused_and_nothing_is_saved(
    client, owner, governed, case, field, message
):
    client.force_login(owner)

    response = client.post(f"{SETS}add/", {**case_form(**case), "agent": governed.agent.pk})

    assert response.status_code == 200
    assert message in response.content.decode()
    assert EvaluationSet.objects.count() == 0
    assert EvaluationCase.objects.count() == 0


def test_only_the_agent_s_owners_see_its_sets(client, people, governed, a_set, version):
    reviewer = staff(people.reviewer)  # staff, owns no agent
    denied = staff(people.denied, owns=governed.agent)  # may change it, denied its use
    outsider = staff(people.outsider)
    assign_perm("agents.change_agent", outsider, governed.agent)  # may change it, not use it
    for who in (reviewer, denied, outsider):
        client.force_login(who)
        assert client.get(SETS).status_code == 403
        assert client.get(f"{SETS}{a_set.pk}/change/").status_code in (302, 403)
        assert client.get(f"{SETS}{a_set.pk}/evaluate/").status_code in (403, 404)
        started = client.post(f"{SETS}{a_set.pk}/evaluate/", {"version": version.pk})
        assert started.status_code in (403, 404)
        posted = client.post(f"{SETS}{a_set.pk}/change/", case_form(question="Changed?"))
        assert posted.status_code in (302, 403)
        assert "Pricing" not in client.get("/admin/").content.decode()
    assert list(EvaluationCase.objects.values_list("question", flat=True)) == [
        "What does Pro cost?"
    ]
    assert EvaluationRun.objects.count() == 0


def test_a_set_is_added_only_for_an_agent_one_owns(client, people, owner, governed):
    other = type(governed.agent).objects.create(
        name="Other", slug="other-agent", route=governed.route
    )
    client.force_login(owner)

    response = client.post(f"{SETS}add/", {**case_form(), "agent": other.pk})

    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    assert EvaluationSet.objects.count() == 0


# --- the report and side by side ---------------------------------------------------------------

HOSTILE = '<script>alert("x")</script>'


def evaluation_of(a_set, version, owner, *, answers: dict[int, tuple[str, bool, float]], **kw):
    """An evaluation as its runner leaves it: a result for each case in `answers`
    (case id -> answer, passed, overall)."""
    evaluation = EvaluationRun.objects.create(set=a_set, version=version, started_by=owner, **kw)
    for case_id, (answer, passed, overall) in answers.items():
        conversation = Conversation.objects.create(owner=owner, agent=a_set.agent, evaluation=True)
        run = Run.objects.create(
            agent=a_set.agent,
            conversation=conversation,
            actor=owner,
            input="q",
            state="succeeded",
            answer=answer,
            sandbox=True,
        )
        EvaluationResult.objects.create(
            evaluation=evaluation,
            case_id=case_id,
            run=run,
            answer=answer,
            passed=passed,
            scores={
                "overall": overall,
                "correctness": overall,
                "behaviour": 1.0,
                "outcome": "answered",
            },
            latency_ms=120,
            tokens=42,
            cost=Decimal("0.000100"),
            tool_calls=[
                {"name": "create_ticket", "arguments": {"title": HOSTILE}, "effect": "sandbox"}
            ],
        )
    return evaluation


@pytest.fixture
def version(governed, owner):
    return version_record(agent=governed.agent, actor=owner, reason="first")


def more_cases(a_set, n: int) -> list[int]:
    return [
        EvaluationCase.objects.create(set=a_set, question=f"{HOSTILE} {i}?").pk for i in range(n)
    ]


def test_an_evaluation_s_report_shows_each_case_escaped_in_a_fixed_number_of_queries(
    client, owner, a_set, version
):
    client.force_login(owner)
    first = a_set.cases.get().pk

    def report_queries(n: int) -> int:
        EvaluationRun.objects.all().delete()
        cases = [first, *more_cases(a_set, n)]
        evaluation = evaluation_of(
            a_set,
            version,
            owner,
            answers={
                c: (f"{HOSTILE} answer", c == first, 1.0 if c == first else 0.0) for c in cases
            },
            state="succeeded",
            scores={"overall": 0.5, "correctness": 0.5},
            tokens=99,
            cost=Decimal("0.25"),
            latency_ms_p50=100,
            latency_ms_p95=300,
            passed=False,
        )
        with CaptureQueriesContext(connection) as queries:
            page = client.get(f"{EVALUATIONS}{evaluation.pk}/change/")
        assert page.status_code == 200
        text = page.content.decode()
        assert HOSTILE not in text
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; answer" in text
        assert 'data-working="0"' in text
        assert "the evaluation did not pass (pass mark 0.80)" in text
        assert "100 ms / 300 ms" in text
        assert f'href="/runs/{evaluation.results.first().run_id}/"' in text
        return len(queries)

    report_queries(2)  # once first: the content types the admin's menu asks for stay cached
    assert report_queries(2) == report_queries(12)
    assert report_queries(2) <= 13  # with the admin menu asking whether releases may be added


def test_a_running_evaluation_s_page_follows_its_progress(client, owner, a_set, version):
    client.force_login(owner)
    evaluation = evaluation_of(
        a_set, version, owner, answers={a_set.cases.get().pk: ("$20", True, 1.0)}, state="running"
    )
    more_cases(a_set, 1)

    page = client.get(f"{EVALUATIONS}{evaluation.pk}/change/").content.decode()
    progress = client.get(f"{EVALUATIONS}{evaluation.pk}/progress/").json()

    assert 'data-working="1"' in page
    assert f'data-progress-url="{EVALUATIONS}{evaluation.pk}/progress/"' in page
    assert "Running: 1 of 2 cases done" in page
    assert {k: progress[k] for k in ("id", "state", "done", "total", "passed")} == {
        "id": evaluation.pk,
        "state": "running",
        "done": 1,
        "total": 2,
        "passed": None,
    }
    assert "Running: 1 of 2 cases done" in progress["html"]


def test_two_evaluations_side_by_side_say_which_case_changed(client, owner, a_set, version):
    client.force_login(owner)
    first = a_set.cases.get().pk

    def compare_queries(n: int) -> tuple[int, str]:
        EvaluationRun.objects.all().delete()
        cases = [first, *more_cases(a_set, n)]
        a = evaluation_of(
            a_set,
            version,
            owner,
            state="succeeded",
            scores={"overall": 1.0},
            answers={c: ("old answer", True, 1.0) for c in cases},
        )
        b = evaluation_of(
            a_set,
            version,
            owner,
            state="succeeded",
            scores={"overall": 0.75},
            answers={c: (f"{HOSTILE} new", c != first, 1.0 if c != first else 0.0) for c in cases},
        )
        with CaptureQueriesContext(connection) as queries:
            page = client.get(f"{EVALUATIONS}compare/?a={a.pk}&b={b.pk}")
        assert page.status_code == 200
        return len(queries), page.content.decode()

    few, text = compare_queries(1)
    many, _ = compare_queries(11)
    assert few == many
    assert few <= 12
    assert HOSTILE not in text
    assert "1 case passed in A and failed in B; 0 failed in A and passed in B" in text
    assert "passed → failed" in text
    assert "overall: 1.00 → 0.00 (-1.00)" in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; new" in text
    assert "<td>1.00</td><td>0.75</td><td>-0.25</td>" in text


def test_nobody_else_reads_an_evaluation(client, people, governed, a_set, version, owner):
    evaluation = evaluation_of(a_set, version, owner, answers={}, state="queued")
    other = evaluation_of(a_set, version, owner, answers={}, state="queued")
    client.force_login(staff(people.reviewer))
    for url in (
        f"{EVALUATIONS}{evaluation.pk}/change/",
        f"{EVALUATIONS}{evaluation.pk}/progress/",
        f"{EVALUATIONS}compare/?a={evaluation.pk}&b={other.pk}",
        f"{EVALUATIONS}compare/?a=x&b=1",
    ):
        assert client.get(url).status_code == 404, url
    client.force_login(owner)
    assert client.get(f"{EVALUATIONS}compare/?a=x&b=1").status_code == 404


# --- feedback to cases -------------------------------------------------------------------------


def rated(people, governed, rating: str, comment: str = "") -> Feedback:
    conversation = Conversation.objects.create(owner=people.member, agent=governed.agent)
    run = Run.objects.create(
        agent=governed.agent,
        conversation=conversation,
        actor=people.member,
        input="What does Pro cost for 3 people?",
        state="succeeded",
        answer="Pro costs $20 a month [1]. Each person needs a seat. Billing is monthly. Extra.",
        citations=[{"n": 1, "title": "Price list", "document": 1}],
    )
    return feedback_record(actor=people.member, run_id=run.pk, rating=rating, comment=comment)


def add_to_set(client, feedback, a_set):
    return client.post(
        "/admin/agents/feedback/",
        {
            "action": "add_to_evaluation_set",
            "_selected_action": [feedback.pk],
            "evaluation_set": a_set.pk,
        },
    )


def test_a_thumbs_up_becomes_a_case_with_its_answer_s_facts(client, people, governed, a_set):
    feedback = rated(people, governed, "up")
    client.force_login(people.admin)
    asked = client.post(
        "/admin/agents/feedback/",
        {"action": "add_to_evaluation_set", "_selected_action": [feedback.pk]},
    )
    assert asked.status_code == 200
    assert f'<option value="{a_set.pk}">Sales: Pricing</option>' in asked.content.decode()

    response = add_to_set(client, feedback, a_set)

    assert response.status_code == 302
    assert response["Location"] == f"{SETS}{a_set.pk}/change/"
    case = EvaluationCase.objects.get(source_run=feedback.run)
    assert (case.set, case.question, case.expect) == (
        a_set,
        "What does Pro cost for 3 people?",
        "answer",
    )
    assert case.expected_facts == [
        "Pro costs $20 a month.",
        "Each person needs a seat.",
        "Billing is monthly.",
    ]
    assert case.expected_citations == ["Price list"]
    event = AuditEvent.objects.get(action="evaluation_case.added")
    assert event.actor_id == str(people.admin.pk)
    assert json.loads(event.data) == {
        "case": case.pk,
        "expect": "answer",
        "source_run": feedback.run_id,
    }
    # Twice is once.
    add_to_set(client, feedback, a_set)
    assert EvaluationCase.objects.filter(source_run=feedback.run).count() == 1
    assert AuditEvent.objects.filter(action="evaluation_case.added").count() == 1


def test_a_thumbs_down_becomes_a_case_with_the_comment_and_no_expectation(
    client, people, governed, a_set
):
    feedback = rated(people, governed, "down", "Wrong: Pro is $25 since May, ask ann@example.com")
    client.force_login(people.admin)

    add_to_set(client, feedback, a_set)

    case = EvaluationCase.objects.get(source_run=feedback.run)
    assert (case.expected_facts, case.expected_citations, case.expected_tools) == ([], [], [])
    assert case.notes.startswith(
        f"From a thumbs-down on run {feedback.run_id}: set what a good answer holds.\n"
        "Their comment: Wrong: Pro is $25 since May, ask "
    )
    assert "ann@example.com" not in case.notes  # personal data as the console sees it


def test_only_the_agent_s_owners_turn_feedback_into_cases(client, people, governed, a_set):
    feedback = rated(people, governed, "up")
    reviewer = staff(people.reviewer)
    assign_perm("agents.view_feedback", reviewer)  # reads all feedback; owns no agent
    client.force_login(reviewer)

    listed = client.get("/admin/agents/feedback/").content.decode()
    response = add_to_set(client, feedback, a_set)

    assert "add_to_evaluation_set" not in listed
    assert response.status_code in (200, 302)
    with pytest.raises(Exception, match="no such evaluation set"):
        evaluation_case_from_feedback(feedback=feedback, evaluation_set=a_set, actor=reviewer)
    assert EvaluationCase.objects.filter(source_run=feedback.run).count() == 0
    assert not AuditEvent.objects.filter(action="evaluation_case.added").exists()


def test_feedback_on_another_agent_is_no_case_of_the_set(client, people, governed, a_set):
    other = EvaluationSet.objects.create(
        agent=type(governed.agent).objects.create(
            name="Other", slug="other-agent", route=governed.route
        ),
        name="Other",
    )
    feedback = rated(people, governed, "up")

    with pytest.raises(Exception, match="not answered by Other"):
        evaluation_case_from_feedback(feedback=feedback, evaluation_set=other, actor=people.admin)

    assert EvaluationCase.objects.filter(source_run=feedback.run).count() == 0


# --- starting one ------------------------------------------------------------------------------


def test_an_owner_evaluates_a_version_of_the_set_s_agent_and_reads_its_results(
    client, owner, governed, a_set, version
):
    from agents.evaluation.services import evaluation_execute

    client.force_login(owner)
    page = client.get(f"{SETS}{a_set.pk}/evaluate/").content.decode()
    assert f'<option value="{version.pk}" selected>v1 (live): first</option>' in page

    response = client.post(f"{SETS}{a_set.pk}/evaluate/", {"version": version.pk})

    evaluation = EvaluationRun.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"{EVALUATIONS}{evaluation.pk}/change/"
    assert (evaluation.set, evaluation.version, evaluation.started_by, evaluation.state) == (
        a_set,
        version,
        owner,
        "queued",
    )
    assert AuditEvent.objects.filter(action="evaluation.queued", actor_id=str(owner.pk)).exists()
    queued = client.get(f"{EVALUATIONS}{evaluation.pk}/change/").content.decode()
    assert "Queued: 0 of 1 case done" in queued
    assert 'data-working="1"' in queued

    evaluation_execute(evaluation_id=evaluation.pk)  # as the worker does

    result = EvaluationResult.objects.get(evaluation=evaluation)
    done = client.get(f"{EVALUATIONS}{evaluation.pk}/change/").content.decode()
    assert "Succeeded: 1 of 1 case done" in done
    assert 'data-working="0"' in done
    assert f'<a href="/runs/{result.run_id}/">run {result.run_id}</a>' in done
    listed = client.get(f"{SETS}{a_set.pk}/change/").content.decode()
    assert f'<a href="{EVALUATIONS}{evaluation.pk}/change/">{evaluation.pk}</a>' in listed


def test_a_version_of_another_agent_starts_nothing(client, owner, governed, a_set):
    other = type(governed.agent).objects.create(
        name="Other", slug="other-agent", route=governed.route
    )
    foreign = version_record(agent=other, actor=owner, reason="theirs")
    client.force_login(owner)

    response = client.post(f"{SETS}{a_set.pk}/evaluate/", {"version": foreign.pk})

    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    assert EvaluationRun.objects.count() == 0


def test_a_set_without_cases_starts_nothing_and_says_why(client, owner, governed, version):
    empty = EvaluationSet.objects.create(agent=governed.agent, name="Empty")
    client.force_login(owner)

    response = client.post(f"{SETS}{empty.pk}/evaluate/", {"version": version.pk}, follow=True)

    assert "Not started: the evaluation set &#x27;Empty&#x27; has no case." in (
        response.content.decode()
    )
    assert EvaluationRun.objects.count() == 0


def test_the_owner_adds_a_rated_question_from_the_run_s_trace(client, people, governed, a_set):
    feedback = rated(people, governed, "down", "Too vague")
    url = f"/admin/agents/feedback/{feedback.pk}/add-to-evaluation-set/"
    remove_perm("agents.change_agent", people.member, governed.agent)
    client.force_login(people.member)  # the asker: reads the trace, owns nothing now
    assert url not in client.get(f"/runs/{feedback.run_id}/").content.decode()
    assert client.get(url)["Location"] == "/admin/"  # staff, owns nothing: as a missing one
    client.force_login(staff(people.reviewer))
    assert client.get(url)["Location"] == "/admin/"  # as for a missing one
    assert client.post(url, {"evaluation_set": a_set.pk})["Location"] == "/admin/"
    assert EvaluationCase.objects.filter(source_run=feedback.run).count() == 0

    client.force_login(people.admin)
    trace = client.get(f"/runs/{feedback.run_id}/").content.decode()
    assert f'<a href="{url}">Add to an evaluation set</a>' in trace
    response = client.post(url, {"evaluation_set": a_set.pk})

    assert response.status_code == 302
    assert response["Location"] == f"{SETS}{a_set.pk}/change/"
    case = EvaluationCase.objects.get(source_run=feedback.run)
    assert case.notes.endswith("Their comment: Too vague")
