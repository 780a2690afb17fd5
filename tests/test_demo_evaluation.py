"""The demo agent's evaluation set (agents/evaluation/sets/help-desk.json), loaded by the demo
seed and run in the suite on the offline model through `manage.py evaluate`: its scores are the
README's ("Evaluations")."""

import json
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from agents.evaluation.selectors import version_evaluation_passed
from agents.knowledge.services import document_ingest
from agents.models import Document, EvaluationRun, Run, RunState
from agents.selectors import conversations_of
from governance.models import ApprovalRequest, Escalation, EscalationStatus
from ops.demo import demo_workspace_seed
from tools.models import DemoTicket, ToolInvocation

pytestmark = pytest.mark.django_db


def test_the_demo_agent_s_evaluation_set_scores_as_the_readme_says(tmp_path):
    demo_workspace_seed(credentials_path=tmp_path / "logins.json")
    for document in Document.objects.filter(knowledge_base__slug="handbook"):
        document_ingest(document_id=document.pk)
    admin = get_user_model().objects.get(username="admin")
    out = StringIO()

    call_command("evaluate", "--agent", "help-desk", "--json", stdout=out)

    [report] = json.loads(out.getvalue())
    assert report["set"] == "handbook"
    assert report["state"] == "succeeded"
    assert report["scores"] == {
        "correctness": 0.9333,
        "citations": 0.9333,
        "tools": 1.0,
        "behaviour": 0.9583,
        "overall": 0.9583,
    }
    assert report["passed"] is True
    assert report["tokens"] == 8859
    assert report["cost"] == "0.000000"  # the offline model costs nothing
    assert len(report["cases"]) == 24
    # The one miss: the handbook answers it, the offline model holds it for a reviewer.
    missed = [case for case in report["cases"] if not case["passed"]]
    assert [(c["question"], c["scores"]["outcome"]) for c in missed] == [
        ("Which receipts need a photo?", "escalated")
    ]
    calls = [call for case in report["cases"] for call in case["tool_calls"]]
    assert [(c["name"], c["effect"], c["arguments"].get("priority")) for c in calls] == [
        ("get_ticket_status", "allow", None),
        ("create_ticket", "require_approval", "high"),
        ("create_ticket", "require_approval", None),
    ]
    # Sandbox mode: nothing was executed, no reviewer was asked, nobody's inbox holds an
    # evaluation's answer, and the cases' conversations are in no chat list.
    assert DemoTicket.objects.count() == 0
    assert ToolInvocation.objects.count() == 0
    assert ApprovalRequest.objects.count() == 0
    assert not Escalation.objects.filter(status=EscalationStatus.PENDING).exists()
    assert Run.objects.filter(sandbox=True).count() == 24
    assert not Run.objects.filter(state=RunState.AWAITING_REVIEW).exists()
    assert list(conversations_of(admin)) == []
    evaluation = EvaluationRun.objects.get(pk=report["evaluation"])
    assert version_evaluation_passed(evaluation.version) is True
