import json

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from agents.evaluation.services import EvaluationError, evaluation_execute, evaluation_start
from agents.models import Agent, AgentVersion, EvaluationRun, EvaluationSet, EvaluationState
from agents.versions import version_serving

PASSED, FAILED, BAD_INPUT = 0, 1, 2


class Command(BaseCommand):
    help = (
        "Evaluate a version of an agent on its evaluation sets (each case a real run, tools in "
        "sandbox mode) and print each case's scores and the overall ones. It runs here, in this "
        "process, through the real runtime: no worker is needed (a worker that takes a case's "
        "run first is waited for). Exit status: 0 every set passed, 1 one did not, 2 bad input."
    )

    def add_base_argument(self, parser, *args, **kwargs):
        if "--version" not in args:  # Django's own (its version): ours is the agent's
            super().add_base_argument(parser, *args, **kwargs)

    def add_arguments(self, parser):
        parser.add_argument("--agent", required=True, help="the agent's slug, e.g. help-desk")
        parser.add_argument("--set", dest="set_name", help="one set by name (default: all)")
        parser.add_argument(
            "--version", type=int, help="the version's number (default: the live one)"
        )
        parser.add_argument(
            "--as",
            "--user",
            dest="user",
            help="who runs the cases, with their permissions (default: the set's author)",
        )
        parser.add_argument("--json", action="store_true", help="print JSON, not a table")

    def handle(self, *args, **options):
        agent = Agent.objects.filter(slug=options["agent"]).first()
        if agent is None:
            raise CommandError(f"no agent {options['agent']!r}", returncode=BAD_INPUT)
        version = _version(agent, options["version"])
        sets = EvaluationSet.objects.filter(agent=agent).order_by("name")
        if options["set_name"]:
            sets = sets.filter(name=options["set_name"])
        sets = list(sets)
        if not sets:
            which = f"named {options['set_name']!r}" if options["set_name"] else "at all"
            raise CommandError(f"{agent.name} has no evaluation set {which}", returncode=BAD_INPUT)
        # Every set's actor before anything runs: a bad one is told before an evaluation is paid.
        actors = [_actor(options["user"], evaluation_set) for evaluation_set in sets]
        evaluations = []
        for evaluation_set, actor in zip(sets, actors, strict=True):
            try:
                evaluation = evaluation_start(
                    evaluation_set=evaluation_set, version=version, actor=actor, queue=False
                )
            except EvaluationError as exc:
                raise CommandError(str(exc), returncode=BAD_INPUT) from None
            try:
                evaluation = evaluation_execute(evaluation_id=evaluation.pk)
            except Exception:  # marked failed with its error (and logged): reported below
                evaluation = EvaluationRun.objects.get(pk=evaluation.pk)
            evaluations.append(evaluation)
        if options["json"]:
            self.stdout.write(json.dumps([_as_json(e) for e in evaluations], indent=2))
        else:
            for evaluation in evaluations:
                self._table(evaluation)
        if not all(e.passed for e in evaluations):
            raise SystemExit(FAILED)

    def _table(self, evaluation: EvaluationRun) -> None:
        out = self.stdout.write
        agent = evaluation.set.agent
        out(
            f"{agent.slug} v{evaluation.version.number} on {evaluation.set.name!r} "
            f"(evaluation {evaluation.pk}, pass mark {evaluation.set.pass_mark})"
        )
        header = (
            f"{'#':>3}  {'expect':8} {'did':9} {'facts':>5} {'cites':>5} {'tools':>5} "
            f"{'behav':>5} {'score':>5} {'pass':4} {'ms':>6} {'tokens':>6}  question"
        )
        out(header)
        for n, result in enumerate(evaluation.results.select_related("case").order_by("case"), 1):
            s = result.scores
            out(
                f"{n:>3}  {result.case.expect:8} {s.get('outcome', ''):9} "
                f"{_score(s.get('correctness'))} {_score(s.get('citations'))} "
                f"{_score(s.get('tools'))} {_score(s.get('behaviour'))} "
                f"{_score(s.get('overall'))} {'yes' if result.passed else 'no':4} "
                f"{result.latency_ms:>6} {result.tokens:>6}  {result.case.question[:60]}"
            )
        s = evaluation.scores
        if evaluation.state != EvaluationState.SUCCEEDED:
            out(f"evaluation {evaluation.state}: {evaluation.error}")
            return
        out(
            f"overall {_score(s.get('overall'))}: correctness {_score(s.get('correctness'))}, "
            f"citations {_score(s.get('citations'))}, tools {_score(s.get('tools'))}, "
            f"behaviour {_score(s.get('behaviour'))}; latency p50 {evaluation.latency_ms_p50} "
            f"ms, p95 {evaluation.latency_ms_p95} ms; {evaluation.tokens} tokens, cost "
            f"{evaluation.cost}; {'PASSED' if evaluation.passed else 'FAILED'}"
        )


def _version(agent: Agent, number: int | None) -> AgentVersion:
    versions = AgentVersion.objects.filter(agent=agent).select_related("route")
    if number is not None:
        version = versions.filter(number=number).first()
        if version is None:
            raise CommandError(f"{agent.name} has no version {number}", returncode=BAD_INPUT)
        return version
    # The live version, as the next run would be served (an agent changed outside the
    # console, or never run, has it recorded first: agents.versions).
    return version_serving(agent=agent, conversation=None)


def _actor(username: str | None, evaluation_set: EvaluationSet):
    if username:
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"no active user {username!r}", returncode=BAD_INPUT)
        return user
    if evaluation_set.created_by is None or not evaluation_set.created_by.is_active:
        raise CommandError(
            f"the set {evaluation_set.name!r} has no author to run it as: name one with --as",
            returncode=BAD_INPUT,
        )
    return evaluation_set.created_by


def _score(value) -> str:
    return "    -" if value is None else f"{value:5.2f}"


def _as_json(evaluation: EvaluationRun) -> dict:
    return {
        "evaluation": evaluation.pk,
        "agent": evaluation.set.agent.slug,
        "set": evaluation.set.name,
        "version": evaluation.version.number,
        "state": evaluation.state,
        "error": evaluation.error,
        "pass_mark": str(evaluation.set.pass_mark),
        "passed": evaluation.passed,
        "scores": evaluation.scores,
        "latency_ms_p50": evaluation.latency_ms_p50,
        "latency_ms_p95": evaluation.latency_ms_p95,
        "tokens": evaluation.tokens,
        "cost": str(evaluation.cost),
        "cases": [
            {
                "case": result.case_id,
                "question": result.case.question,
                "expect": result.case.expect,
                "run": result.run_id,
                "answer": result.answer,
                "scores": result.scores,
                "passed": result.passed,
                "latency_ms": result.latency_ms,
                "tokens": result.tokens,
                "cost": str(result.cost),
                "tool_calls": result.tool_calls,
            }
            for result in evaluation.results.select_related("case").order_by("case")
        ],
    }
