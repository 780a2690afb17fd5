import json
import stat

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import Group
from django.db import connection
from django.test import RequestFactory

from governance import roles
from ops.demo import demo_workspace_seed

pytestmark = pytest.mark.django_db
User = get_user_model()


def test_seed_creates_role_groups_and_one_user_per_role(tmp_path):
    logins = demo_workspace_seed(credentials_path=tmp_path / "logins.json")

    assert sorted(Group.objects.values_list("name", flat=True)) == sorted(roles.ROLE_GROUPS)
    assert {(x.username, x.role) for x in logins} == {
        ("admin", roles.GOVERNANCE_ADMIN),
        ("reviewer", roles.REVIEWER),
        ("member", roles.MEMBER),
        ("integration", roles.INTEGRATION),
    }
    for login in logins:
        user = User.objects.get(username=login.username)
        assert list(user.groups.values_list("name", flat=True)) == [login.role]
        assert user.is_staff is (login.role == roles.GOVERNANCE_ADMIN)


def _sign_in():
    """A sign-in request, as the lockout's backend (axes) needs one to authenticate."""
    return RequestFactory().post("/login/")


def test_seed_passwords_are_generated_work_and_are_kept_privately(tmp_path):
    path = tmp_path / "logins.json"

    logins = {x.username: x.password for x in demo_workspace_seed(credentials_path=path)}

    assert len({logins["admin"], logins["reviewer"], logins["member"]}) == 3
    assert all(len(logins[name]) >= 16 for name in ("admin", "reviewer", "member"))
    assert authenticate(_sign_in(), username="member", password=logins["member"]) is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = {e["username"]: e["password"] for e in json.loads(path.read_text())}
    assert stored == logins


def test_integration_account_has_no_password(tmp_path):
    logins = {x.username: x for x in demo_workspace_seed(credentials_path=tmp_path / "l.json")}

    assert logins["integration"].password is None
    assert User.objects.get(username="integration").has_usable_password() is False


def test_seed_is_idempotent_and_never_changes_a_password(tmp_path):
    path = tmp_path / "logins.json"
    first = demo_workspace_seed(credentials_path=path)
    hashes = dict(User.objects.values_list("username", "password"))

    second = demo_workspace_seed(credentials_path=path)

    assert second == first
    assert dict(User.objects.values_list("username", "password")) == hashes
    assert User.objects.count() == 4
    assert Group.objects.count() == 4


def test_seed_recreates_only_what_is_missing(tmp_path):
    path = tmp_path / "logins.json"
    first = {x.username: x.password for x in demo_workspace_seed(credentials_path=path)}
    User.objects.filter(username="reviewer").delete()

    second = {x.username: x.password for x in demo_workspace_seed(credentials_path=path)}

    assert second["admin"] == first["admin"]
    assert second["reviewer"] != first["reviewer"]
    assert authenticate(_sign_in(), username="reviewer", password=second["reviewer"]) is not None


def test_seed_demo_command_prints_the_new_logins(tmp_path, settings, capsys):
    from django.core.management import call_command

    settings.VAR_DIR = tmp_path
    call_command("seed_demo")
    printed = capsys.readouterr().out
    stored = {
        e["username"]: e["password"]
        for e in json.loads((tmp_path / "demo-logins.json").read_text())
    }

    assert f"member       {stored['member']}" in printed
    assert "integration" in printed


def test_seed_service_passes_passwords_that_never_reach_the_audit_table(tmp_path):
    from auditlog.models import LogEntry

    logins = demo_workspace_seed(credentials_path=tmp_path / "logins.json")

    with connection.cursor() as cursor:
        cursor.execute("SELECT audit_auditevent::text FROM audit_auditevent")
        audit_text = "\n".join(row[0] for row in cursor.fetchall())
    history = "\n".join(str(entry.changes) for entry in LogEntry.objects.all())
    passwords = [login.password for login in logins if login.password]
    assert len(passwords) == 3
    assert "workspace.demo_seeded" in audit_text
    for password in passwords:
        assert password not in audit_text
        assert password not in history
    assert "pbkdf2" not in history  # no password hashes either
    assert "md5$" not in history


def test_unreadable_logins_file_reads_as_none_recorded(tmp_path):
    from ops.demo import demo_logins_read

    path = tmp_path / "logins.json"
    path.write_text("{not json")

    assert demo_logins_read(credentials_path=path) == []


def test_the_seeded_agent_is_its_v1_with_a_real_reason_and_a_first_run_records_none(tmp_path):
    """The demo agent's first version says what it is (not OUTSIDE: a change nobody made
    through the console), serves its runs, and a second seed records no other."""
    from agents.models import Agent, AgentVersion
    from agents.versions import OUTSIDE, version_serving
    from audit.models import AuditEvent
    from ops.demo import FIRST_VERSION

    demo_workspace_seed(credentials_path=tmp_path / "logins.json")
    demo_workspace_seed(credentials_path=tmp_path / "logins.json")

    agent = Agent.objects.get(slug="help-desk")
    [first] = AgentVersion.objects.filter(agent=agent)
    assert (first.number, first.reason, first.created_by) == (1, FIRST_VERSION, None)
    assert first.reason != OUTSIDE
    assert agent.live_version == first
    assert len(first.config["knowledge_bases"]) == 1  # the handbook, added in the same seed
    assert sorted(c["after"] for c in first.changes if c["field"] == "tools") == [
        ["create_ticket", "get_ticket_status"]
    ]
    created = AuditEvent.objects.get(action="agent.version_created")
    assert (created.actor_type, json.loads(created.data)["reason"]) == ("system", FIRST_VERSION)
    assert version_serving(agent=agent, conversation=None) == first
    assert AgentVersion.objects.filter(agent=agent).count() == 1
