from typing import Any

from django.core.management.base import BaseCommand

from audit.selectors import audit_verify_chain


class Command(BaseCommand):
    help = (
        "Walk the audit trail's hash chains and anchors. Prints OK with the counts, or the first "
        "broken link (lowest sequence) and what differs; exits 1 on a break."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        report = audit_verify_chain()
        if report.ok:
            self.stdout.write(report.summary())
            return
        self.stderr.write(report.summary())
        for problem in sorted(report.breaks)[1:10]:
            self.stderr.write(f"  also: {problem}")
        raise SystemExit(1)
