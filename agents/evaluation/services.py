"""Evaluations: writing sets and cases, starting an evaluation, executing it (issue 25).

An evaluation puts one version of an agent through every case of a set. Each case is a real
run (agents.services.run_start) by the person who started the evaluation, with their
permissions, in a conversation of its own that no chat list shows (Conversation.evaluation),
served by the given version whatever is live, and in sandbox mode (Run.sandbox): its tool calls
are recorded with the policy's decision and never executed. The run is advanced here, in the
process executing the evaluation (a worker that took it first is waited for), then scored
(agents.evaluation.scoring) and its result stored.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from agents.evaluation import scoring
from agents.models import (
    FINAL_STATES,
    Agent,
    AgentVersion,
    Conversation,
    Document,
    EvaluationCase,
    EvaluationExpect,
    EvaluationResult,
    EvaluationRun,
    EvaluationSet,
    EvaluationState,
    Run,
    RunState,
    RunStep,
    StepKind,
)
from agents.services import RateLimited, RunError, lease_holder_name, run_cancel, run_start
from audit.services import Target, audit_record
from tools.schemas import unstorable_at

logger = logging.getLogger(__name__)

MAX_CASES = 500  # cases in one set
WAIT_SECONDS = 600  # for a run another process advances
RATE_LIMIT_WAITS = 5  # times a case waits for the agent's rate limit before it is refused
PARKED = (RunState.AWAITING_REVIEW, RunState.AWAITING_APPROVAL, RunState.AWAITING_DELEGATE)


class EvaluationError(Exception):
    """An evaluation or a set that cannot be made as asked; the message says why."""


# Sets and cases --------------------------------------------------------------------------------


def evaluation_set_import(
    *, agent: Agent, data: Mapping[str, Any], actor, replace: bool = True
) -> EvaluationSet:
    """The set `data` describes ({name, description, pass_mark, cases: [{question,
    expected_facts, expected_citations, expected_tools, expect, notes}]}) for `agent`, made, or
    (`replace`) its cases replaced when a set of that name exists. EvaluationError on bad
    data, and nothing is written. Audited as `evaluation_set.imported`."""
    name, description, pass_mark, cases = _set_read(data)
    with transaction.atomic():
        existing = EvaluationSet.objects.select_for_update().filter(agent=agent, name=name).first()
        if existing is not None and not replace:
            raise EvaluationError(f"{agent.name} already has an evaluation set named {name!r}")
        if existing is None:
            evaluation_set = EvaluationSet.objects.create(
                agent=agent,
                name=name,
                description=description,
                pass_mark=pass_mark,
                created_by=actor if getattr(actor, "pk", None) else None,
            )
        else:
            evaluation_set = existing
            evaluation_set.description, evaluation_set.pass_mark = description, pass_mark
            evaluation_set.save(update_fields=["description", "pass_mark"])
            evaluation_set.cases.all().delete()
        EvaluationCase.objects.bulk_create(
            EvaluationCase(set=evaluation_set, **case) for case in cases
        )
        audit_record(
            actor=actor,
            action="evaluation_set.imported",
            target=Target.of(evaluation_set),
            data={"agent": agent.slug, "cases": len(cases), "replaced": existing is not None},
        )
    return evaluation_set


def evaluation_set_create(
    *, agent: Agent, name: str, actor, description: str = "", pass_mark: Any = Decimal("0.80")
) -> EvaluationSet:
    """A new, empty set for `agent` (cases come with evaluation_case_add). EvaluationError on a
    bad name or pass mark, or a name the agent's sets already have. Audited."""
    data = {"name": name, "description": description, "pass_mark": pass_mark}
    name, description, pass_mark_value = _set_fields(data)
    with transaction.atomic():
        if EvaluationSet.objects.filter(agent=agent, name=name).exists():
            raise EvaluationError(f"{agent.name} already has an evaluation set named {name!r}")
        evaluation_set = EvaluationSet.objects.create(
            agent=agent,
            name=name,
            description=description,
            pass_mark=pass_mark_value,
            created_by=actor if getattr(actor, "pk", None) else None,
        )
        audit_record(
            actor=actor,
            action="evaluation_set.created",
            target=Target.of(evaluation_set),
            data={"agent": agent.slug, "pass_mark": str(pass_mark_value)},
        )
    return evaluation_set


def evaluation_case_add(
    *,
    evaluation_set: EvaluationSet,
    data: Mapping[str, Any],
    actor,
    source_run: Run | None = None,
) -> EvaluationCase:
    """A case for the set, from `data` (question, expected_facts, expected_citations,
    expected_tools, expect, notes; checked as an import checks them), made from `source_run`
    if given (a run somebody gave feedback on). EvaluationError on bad data. Audited."""
    fields = _case_read(data, evaluation_set.cases.count() + 1)
    with transaction.atomic():
        case = EvaluationCase.objects.create(set=evaluation_set, source_run=source_run, **fields)
        audit_record(
            actor=actor,
            action="evaluation_case.added",
            target=Target.of(evaluation_set),
            data={
                "case": case.pk,
                "expect": case.expect,
                "source_run": getattr(source_run, "pk", None),
            },
        )
    return case


def _set_fields(data: Mapping[str, Any]) -> tuple[str, str, Decimal]:
    name = data.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise EvaluationError("the set's name is text of 1 to 100 characters")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise EvaluationError("the set's description is text")
    if found := unstorable_at({"name": name, "description": description}):
        raise EvaluationError(f"the set's {found[0]} {found[1]}")
    try:
        pass_mark = Decimal(str(data.get("pass_mark", "0.80")))
    except InvalidOperation:
        pass_mark = Decimal(-1)
    if not Decimal(0) <= pass_mark <= Decimal(1) or pass_mark != round(pass_mark, 2):
        raise EvaluationError("the pass mark is a number from 0 to 1, with two decimals at most")
    return name.strip(), description, pass_mark


def _set_read(data: Mapping[str, Any]) -> tuple[str, str, Decimal, list[dict]]:
    if not isinstance(data, Mapping):
        raise EvaluationError("an evaluation set is an object")
    name, description, pass_mark = _set_fields(data)
    cases = data.get("cases")
    if not isinstance(cases, list) or not cases or len(cases) > MAX_CASES:
        raise EvaluationError(f"a set has 1 to {MAX_CASES} cases")
    return name, description, pass_mark, [_case_read(c, n) for n, c in enumerate(cases, 1)]


def _case_read(case: Any, number: int) -> dict:
    """One case's fields, checked; EvaluationError naming the case if one is wrong."""

    def wrong(message: str) -> EvaluationError:
        return EvaluationError(f"case {number}: {message}")

    if not isinstance(case, Mapping):
        raise wrong("a case is an object")
    question = case.get("question")
    if not isinstance(question, str) or not question.strip():
        raise wrong("the question is text")
    if found := unstorable_at(dict(case)):  # every field, the question's included
        raise wrong(f"{found[0]} {found[1]}")
    expect = case.get("expect", EvaluationExpect.ANSWER)
    if expect not in EvaluationExpect.values:
        raise wrong(f"expect is one of {', '.join(EvaluationExpect.values)}")
    fields = {}
    for field in ("expected_facts", "expected_citations"):
        value = case.get(field, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise wrong(f"{field} is a list of texts")
        fields[field] = value
    calls = case.get("expected_tools", [])
    if not isinstance(calls, list) or not all(
        isinstance(c, Mapping)
        and isinstance(c.get("name"), str)
        and isinstance(c.get("arguments", {}), Mapping)
        for c in calls
    ):
        raise wrong('expected_tools is a list of {"name": ..., "arguments": {...}}')
    notes = case.get("notes", "")
    if not isinstance(notes, str):
        raise wrong("notes are text")
    return {
        "question": question,
        "expect": expect,
        "expected_tools": [
            {"name": c["name"], "arguments": dict(c.get("arguments", {}))} for c in calls
        ],
        "notes": notes,
        **fields,
    }


# Starting and executing ------------------------------------------------------------------------


def evaluation_start(
    *, evaluation_set: EvaluationSet, version: AgentVersion, actor, queue: bool = True
) -> EvaluationRun:
    """Queue an evaluation of `version` on `evaluation_set`, by `actor` (each case runs as
    them, with their permissions). `queue`: a worker executes it (evaluation_execute_task)
    after commit; False leaves it to the caller (`manage.py evaluate` executes it inline).
    EvaluationError when the version is not of the set's agent or the set has no case.
    Audited as `evaluation.queued`."""
    if version.agent_id != evaluation_set.agent_id:
        raise EvaluationError(
            f"v{version.number} is not a version of the set's agent ({evaluation_set.agent})"
        )
    if not evaluation_set.cases.exists():
        raise EvaluationError(f"the evaluation set {evaluation_set.name!r} has no case")
    with transaction.atomic():
        evaluation = EvaluationRun.objects.create(
            set=evaluation_set, version=version, started_by=actor
        )
        audit_record(
            actor=actor,
            action="evaluation.queued",
            target=Target.of(evaluation),
            data={
                "agent": evaluation_set.agent.slug,
                "set": evaluation_set.name,
                "version": version.number,
            },
        )
        if queue:
            from agents.tasks import evaluation_execute_task

            transaction.on_commit(lambda: evaluation_execute_task.delay(evaluation.pk))
    return evaluation


def evaluation_execute(*, evaluation_id: int) -> EvaluationRun:
    """Run every case of the evaluation not yet run (a second execution, after a worker died,
    goes on where the first stopped), score each, then the whole. Returns the evaluation,
    finished (succeeded, with `passed`; or failed, with `error`, when something other than a
    case's run went wrong)."""
    started = EvaluationRun.objects.filter(
        pk=evaluation_id, state__in=[EvaluationState.QUEUED, EvaluationState.RUNNING]
    ).update(state=EvaluationState.RUNNING)
    evaluation = EvaluationRun.objects.select_related(
        "set__agent", "version__route", "started_by"
    ).get(pk=evaluation_id)
    if not started:
        return evaluation  # finished before
    try:
        done = set(evaluation.results.values_list("case_id", flat=True))
        for case in evaluation.set.cases.order_by("id"):
            if case.pk not in done:
                _case_execute(evaluation, case)
        return _evaluation_finish(evaluation)
    except Exception as exc:
        logger.exception("evaluation %s failed", evaluation_id)
        _evaluation_fail(evaluation, f"{type(exc).__name__}: {exc}")
        raise


def _case_execute(evaluation: EvaluationRun, case: EvaluationCase) -> EvaluationResult:
    """One case: its run, started and advanced here, scored, stored."""
    agent, actor = evaluation.set.agent, evaluation.started_by
    conversation = Conversation(
        owner=actor, agent=agent, title=f"Evaluation {evaluation.pk}: case {case.pk}"[:200]
    )
    conversation.evaluation = True
    run = None
    refused = ""
    for attempt in range(RATE_LIMIT_WAITS + 1):
        try:
            run = _run_start(evaluation, case, agent, actor, conversation)
            break
        except RateLimited as exc:
            if attempt == RATE_LIMIT_WAITS:
                refused = str(exc)
            else:
                time.sleep(max(1, exc.retry_after))
        except RunError as exc:  # refused at the start: a guardrail, access, the budget
            refused = str(exc)
            break
    if run is not None:
        run = _run_advance(run, holder=lease_holder_name(f"evaluation-{evaluation.pk}"))
    return _result_record(evaluation, case, run, refused)


def _run_start(evaluation, case, agent, actor, conversation) -> Run:
    return run_start(
        agent=agent,
        conversation=conversation,
        actor=actor,
        input=case.question,
        stream=False,
        version=evaluation.version,
        sandbox=True,
    )


def _run_advance(run: Run, *, holder: str) -> Run:
    """Advance the run here until it ends or parks; if a worker took it first, wait for it."""
    from agents.orchestrator import run_execute

    run_execute(run_id=run.pk, holder=holder)
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        run = Run.objects.get(pk=run.pk)
        if run.state in FINAL_STATES or run.state in PARKED or time.monotonic() > deadline:
            return run
        time.sleep(0.2)
        if run.state == RunState.QUEUED and not run.lease_holder:
            run_execute(run_id=run.pk, holder=holder)  # nobody took it up


def _result_record(
    evaluation: EvaluationRun, case: EvaluationCase, run: Run | None, refused: str
) -> EvaluationResult:
    """Score what the case's run did and store it; a held run's review is withdrawn (nobody
    is to read an evaluation's answers in the inbox) and the run cancelled."""
    steps = list(RunStep.objects.filter(run=run).order_by("index")) if run else []
    calls = [_call(step) for step in steps if step.kind == StepKind.TOOL]
    held_answer = ""
    state = run.state if run is not None else RunState.REJECTED
    if run is not None and run.state == RunState.AWAITING_REVIEW:
        from governance.models import Escalation

        held = Escalation.objects.filter(run_id=run.pk).values_list("answer", flat=True).first()
        held_answer = held or ""
    answer = run.answer if run is not None else ""
    did = scoring.outcome(
        state=state,
        answer=answer,
        held=state == RunState.AWAITING_REVIEW,
        approval_required=any(call.get("approval_required") for call in calls),
    )
    scores = scoring.score_case(
        expect=case.expect,
        facts=case.expected_facts,
        expected_citations=case.expected_citations,
        expected_tools=case.expected_tools,
        answer=answer,
        cited=_cited(run),
        calls=calls,
        did=did,
    )
    details = scores.as_dict() | {"state": str(state)}
    if refused:
        details["refused"] = refused
    if held_answer:
        details["held_answer"] = held_answer
    if run is not None and run.error:
        details["error"] = run.error
    with transaction.atomic():
        try:
            with transaction.atomic():
                result = EvaluationResult.objects.create(
                    evaluation=evaluation,
                    case=case,
                    run=run,
                    answer=answer,
                    scores=details,
                    passed=scoring.passed(scores.overall, evaluation.set.pass_mark),
                    latency_ms=_latency(run, steps),
                    tokens=run.tokens if run is not None else 0,
                    cost=run.cost if run is not None else Decimal(0),
                    tool_calls=calls,
                )
        except IntegrityError:  # another execution of the evaluation scored it first
            result = EvaluationResult.objects.get(evaluation=evaluation, case=case)
        if run is not None and run.state in PARKED:
            run_cancel(run=run, actor=evaluation.started_by)
    return result


def _call(step: RunStep) -> dict:
    """A tool step as the evaluation records it: what was called, with what, and what the
    policy said (a sandboxed call's effect; a denial; an invalid call)."""
    call = step.input.get("call", {})
    arguments = step.input.get("arguments")
    if arguments is None:
        arguments = _arguments(call.get("arguments"))
    output = step.output
    if output.get("invalid"):
        effect = "invalid"
    elif output.get("denied") is not None:
        effect = "deny"
    else:
        effect = output.get("effect", "allow")
    recorded = {"name": call.get("name", ""), "arguments": arguments, "effect": effect}
    if output.get("approval_required"):
        recorded["approval_required"] = True
    if output.get("reasons") or output.get("denied"):
        recorded["reasons"] = output.get("reasons") or output.get("denied")
    return recorded


def _arguments(raw) -> dict:
    try:
        value = json.loads(raw or "{}")
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _cited(run: Run | None) -> list[list[str]]:
    """The documents the run's answer cites, each by its title and its file name."""
    if run is None or not run.citations:
        return []
    ids = list(dict.fromkeys(c.get("document") for c in run.citations))
    names = {
        pk: [title, filename]
        for pk, title, filename in Document.objects.filter(pk__in=ids).values_list(
            "pk", "title", "filename"
        )
    }
    return [
        names.get(pk) or [c.get("title", "")] for pk, c in zip(ids, run.citations, strict=False)
    ]


def _latency(run: Run | None, steps: list[RunStep]) -> int:
    """The run's time from start to answer; a parked run's, to its last step."""
    if run is None:
        return 0
    if run.latency_ms:
        return run.latency_ms
    if steps:
        begun = run.started_at or run.created_at
        return max(0, int((steps[-1].finished_at - begun).total_seconds() * 1000))
    return 0


def _evaluation_finish(evaluation: EvaluationRun) -> EvaluationRun:
    results = list(evaluation.results.all())
    scores = scoring.summary([r.scores for r in results])
    overall = scores["overall"] or 0.0
    latencies = [r.latency_ms for r in results if r.run_id is not None]
    with transaction.atomic():
        evaluation.scores = scores
        evaluation.latency_ms_p50 = scoring.percentile(latencies, 0.50)
        evaluation.latency_ms_p95 = scoring.percentile(latencies, 0.95)
        evaluation.tokens = sum(r.tokens for r in results)
        evaluation.cost = sum((r.cost for r in results), Decimal(0))
        evaluation.passed = scoring.passed(overall, evaluation.set.pass_mark)
        evaluation.state = EvaluationState.SUCCEEDED
        evaluation.finished_at = timezone.now()
        evaluation.save(
            update_fields=[
                "scores",
                "latency_ms_p50",
                "latency_ms_p95",
                "tokens",
                "cost",
                "passed",
                "state",
                "finished_at",
            ]
        )
        audit_record(
            actor=None,
            action="evaluation.finished",
            target=Target.of(evaluation),
            data={
                "scores": scores,
                "passed": evaluation.passed,
                "cases": len(results),
                "tokens": evaluation.tokens,
                "cost": str(evaluation.cost),
            },
        )
    return evaluation


def _evaluation_fail(evaluation: EvaluationRun, error: str) -> None:
    with transaction.atomic():
        EvaluationRun.objects.filter(pk=evaluation.pk).update(
            state=EvaluationState.FAILED, error=error[:2000], finished_at=timezone.now()
        )
        audit_record(
            actor=None,
            action="evaluation.failed",
            target=Target.of(evaluation),
            data={"error": error[:500]},
        )
    evaluation.refresh_from_db()
