"""Evaluations through the API: start one of a set on a version of its agent, read it as it
runs and once finished (state, scores, each case's result), and compare two of one set case by
case. For the agent's owners who may also use it (agents.evaluation.owners, the console's
rule): any other set or evaluation is answered as missing."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import exceptions, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.evaluation.owners import access_evaluation, access_evaluation_set, version_of
from agents.evaluation.pages import (
    CHANGES,
    SCORES,
    Difference,
    Line,
    Report,
    SideBySide,
    evaluation_report,
    score_of,
    side_by_side,
)
from agents.models import EvaluationResult, EvaluationRun
from integrations.api.auth import HasScope

READ = "evaluations:read"
START = "evaluations:run"


class EvaluationRequest(serializers.Serializer):
    set = serializers.IntegerField(min_value=1, help_text="The evaluation set's id.")
    version = serializers.IntegerField(
        required=False,
        min_value=1,
        help_text="The id of a version of the set's agent; left out, its live version.",
    )


class ResultSerializer(serializers.Serializer):
    case = serializers.IntegerField()
    question = serializers.CharField()
    expect = serializers.CharField()
    passed = serializers.BooleanField()
    answer = serializers.CharField(
        help_text="As the caller may read it: a run that drew on a knowledge base the caller "
        "may not read shows a notice instead."
    )
    scores = serializers.JSONField(help_text="Each score of the case (0 to 1) and notes.")
    tool_calls = serializers.JSONField(help_text="The calls it made: recorded, never executed.")
    latency_ms = serializers.IntegerField()
    tokens = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=12, decimal_places=6)
    run = serializers.CharField(allow_null=True, help_text="The run that answered it.")


def _result(line: Line) -> dict[str, Any]:
    result = line.result
    return {
        "case": result.case_id,
        "question": result.case.question,
        "expect": result.case.expect,
        "passed": result.passed,
        "answer": line.answer,
        "scores": dict(line.scores) | {"outcome": line.outcome},
        "tool_calls": line.tool_calls,
        "latency_ms": result.latency_ms,
        "tokens": result.tokens,
        "cost": result.cost,
        "run": reverse("api-run", args=[result.run_id]) if result.run_id else None,
    }


class EvaluationSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    set = serializers.IntegerField(source="set_id")
    set_name = serializers.CharField(source="set.name")
    agent = serializers.CharField(source="set.agent.slug")
    version = serializers.IntegerField(source="version_id")
    version_number = serializers.IntegerField(source="version.number")
    scores = serializers.SerializerMethodField(
        help_text="The means over the cases (0 to 1); null until known."
    )
    done = serializers.SerializerMethodField(help_text="Cases done.")
    total = serializers.SerializerMethodField(help_text="Cases in the set.")
    cost = serializers.DecimalField(max_digits=12, decimal_places=6)
    results = serializers.SerializerMethodField()

    class Meta:
        model = EvaluationRun
        fields = [
            "id",
            "url",
            "set",
            "set_name",
            "agent",
            "version",
            "version_number",
            "state",
            "passed",
            "scores",
            "done",
            "total",
            "latency_ms_p50",
            "latency_ms_p95",
            "tokens",
            "cost",
            "error",
            "created_at",
            "finished_at",
            "results",
        ]

    def _report(self, evaluation) -> Report:
        report: Report = self.context["report"]
        return report

    def get_url(self, evaluation) -> str:
        return reverse("api-evaluation", args=[evaluation.pk])

    def get_scores(self, evaluation) -> dict[str, float | None]:
        return {name: score_of(evaluation.scores, name) for name in SCORES}

    def get_done(self, evaluation) -> int:
        return self._report(evaluation).done

    def get_total(self, evaluation) -> int:
        return self._report(evaluation).total

    @extend_schema_field(ResultSerializer(many=True))
    def get_results(self, evaluation) -> Any:
        return [_result(line) for line in self._report(evaluation).lines]


class ScoreChange(serializers.Serializer):
    score = serializers.CharField()
    a = serializers.FloatField(allow_null=True)
    b = serializers.FloatField(allow_null=True)
    change = serializers.FloatField(allow_null=True, help_text="b - a; null if either is.")


class Side(serializers.Serializer):
    passed = serializers.BooleanField()
    answer = serializers.CharField()
    scores = serializers.JSONField()
    run = serializers.CharField(allow_null=True)


class CaseDifference(serializers.Serializer):
    case = serializers.IntegerField()
    question = serializers.CharField()
    change = serializers.ChoiceField(
        choices=list(CHANGES),
        help_text="broken: passed in a, failed in b; fixed: the other way; worse or better: "
        "passed (or failed) in both, its overall score lower or higher in b; new or gone: only "
        "b, or only a, has a result for it.",
    )
    a = Side(allow_null=True)
    b = Side(allow_null=True)
    scores = ScoreChange(many=True)


class ComparisonSerializer(serializers.Serializer):
    a = serializers.CharField(help_text="The first evaluation's URL.")
    b = serializers.CharField(help_text="The second evaluation's URL.")
    counts = serializers.DictField(child=serializers.IntegerField())
    scores = ScoreChange(many=True)
    cases = CaseDifference(many=True)


def _changes(deltas) -> list[dict[str, Any]]:
    return [{"score": n, "a": a, "b": b, "change": c} for n, a, b, c in deltas]


def _side(result: EvaluationResult | None, answer: str) -> dict[str, Any] | None:
    if result is None:
        return None
    run = reverse("api-run", args=[result.run_id]) if result.run_id else None
    scores = {name: score_of(result.scores, name) for name in SCORES}
    return {"passed": result.passed, "answer": answer, "scores": scores, "run": run}


def _difference(row: Difference) -> dict[str, Any]:
    return {
        "case": row.case_id,
        "question": row.question,
        "change": row.change,
        "a": _side(row.a, row.a_answer),
        "b": _side(row.b, row.b_answer),
        "scores": _changes(row.scores),
    }


def _comparison(comparison: SideBySide) -> dict[str, Any]:
    return {
        "a": reverse("api-evaluation", args=[comparison.a.pk]),
        "b": reverse("api-evaluation", args=[comparison.b.pk]),
        "counts": comparison.counts(),
        "scores": _changes(comparison.totals),
        "cases": [_difference(row) for row in comparison.rows],
    }


def _shown(evaluation: EvaluationRun, viewer) -> dict[str, Any]:
    report = evaluation_report(evaluation, viewer)
    return EvaluationSerializer(evaluation, context={"report": report}).data


@extend_schema(tags=["evaluations"])
class EvaluationCreate(APIView):
    permission_classes = [HasScope]
    required_scope = START

    @extend_schema(
        summary="Evaluate a version of an agent on one of its evaluation sets "
        "(scope evaluations:run)",
        description="Every case of the set becomes a real run of the agent as the version "
        "configures it, as the caller, tools in sandbox mode (calls recorded, never made). "
        "Answers 202 with the evaluation, `Location` its URL, to follow until its `state` is "
        "`succeeded` or `failed`. For the agent's owners who may use it: any other set is a 404 "
        "problem (`not-found`), as a missing one; a version that is not the set's agent's a 400 "
        "(`invalid`). Audited.",
        request=EvaluationRequest,
        responses={202: EvaluationSerializer},
    )
    def post(self, request):
        from agents.evaluation.services import evaluation_start

        body = EvaluationRequest(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        evaluation_set = access_evaluation_set(request.user, data["set"])
        version = version_of(evaluation_set, data.get("version"))
        if version is None:
            problem = "not a version of the set's agent" if "version" in data else "none live"
            raise exceptions.ValidationError({"version": [problem]})
        evaluation = evaluation_start(
            evaluation_set=evaluation_set, version=version, actor=request.user
        )
        evaluation = access_evaluation(request.user, evaluation.pk)
        url = reverse("api-evaluation", args=[evaluation.pk])
        return Response(_shown(evaluation, request.user), status=202, headers={"Location": url})


@extend_schema(
    tags=["evaluations"],
    summary="An evaluation: its state, scores and each case's result (scope evaluations:read)",
    description="404 for an evaluation of an agent the caller does not own, as for a missing one.",
    responses={200: EvaluationSerializer},
)
class EvaluationDetail(APIView):
    permission_classes = [HasScope]
    required_scope = READ

    def get(self, request, pk: int):
        return Response(_shown(access_evaluation(request.user, pk), request.user))


@extend_schema(
    tags=["evaluations"],
    summary="Two evaluations of one set side by side, case by case (scope evaluations:read)",
    description="For each case, whether it passed in each (`change`: broken, fixed, same, "
    "missing), both answers and each score's change from `a` to `b`; the overall scores' "
    "changes too. Changes first. Evaluations of two sets are a 400 problem (`invalid`).",
    responses={200: ComparisonSerializer},
)
class EvaluationCompare(APIView):
    permission_classes = [HasScope]
    required_scope = READ

    def get(self, request, pk: int, other: int):
        first = access_evaluation(request.user, pk)
        second = access_evaluation(request.user, other)
        if first.set_id != second.set_id:
            raise exceptions.ValidationError({"other": ["an evaluation of the same set"]})
        return Response(_comparison(side_by_side(first, second, request.user)))
