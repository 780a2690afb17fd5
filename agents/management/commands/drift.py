from datetime import date, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from agents.drift import Measure, Window, drift_check, drift_measure, reference_before
from agents.models import Agent

OK, DRIFTED, BAD_INPUT = 0, 1, 2


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise CommandError(f"not a date (YYYY-MM-DD): {text!r}", returncode=BAD_INPUT) from None


class Command(BaseCommand):
    help = (
        "Compare each agent's confidence, retrieval similarity, refusal rate and tool-call mix "
        "on a day (yesterday by default) with its reference window, record the checks (as the "
        "daily drift-check beat job does; --dry-run records nothing) and print one line per "
        "agent and signal. The reference is the agent's pinned window (the console's drift "
        "page), else the WARDEN_DRIFT_REFERENCE_DAYS before the day, unless --reference. "
        "Exit status: 0 nothing drifted, 1 at least one signal alerts, "
        "2 bad arguments (a date, a window, an agent)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--day", help="YYYY-MM-DD (default: yesterday, in TIME_ZONE)")
        parser.add_argument(
            "--reference",
            metavar="SINCE:UNTIL",
            help="the reference days, both included (default: the WARDEN_DRIFT_REFERENCE_DAYS "
            "before the day)",
        )
        parser.add_argument("--agent", action="append", metavar="SLUG", help="only this agent")
        parser.add_argument("--dry-run", action="store_true", help="measure, record nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        day = _day(options["day"]) if options["day"] else timezone.localdate() - timedelta(1)
        reference = None  # each agent's pinned window, or the days before
        if options["reference"]:
            since, _, until = options["reference"].partition(":")
            try:
                reference = Window(_day(since), _day(until))
            except ValueError as exc:
                raise CommandError(str(exc), returncode=BAD_INPUT) from None
        agents = None
        if options["agent"]:
            slugs = options["agent"]
            agents = list(Agent.objects.filter(slug__in=slugs).order_by("slug"))
            missing = sorted(set(slugs) - {a.slug for a in agents})
            if missing:
                raise CommandError(f"no agent {', '.join(missing)}", returncode=BAD_INPUT)
        if options["dry_run"]:
            measures = drift_measure(day=day, reference=reference, agents=agents)
        else:
            measures = [m for m, _ in drift_check(day=day, reference=reference, agents=agents)]
        usual = reference or reference_before(day)
        self.stdout.write(f"Drift on {day:%Y-%m-%d} against {usual}")
        for measure in measures:
            line = _line(measure)
            if measure.reference != usual:
                line += f" [pinned reference {measure.reference}]"
            self.stdout.write(line)
        alerts = sum(1 for m in measures if m.alert)
        self.stdout.write(f"{alerts} alert{'' if alerts == 1 else 's'}")
        if alerts:
            raise SystemExit(DRIFTED)


def _line(m: Measure) -> str:
    head = f"{m.agent.slug:<24} {m.signal:<10}"
    if m.value is None:
        return f"{head} skipped: {m.reason}"
    verdict = "ALERT" if m.alert else "ok"
    return (
        f"{head} {m.statistic} {m.value:+.4f} (threshold {m.threshold:g}) {verdict}: "
        f"{m.day_summary} vs {m.reference_summary}"
    )
