import time
from typing import NoReturn

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from agents.models import FINAL_STATES, Agent, Run, RunState, RunStep
from agents.services import RunError
from agents.submit import run_submit
from governance.models import ApprovalRequest


class Command(BaseCommand):
    help = (
        "Ask an agent something from the command line, as USER, and print the steps and the "
        "answer. A Celery worker must be running (make run starts one). Exit status: 0 "
        "answered, 1 refused or failed, 3 waiting for a reviewer (a tool call to approve or "
        "an answer held for review)."
    )

    def add_arguments(self, parser):
        parser.add_argument("agent", help="the agent's slug, e.g. help-desk")
        parser.add_argument("message")
        parser.add_argument(
            "--as", "--user", dest="user", default="member", help="who asks (default: member)"
        )
        parser.add_argument("--timeout", type=float, default=120)

    def handle(self, *args, **options):
        user = get_user_model().objects.filter(username=options["user"]).first()
        agent = Agent.objects.filter(slug=options["agent"]).first()
        if user is None or agent is None:
            raise CommandError("no such user or agent")
        try:  # it polls the steps: nothing to stream to
            run = run_submit(actor=user, agent=agent, input=options["message"], stream=False)
        except RunError as exc:
            raise CommandError(str(exc)) from None
        follow(self, run, timeout=options["timeout"])


PARKED = (RunState.AWAITING_APPROVAL, RunState.AWAITING_REVIEW)
WAITING_FOR_A_REVIEWER = 3  # the exit status of a run parked for a person


def _parked(command: BaseCommand, message: str) -> NoReturn:
    """The run waits for a reviewer: not a failure, but no answer either, which a script
    tells by the exit status."""
    command.stdout.write(message)
    raise SystemExit(WAITING_FOR_A_REVIEWER)


def follow(command: BaseCommand, run: Run, *, timeout: float, shown: int = 0) -> None:
    """Print the run's steps as they commit, then its answer, or where it waits and for whom."""
    deadline = time.monotonic() + timeout
    while True:
        for step in RunStep.objects.filter(run=run, index__gte=shown).order_by("index"):
            command.stdout.write(f"  step {step.index} {step.kind}: {_summary(step)}")
            shown = step.index + 1
        run = Run.objects.get(pk=run.pk)
        if run.state in FINAL_STATES or run.state in PARKED:
            break
        if time.monotonic() > deadline:
            raise CommandError(
                f"run {run.pk} is still {run.state}: is a worker running (make run)?"
            )
        time.sleep(0.2)
    if run.state == RunState.AWAITING_APPROVAL:
        request = ApprovalRequest.objects.filter(run_id=run.pk, status="pending").last()
        if request is None:  # a reviewer decided it since the run was read
            raise CommandError(f"run {run.pk}: its approval request was decided meanwhile")
        _parked(
            command,
            f"Waiting for approval of {request.tool_name} (request {request.pk}): a reviewer "
            f"decides it in the inbox (/inbox/), or with `manage.py decide approval {request.pk} "
            "approve --as REVIEWER`.",
        )
    if run.state == RunState.AWAITING_REVIEW:
        _parked(
            command,
            f"Held for review: the answer's confidence is below the agent's threshold (run "
            f"{run.pk}); a reviewer releases or rejects it with `manage.py decide answer "
            f"{run.pk} release --as REVIEWER`, or in the inbox (/inbox/).",
        )
    if run.state == RunState.SUCCEEDED:
        confidence = f" (confidence {run.confidence})" if run.confidence is not None else ""
        command.stdout.write(f"{run.answer}{confidence}")
        for cited in run.citations:
            command.stdout.write(
                f"  [{cited['n']}] {cited['title']} (document {cited['document']}, "
                f"passage {cited['position'] + 1})"
            )
    else:
        raise CommandError(f"run {run.pk} {run.state}: {run.error}")


def _summary(step: RunStep) -> str:
    if step.kind == "tool":
        call = step.input.get("call", {})
        return f"{call.get('name')} {step.input.get('arguments', call.get('arguments'))} -> " + str(
            step.output.get("result", step.output.get("error"))
        )
    if step.kind == "approval":
        return f"waits for a reviewer ({', '.join(step.output.get('reasons', []))})"
    if step.kind == "retrieval":
        return f"{len(step.output.get('passages', []))} passages"
    calls = step.output.get("tool_calls") or []
    return ", ".join(f"calls {c['name']}" for c in calls) or "answers"
