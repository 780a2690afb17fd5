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


class ResultSerializer(serializers.ModelSerializer):
    case = serializers.IntegerField(source="case_id")
    question = serializers.CharField(source="case.question")
    expect = serializers.CharField(source="case.expect")
    scores = serializers.JSONField(help_text="Each score of the case (0 to 1) and notes.")
    tool_calls = serializers.JSONField(help_text="The calls it made: recorded, never executed.")
    run = serializers.SerializerMethodField(help_text="The run that answered it.")
    cost = serializers.DecimalField(max_digits=12, decimal_places=6)

    class Meta:
        model = EvaluationResult
        fields = [
            "case",
            "question",
            "expect",
            "passed",
            "answer",
            "scores",
            "tool_calls",
            "latency_ms",
            "tokens",
            "cost",
            "run",
        ]

    def get_run(self, result) -> str | None:
        return reverse("api-run", args=[result.run_id]) if result.run_id else None


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
        report = self.context.get("report")
        return report if report is not None else evaluation_report(evaluation)

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
        return ResultSerializer(self._report(evaluation).results, many=True).data


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


def _side(result: EvaluationResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    run = reverse("api-run", args=[result.run_id]) if result.run_id else None
    return {"passed": result.passed, "answer": result.answer, "scores": result.scores, "run": run}


def _difference(row: Difference) -> dict[str, Any]:
    return {
        "case": row.case_id,
        "question": row.question,
        "change": row.change,
        "a": _side(row.a),
        "b": _side(row.b),
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


def _shown(evaluation: EvaluationRun) -> dict[str, Any]:
    report = evaluation_report(evaluation)
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
        return Response(_shown(evaluation), status=202, headers={"Location": url})


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
        return Response(_shown(access_evaluation(request.user, pk)))


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
        return Response(_comparison(side_by_side(first, second)))
