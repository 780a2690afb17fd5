"""The tool admin: JSON editors checked as the admin types, refused saves that keep nothing, and
the audited test call."""

import json

import pytest
from django.contrib.auth import get_user_model

from audit.models import AuditEvent
from tools.models import DemoTicket, Tool

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client):
    gail = get_user_model().objects.create_user("gail", is_staff=True, is_superuser=True)
    client.force_login(gail)
    return client


def check(client, field: str, value, **extra):
    response = client.post(
        f"/admin/tools/tool/check/{field}/",
        json.dumps({"value": value, **extra}),
        content_type="application/json",
    )
    assert response.status_code == 200
    return response.json()["problem"]


def test_the_editors_are_checked_by_the_models_validators(staff):
    schema = json.dumps({"type": "object", "properties": {"id": {"type": "integr"}}})
    url = json.dumps({"method": "GET", "url": "https://crm.example.com/{account}"})
    parameters = json.dumps({"type": "object", "required": ["account"]})

    assert check(staff, "parameters", schema).startswith(
        "Not a valid JSON Schema at /properties/id/type"
    )
    assert check(staff, "parameters", '{"type": "object",').startswith("Not JSON: ")
    assert check(staff, "parameters", '{"type": "object"}') is None
    assert check(staff, "config", url, kind="http", parameters="{}") == (
        "The URL's {account} must be a required argument of the tool"
    )
    assert check(staff, "config", url, kind="http", parameters=parameters) is None
    assert check(staff, "config", "{}", kind="") == "Choose the tool's kind first."


def test_the_check_is_for_staff_only(client):
    response = client.post(
        "/admin/tools/tool/check/parameters/", "{}", content_type="application/json"
    )
    assert response.status_code == 302  # to the admin login


def test_an_invalid_schema_is_refused_on_save_and_nothing_is_kept(staff):
    response = staff.post(
        "/admin/tools/tool/add/",
        {
            "name": "crm_lookup",
            "description": "Look up an account.",
            "kind": "http",
            "parameters": '{"type": "object", "properties": {"id": {"minLength": -1}}}',
            "config": '{"method": "GET", "url": "https://crm.example.com/"}',
            "risk": "read",
            "approval": "tier",
            "timeout": "30",
            "result_limit": "16000",
            "rate_limit": "0",
        },
    )

    assert response.status_code == 200
    page = response.content.decode()
    assert "Not a valid JSON Schema at /properties/id/minLength" in page
    assert "&quot;minLength&quot;: -1" in page  # what was typed is shown back to fix
    assert not Tool.objects.filter(name="crm_lookup").exists()


def test_a_test_call_runs_the_tool_as_the_admin_and_is_audited(staff):
    tool = Tool.objects.get(name="create_ticket")
    tool.enabled = True
    tool.save()
    page = f"/admin/tools/tool/{tool.pk}/test-call/"

    assert "Test call" in staff.get(f"/admin/tools/tool/{tool.pk}/change/").content.decode()
    bad = staff.post(page, {"arguments": '{"title": '})
    wrong = staff.post(page, {"arguments": '{"title": 3}'})
    good = staff.post(page, {"arguments": '{"title": "Printer jam", "priority": "low"}'})

    assert "Enter a valid JSON" in bad.content.decode()
    assert "invalid arguments at /title: 3 is not of type" in wrong.content.decode()
    ticket = DemoTicket.objects.get()
    assert ticket.title == "Printer jam"
    assert f"&quot;ticket&quot;: {ticket.pk}" in good.content.decode()
    events = [json.loads(e.data) for e in AuditEvent.objects.filter(action="tool.test_call")]
    assert [(e["status"], e["arguments"]) for e in events] == [
        ("failed", {"title": 3}),
        ("succeeded", {"title": "Printer jam", "priority": "low"}),
    ]
    assert ticket.idempotency_key == events[1]["idempotency_key"]


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (r'{"title": "\ud800"}', "arguments.title contains an unpaired surrogate"),
        (r'{"title": "ok", "\u0000": 1}', r"arguments.\u0000 is a key that contains a NUL"),
    ],
)
def test_a_test_call_with_text_no_table_can_keep_is_a_form_error_and_runs_nothing(
    staff, arguments, named
):
    tool = Tool.objects.get(name="create_ticket")
    tool.enabled = True
    tool.save()

    response = staff.post(f"/admin/tools/tool/{tool.pk}/test-call/", {"arguments": arguments})

    assert response.status_code == 200
    assert named in response.content.decode()
    assert not DemoTicket.objects.exists()
    assert not AuditEvent.objects.filter(action="tool.test_call").exists()
