from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

from audit.services import SYSTEM, Target, audit_record
from config.files import write_private
from governance import roles
from governance.models import Action
from governance.services import access_grant
from tools.demo_erp import demo_erp_install

DEMO_USERS = (
    ("admin", roles.GOVERNANCE_ADMIN),
    ("reviewer", roles.REVIEWER),
    ("member", roles.MEMBER),
    ("integration", roles.INTEGRATION),
)


def demo_logins_path() -> Path:
    return settings.VAR_DIR / "demo-logins.json"


@dataclass(frozen=True)
class DemoLogin:
    username: str
    role: str
    password: str | None  # None: API-only account, or a password this seed did not set


def demo_workspace_seed(*, credentials_path: Path) -> list[DemoLogin]:
    """Create the role groups and one demo user per role; existing users are left as they are.

    Passwords are generated for users this call creates and kept in `credentials_path` (mode
    0600) together with those recorded before; the integration account has no password, it will
    authenticate with tokens. The file is written inside the transaction, so a failure to write
    it leaves no user without a known password.
    """
    User = get_user_model()
    recorded = {
        login.username: login.password
        for login in demo_logins_read(credentials_path=credentials_path)
    }
    logins = []
    created_users: list[str] = []
    with transaction.atomic():
        groups = {}
        created_groups = []
        for name in roles.ROLE_GROUPS:
            groups[name], created = Group.objects.get_or_create(name=name)
            if created:
                created_groups.append(name)
        for username, role in DEMO_USERS:
            user, created = User.objects.get_or_create(
                username=username, defaults={"email": f"{username}@example.com"}
            )
            if created:
                password = None if role == roles.INTEGRATION else secrets.token_urlsafe(12)
                user.set_password(password)  # None gives an unusable password
                user.is_staff = user.is_superuser = role == roles.GOVERNANCE_ADMIN
                user.save(update_fields=["password", "is_staff", "is_superuser"])
                user.groups.add(groups[role])
                recorded[username] = password
                created_users.append(username)
            logins.append(DemoLogin(username, role, recorded.get(username)))
        if settings.EMBEDDED_DATABASE:  # production points sql_query at its own databases
            demo_erp_install()
        agent_created = _demo_agent(users=list(groups.values()))
        handbook_created = _demo_handbook(
            owner=User.objects.get(username="admin"), readers=list(groups.values())
        )
        if agent_created or handbook_created:
            _demo_version(first=agent_created)
        evaluation_created = _demo_evaluation_set(owner=User.objects.get(username="admin"))
        if (
            created_users
            or created_groups
            or agent_created
            or handbook_created
            or evaluation_created
        ):
            audit_record(
                actor=SYSTEM,
                action="workspace.demo_seeded",
                target=Target("workspace", "demo", "Demo workspace"),
                data={
                    "created_users": created_users,
                    "created_groups": created_groups,
                    "created_agent": agent_created,
                    "created_handbook": handbook_created,
                    "created_evaluation_set": evaluation_created,
                },
            )
        write_private(
            credentials_path,
            json.dumps(
                [{"username": x.username, "role": x.role, "password": x.password} for x in logins],
                indent=2,
            )
            + "\n",
        )
    return logins


def _demo_agent(*, users: list[Group]) -> bool:
    """The demo's agent on the offline model: works with no provider key and no network. The
    role groups may use it, its route and its tools."""
    from agents.models import Agent, AnswerCache, Deployment, ModelRoute
    from tools.models import Tool

    route, created = ModelRoute.objects.get_or_create(
        name="local",
        defaults={
            "description": "warden-local, the offline model",
            "num_retries": 0,
            "external": False,  # it runs inside Warden
        },
    )
    if created:
        Deployment.objects.create(route=route, position=1, model="warden-local/demo")
    agent, agent_created = Agent.objects.get_or_create(
        slug="help-desk",
        defaults={
            "name": "IT help desk",
            "description": "Opens IT tickets, looks up their status (demo tools) and answers "
            "from the employee handbook.",
            "system_prompt": "You are the IT help desk. Use the tools to open and check tickets, "
            "and answer questions from the handbook passages, citing them.",
            "route": route,
            # Repeated and similar handbook questions are answered again without the model
            # (agents.answer_cache): the demo shows it, in the trace and the audit trail.
            "answer_cache": AnswerCache.SIMILAR,
        },
    )
    if agent_created:
        # The built-in tools' rows exist since migrate (tools.registry.python_tools_sync).
        tools = Tool.objects.filter(name__in=DEMO_TOOLS)
        tools.update(enabled=True)
        agent.tools.set(tools)
        for group in users:
            for obj in [agent, route, *tools]:
                access_grant(obj=obj, holder=group, action=Action.USE, actor=SYSTEM)
    return agent_created


DEMO_TOOLS = ["create_ticket", "get_ticket_status"]
FIRST_VERSION = (
    "The demo workspace's IT help desk as seeded: the offline model, the demo ticket tools and "
    "the employee handbook."
)
HANDBOOK_VERSION = "The demo's employee handbook, added to the help desk."


def _demo_version(*, first: bool) -> None:
    """Record the demo agent as seeded as its version, saying so (else its first run would find
    it changed by nobody knows whom: agents.versions.OUTSIDE)."""
    from agents.models import Agent
    from agents.versions import version_record

    agent = Agent.objects.filter(slug="help-desk").first()
    if agent is not None:
        reason = FIRST_VERSION if first else HANDBOOK_VERSION
        version_record(agent=agent, actor=SYSTEM, reason=reason)


HANDBOOK = Path(__file__).resolve().parent.parent / "agents" / "knowledge" / "handbook"


def _demo_handbook(*, owner, readers: list[Group]) -> bool:
    """A small handbook written for the demo (leave, expenses, IT FAQ, onboarding), readable by
    every role and read by the demo agent before it answers. A worker ingests the documents
    after the seed commits."""
    from agents.knowledge.services import document_add
    from agents.models import Agent, KnowledgeBase

    base, created = KnowledgeBase.objects.get_or_create(
        slug="handbook",
        defaults={
            "name": "Employee handbook",
            "description": "Leave, expenses, the IT help desk FAQ and onboarding (demo).",
            "owner": owner,
        },
    )
    if not created:
        return False
    for group in readers:
        access_grant(obj=base, holder=group, action=Action.READ, actor=SYSTEM)
    for path in sorted(HANDBOOK.glob("*.md")):
        document_add(knowledge_base=base, actor=SYSTEM, name=path.name, data=path.read_bytes())
    agent = Agent.objects.filter(slug="help-desk").first()
    if agent is not None:
        agent.knowledge_bases.add(base)
    return True


EVALUATION_SET = (
    Path(__file__).resolve().parent.parent / "agents" / "evaluation" / "sets" / "help-desk.json"
)


def _demo_evaluation_set(*, owner) -> bool:
    """The demo agent's evaluation set (agents/evaluation/sets/help-desk.json): questions on
    the handbook and the ticket tools, by the admin (whom `manage.py evaluate` runs it as)."""
    from agents.evaluation.services import evaluation_set_import
    from agents.models import Agent, EvaluationSet

    data = json.loads(EVALUATION_SET.read_text())
    agent = Agent.objects.filter(slug="help-desk").first()
    if agent is None or EvaluationSet.objects.filter(agent=agent, name=data["name"]).exists():
        return False
    evaluation_set_import(agent=agent, data=data, actor=owner)
    return True


def demo_logins_read(*, credentials_path: Path) -> list[DemoLogin]:
    """The recorded demo logins; none when the file is missing or unreadable (then the users
    keep their passwords, which are simply no longer on record)."""
    try:
        entries = json.loads(credentials_path.read_text())
        return [DemoLogin(e["username"], e["role"], e["password"]) for e in entries]
    except (OSError, ValueError, KeyError, TypeError):
        return []
