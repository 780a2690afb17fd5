"""agents.evaluation.scoring: pure functions, every rule."""

from decimal import Decimal

import pytest

from agents.evaluation import scoring


@pytest.mark.parametrize(
    ("fact", "answer", "found"),
    [
        ("25 days", "You get 25 days of leave.", True),
        ("25 days", "You get 25 DAYS.", True),
        ("two weeks", "at least 2 weeks in advance", True),
        ("2 weeks", "at least two weeks in advance", True),
        ("six months", "The probation period is six months.", True),
        ("1,000 euros", "up to 1000 euros", True),
        ("10:00", "before 10:00 on the first day", True),
        ("10:00", "before 10.00", False),
        ("31 March", "expire on 31 march.", True),
        ("café", "the cafe is open", True),
        ("5 days", "15 days", False),  # whole words only
        ("not paid out", "are not paid out, except", True),
        ("not paid out", "are paid out", False),
        ("", "anything", False),
        ("it's free", "It\u2019s free", True),
    ],
)
def test_a_fact_is_found_as_whole_normalised_words(fact, answer, found):
    assert scoring.fact_found(fact, answer) is found


def test_correctness_is_the_share_of_facts_found_and_none_without_facts():
    assert scoring.correctness(["25 days", "31 March", "5 days"], "25 days until 31 March") == 2 / 3
    assert scoring.correctness([], "anything") is None


def test_citations_score_precision_recall_and_their_f1_by_title_or_file_name():
    cited = [["Leave policy", "leave-policy.md"], ["Expense policy", "expense-policy.md"]]

    both = scoring.citations(["Leave policy", "expense-policy.md"], cited)
    one_of_two_cited = scoring.citations(["leave policy"], cited)
    missed = scoring.citations(["Onboarding guide"], cited)
    nothing_cited = scoring.citations(["Leave policy"], [])

    assert both == scoring.CitationScore(precision=1.0, recall=1.0, score=1.0)
    assert one_of_two_cited == scoring.CitationScore(precision=0.5, recall=1.0, score=0.6667)
    assert missed == scoring.CitationScore(precision=0.0, recall=0.0, score=0.0)
    assert nothing_cited == scoring.CitationScore(precision=0.0, recall=0.0, score=0.0)
    assert scoring.citations([], cited) is None
    # The same document cited twice counts once.
    twice = scoring.citations(["Leave policy"], [["Leave policy"], ["Leave policy"]])
    assert twice == scoring.CitationScore(1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("expected", "actual", "match"),
    [
        ({}, {"anything": 1}, True),
        ({"ticket": 42}, {"ticket": 42, "note": "x"}, True),
        ({"ticket": 42}, {"ticket": "42"}, True),
        ({"ticket": 42}, {"ticket": 42.0}, True),
        ({"ticket": 42}, {"ticket": 43}, False),
        ({"ticket": 42}, {}, False),
        ({"priority": "High"}, {"priority": "high"}, True),
        ({"priority": "high"}, {"priority": "low"}, False),
        ({"urgent": True}, {"urgent": 1}, False),
        ({"urgent": True}, {"urgent": True}, True),
        ({"to": ["a@example.com"]}, {"to": ["A@example.com"]}, True),
        ({"to": ["a@example.com"]}, {"to": ["b@example.com"]}, False),
        ({"to": ["dana"]}, {"to": ["Dana"]}, True),
        ({"to": ["dana"]}, {"to": ["Dana", "Sam"]}, False),
        ({"filter": {"owner": "dana"}}, {"filter": {"owner": "Dana", "region": "eu"}}, True),
        ({"filter": {"owner": "dana"}}, {"filter": "dana"}, False),
    ],
)
def test_expected_arguments_match_a_call_s_as_a_subset(expected, actual, match):
    assert scoring.arguments_match(expected, actual) is match


def test_tools_is_the_share_of_expected_calls_made_each_call_counting_once():
    calls = [
        {"name": "create_ticket", "arguments": {"title": "VPN", "priority": "high"}},
        {"name": "get_ticket_status", "arguments": {"ticket": 7}},
    ]

    assert scoring.tools([{"name": "create_ticket", "arguments": {"priority": "high"}}], calls) == 1
    assert scoring.tools([{"name": "create_ticket", "arguments": {"priority": "low"}}], calls) == 0
    twice = [{"name": "create_ticket"}, {"name": "create_ticket"}]
    assert scoring.tools(twice, calls) == 0.5  # one call made, two expected
    assert scoring.tools([{"name": "send_email"}, {"name": "get_ticket_status"}], calls) == 0.5
    assert scoring.tools([], calls) is None


@pytest.mark.parametrize(
    ("state", "answer", "held", "approval", "outcome"),
    [
        ("succeeded", "25 days.", False, False, "answered"),
        ("succeeded", "I don't know: nothing I was given answers that.", False, False, "refused"),
        ("succeeded", "I can't help with that.", False, False, "refused"),
        ("succeeded", "I cannot share that.", False, False, "refused"),
        ("succeeded", "   ", False, False, "refused"),
        ("rejected", "", False, False, "refused"),
        ("failed", "", False, False, "refused"),
        ("awaiting_review", "", True, False, "escalated"),
        ("succeeded", "Done.", False, True, "escalated"),
        ("awaiting_approval", "", False, False, "escalated"),
    ],
)
def test_what_a_run_did(state, answer, held, approval, outcome):
    assert scoring.outcome(state=state, answer=answer, held=held, approval_required=approval) == (
        outcome
    )


def test_behaviour_is_1_only_for_the_expected_outcome():
    assert scoring.behaviour("answer", "answered") == 1.0
    assert scoring.behaviour("refuse", "refused") == 1.0
    assert scoring.behaviour("escalate", "escalated") == 1.0
    assert scoring.behaviour("escalate", "refused") == 0.0
    assert scoring.behaviour("refuse", "escalated") == 0.0
    assert scoring.behaviour("answer", "escalated") == 0.0


def test_a_case_s_overall_is_the_mean_of_the_scores_it_asks_for():
    answered = scoring.score_case(
        expect="answer",
        facts=["25 days", "31 March"],
        expected_citations=["Leave policy"],
        expected_tools=[],
        answer="25 days [1]",
        cited=[["Leave policy"]],
        calls=[],
        did="answered",
    )
    escalated = scoring.score_case(
        expect="escalate",
        facts=["ignored"],
        expected_citations=["ignored"],
        expected_tools=[{"name": "create_ticket", "arguments": {}}],
        answer="",
        cited=[],
        calls=[{"name": "create_ticket", "arguments": {"title": "x"}}],
        did="escalated",
    )

    assert answered.as_dict() == {
        "correctness": 0.5,
        "citations": 1.0,
        "citation_precision": 1.0,
        "citation_recall": 1.0,
        "tools": None,
        "behaviour": 1.0,
        "overall": 0.8333,
        "outcome": "answered",
        "facts_found": ["25 days"],
    }
    assert (escalated.correctness, escalated.citations, escalated.tools) == (None, None, 1.0)
    assert escalated.overall == 1.0


def test_the_summary_averages_each_score_over_the_cases_that_ask_for_it():
    cases = [
        {"correctness": 1.0, "citations": 0.5, "tools": None, "behaviour": 1.0, "overall": 0.8333},
        {"correctness": None, "citations": None, "tools": 0.0, "behaviour": 1.0, "overall": 0.5},
        {"correctness": 0.0, "citations": 0.0, "tools": None, "behaviour": 0.0, "overall": 0.0},
    ]

    assert scoring.summary(cases) == {
        "correctness": 0.5,
        "citations": 0.25,
        "tools": 0.0,
        "behaviour": 0.6667,
        "overall": 0.4444,
    }
    assert scoring.summary([]) == dict.fromkeys(
        ["correctness", "citations", "tools", "behaviour", "overall"]
    )


def test_passing_is_reaching_the_mark_exactly_or_above():
    assert scoring.passed(0.8, Decimal("0.80")) is True
    assert scoring.passed(0.7999, Decimal("0.80")) is False
    assert scoring.passed(1.0, Decimal("1.00")) is True


def test_percentiles_are_nearest_rank():
    values = [100, 300, 200, 400, 1000]

    assert scoring.percentile(values, 0.5) == 300
    assert scoring.percentile(values, 0.95) == 1000
    assert scoring.percentile([7], 0.95) == 7
    assert scoring.percentile([], 0.5) is None
