"""What governance admins run MCP from: which tools and agents are exposed (off by default),
which agents an agent may ask, an application's MCP allowlist, and the MCP sessions open now."""

from datetime import timedelta

import pytest
from django.utils import timezone

from agents.models import Agent
from integrations.models import MCPClientAccess, MCPSession
from integrations.tests.conftest import application_for
from tools.models import Tool

pytestmark = pytest.mark.django_db


def test_nothing_is_exposed_over_mcp_until_an_admin_says_so(people):
    assert not Tool.objects.filter(mcp_exposed=True).exists()
    assert Tool._meta.get_field("mcp_exposed").default is False
    assert Agent._meta.get_field("mcp_exposed").default is False


def test_the_admin_sets_exposure_delegates_and_an_application_s_allowlist(client, people):
    client.force_login(people.admin)
    tool = Tool.objects.get(name="get_ticket_status")
    application = application_for(people.integration, "Desktop")

    tool_form = client.get(f"/admin/tools/tool/{tool.pk}/change/").content.decode()
    agent_form = client.get("/admin/agents/agent/add/").content.decode()
    app_form = client.get(f"/admin/oauth2_provider/application/{application.pk}/change/")

    assert 'name="mcp_exposed"' in tool_form
    assert 'name="mcp_exposed"' in agent_form
    assert 'name="delegates"' in agent_form
    assert app_form.status_code == 200
    assert "MCP allowlist" in app_form.content.decode()
    assert 'name="mcp_access-0-tools"' in app_form.content.decode()
    assert not MCPClientAccess.objects.exists()


def test_the_sessions_open_now_are_told_from_the_idle_and_the_closed(client, people, settings):
    settings.WARDEN_MCP_SESSION_IDLE_SECONDS = 600
    now = timezone.now()
    for key, seen, closed in [
        ("session:open", now, None),
        ("session:idle", now - timedelta(seconds=601), None),
        ("session:closed", now, now),
    ]:
        MCPSession.objects.create(
            key=key, user=people.member, client=key, last_seen_at=seen, closed_at=closed
        )
    client.force_login(people.admin)

    page = client.get("/admin/portal/mcpsession/?open=yes").content.decode()

    assert "session:open" in page
    assert "session:idle" not in page
    assert "session:closed" not in page
    assert [s.key for s in MCPSession.objects.filter(MCPSession.OPEN())] == ["session:open"]
