import json

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from agents.management.commands.ask import follow
from agents.models import Run
from governance.approvals import ApprovalError, approval_decide, escalation_decide
from governance.models import Escalation


class Command(BaseCommand):
    help = (
        "Decide, as REVIEWER, a tool call waiting for approval (by request id) or an answer "
        "held for review (by run id), then follow the run to its end."
    )

    def add_arguments(self, parser):
        parser.add_argument("what", choices=["approval", "answer"])
        parser.add_argument("id", type=int, help="the approval request's id, or the run's")
        parser.add_argument("decision", choices=["approve", "release", "reject"])
        parser.add_argument(
            "--as", "--user", dest="reviewer", required=True, help="the reviewer's username"
        )
        parser.add_argument("--arguments", help="approve with these arguments instead (JSON)")
        parser.add_argument("--answer", help="release this answer instead of the held one")
        parser.add_argument("--comment", default="")
        parser.add_argument("--timeout", type=float, default=120)

    def handle(self, *args, **options):
        reviewer = get_user_model().objects.filter(username=options["reviewer"]).first()
        if reviewer is None:
            raise CommandError("no such user")
        yes = options["decision"] in ("approve", "release")
        try:
            if options["what"] == "approval":
                arguments = _json(options["arguments"]) if options["arguments"] else None
                request = approval_decide(
                    approval_id=options["id"],
                    decided_by=reviewer,
                    approve=yes,
                    arguments=arguments,
                    comment=options["comment"],
                )
                run_id = request.run_id
            else:
                escalation = Escalation.objects.filter(run_id=options["id"]).first()
                if escalation is None:
                    raise CommandError("no such held answer")
                escalation_decide(
                    escalation_id=escalation.pk,
                    decided_by=reviewer,
                    release=yes,
                    answer=options["answer"],
                    comment=options["comment"],
                )
                run_id = escalation.run_id
        except ApprovalError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"{options['decision'].capitalize()}d." if yes else "Rejected.")
        run = Run.objects.get(pk=run_id)
        follow(self, run, timeout=options["timeout"], shown=run.steps.count())


def _json(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CommandError(f"--arguments is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CommandError("--arguments must be a JSON object")
    return value
