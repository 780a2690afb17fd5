"""Two reviewers deciding one request at the same moment: exactly one decision wins. The
decisions commit for real, from two threads with their own connections."""

import json
import threading

import pytest
from django.contrib.auth.models import Group
from django.db import connection

from audit.models import AuditEvent
from governance.approvals import ApprovalError, approval_decide
from governance.models import ApprovalRequest, ApprovalStatus
from tests.personas import parked

pytestmark = pytest.mark.usefixtures("committing_db")


def test_two_reviewers_deciding_at_once_exactly_one_wins(server, help_desk, people):
    run = parked(server, help_desk, people.member)
    request = ApprovalRequest.objects.get(run_id=run.pk)
    other = type(people.member).objects.create_user("second-reviewer")
    other.groups.add(Group.objects.get(name="Reviewer"))
    start = threading.Barrier(2)
    outcome: dict[str, str] = {}

    def decide(user, approve: bool) -> None:
        try:
            start.wait()
            approval_decide(approval_id=request.pk, decided_by=user, approve=approve)
            outcome[user.username] = "decided"
        except ApprovalError as refusal:
            outcome[user.username] = str(refusal)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=decide, args=(people.reviewer, True)),
        threading.Thread(target=decide, args=(other, False)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    request.refresh_from_db()
    winner = request.decided_by.username
    loser = other.username if winner == people.reviewer.username else people.reviewer.username
    assert outcome == {winner: "decided", loser: f"already {request.status} by {winner}"}
    assert request.status == (
        ApprovalStatus.APPROVED if winner == people.reviewer.username else ApprovalStatus.REJECTED
    )
    decisions = AuditEvent.objects.filter(
        run=str(run.pk), action__in=["approval.approved", "approval.rejected"]
    )
    assert decisions.count() == 1
    assert AuditEvent.objects.filter(run=str(run.pk), action="run.requeued").count() == 1
    assert json.loads(AuditEvent.objects.get(run=str(run.pk), action="run.requeued").data)[
        "status"
    ] == str(request.status)
