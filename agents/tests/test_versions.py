"""Agent versions (agents.versions): each change to what an agent does is an immutable version
with its changes in words, author and reason; each run records the version that served it and
runs as that version configures it; a rollback restores a version in one audited action."""

import json
import threading
import uuid

import pytest
from django.db import DatabaseError, connection, transaction
from django.db.models import ProtectedError

from agents.models import Agent, AgentVersion, Conversation, Deployment, KnowledgeBase, ModelRoute
from agents.orchestrator import run_execute
from agents.services import run_start
from agents.versions import (
    OUTSIDE,
    SCALARS,
    VersionError,
    line_diff,
    version_diff,
    version_record,
    version_rollback,
)
from audit.models import AuditEvent
from audit.services import SYSTEM
from governance.models import Action
from governance.services import access_grant
from tests.model_server import Reply
from tools.models import Tool

pytestmark = pytest.mark.django_db

PROMPT_1 = "You are the IT help desk."
PROMPT_2 = "You are the IT help desk.\nAnswer in one sentence."


@pytest.fixture
def agent(help_desk, team):
    """The help desk (its tool create_ticket), a prompt, and a second tool the team may use."""
    Agent.objects.filter(pk=help_desk.pk).update(system_prompt=PROMPT_1)
    status = Tool.objects.get(name="get_ticket_status")
    status.enabled = True
    status.save(update_fields=["enabled"])
    access_grant(obj=status, holder=team, action=Action.USE, actor=SYSTEM)
    return Agent.objects.get(pk=help_desk.pk)


def events(action: str) -> list[dict]:
    return [json.loads(e.data) for e in AuditEvent.objects.filter(action=action).order_by("pk")]


def other_route(server, name="eu") -> ModelRoute:
    route = ModelRoute.objects.create(name=f"{name}-{uuid.uuid4().hex[:6]}", num_retries=0)
    Deployment.objects.create(
        route=route, position=1, model=f"openai/{name}", api_base=server.base(name)
    )
    return route


# Recording ---------------------------------------------------------------------------------


def test_the_first_version_holds_everything_and_serves(agent, people):
    version = version_record(agent=agent, actor=people.admin, reason="Launch")

    assert (version.number, version.created_by, version.reason) == (1, people.admin, "Launch")
    assert version.config == {
        "system_prompt": PROMPT_1,
        "route": agent.route_id,
        "tools": [Tool.objects.get(name="create_ticket").pk],
        "knowledge_bases": [],
        "delegates": [],
        "confidence_threshold": "0.80",
        "passages_per_run": agent.passages_per_run,
        "max_steps": agent.max_steps,
        "max_tokens_per_run": agent.max_tokens_per_run,
        "injection_action": agent.injection_action,
    }
    assert [c["field"] for c in version.changes] == [
        "system_prompt",
        "route",
        "tools",
        "knowledge_bases",
        "delegates",
        "confidence_threshold",
        "passages_per_run",
        "max_steps",
        "max_tokens_per_run",
        "injection_action",
    ]
    assert {c["before"] for c in version.changes} == {None}
    assert version.changes[2] == {
        "field": "tools",
        "label": "Tools",
        "before": None,
        "after": ["create_ticket"],
    }
    assert Agent.objects.get(pk=agent.pk).live_version == version
    assert events("agent.version_created") == [
        {"version": 1, "changed": [c["field"] for c in version.changes], "reason": "Launch"}
    ]
    assert events("agent.version_released") == [{"version": 1}]


def test_nothing_changed_records_nothing(agent, people):
    version_record(agent=agent, actor=people.admin, reason="Launch")
    Agent.objects.filter(pk=agent.pk).update(name="Renamed", description="Not behaviour")

    assert version_record(agent=agent, actor=people.admin, reason="Again") is None

    assert AgentVersion.objects.filter(agent=agent).count() == 1
    assert len(events("agent.version_created")) == 1


def test_changes_are_said_in_names_not_ids(agent, people, server):
    first = version_record(agent=agent, actor=people.admin, reason="Launch")
    route = other_route(server)
    base = KnowledgeBase.objects.create(
        name="Runbooks", slug=f"rb-{uuid.uuid4().hex[:6]}", owner=people.admin
    )
    helper = Agent.objects.create(name="Helper", slug=f"helper-{uuid.uuid4().hex[:4]}", route=route)
    Agent.objects.filter(pk=agent.pk).update(system_prompt=PROMPT_2, route=route, max_steps=3)
    agent.tools.add(Tool.objects.get(name="get_ticket_status"))
    agent.knowledge_bases.add(base)
    agent.delegates.add(helper)

    second = version_record(agent=agent, actor=people.admin, reason="Tighter answers")

    assert second.number == 2
    assert second.changes == [
        {"field": "system_prompt", "label": "System prompt", "before": PROMPT_1, "after": PROMPT_2},
        {
            "field": "route",
            "label": "Model route",
            "before": agent.route.name,
            "after": route.name,
        },
        {
            "field": "tools",
            "label": "Tools",
            "before": ["create_ticket"],
            "after": ["create_ticket", "get_ticket_status"],
        },
        {
            "field": "knowledge_bases",
            "label": "Knowledge bases",
            "before": [],
            "after": ["Runbooks"],
        },
        {"field": "delegates", "label": "Agents it may ask", "before": [], "after": [helper.slug]},
        {
            "field": "max_steps",
            "label": "Max steps",
            "before": first.config["max_steps"],
            "after": 3,
        },
    ]
    assert events("agent.version_created")[1] == {
        "version": 2,
        "changed": ["system_prompt", "route", "tools", "knowledge_bases", "delegates", "max_steps"],
        "reason": "Tighter answers",
    }


def test_a_draft_version_does_not_serve(agent, people):
    first = version_record(agent=agent, actor=people.admin)
    Agent.objects.filter(pk=agent.pk).update(system_prompt=PROMPT_2)

    draft = version_record(agent=agent, actor=people.admin, release=False)

    assert draft.number == 2
    assert Agent.objects.get(pk=agent.pk).live_version == first
    assert events("agent.version_released") == [{"version": 1}]


def test_a_version_cannot_be_updated_in_the_database(agent, people):
    version = version_record(agent=agent, actor=people.admin, reason="Launch")

    with pytest.raises(DatabaseError, match="agent versions are immutable"), transaction.atomic():
        AgentVersion.objects.filter(pk=version.pk).update(reason="Rewritten history")

    assert AgentVersion.objects.get(pk=version.pk).reason == "Launch"


def test_the_side_by_side_diff_has_every_field_and_the_prompt_by_line(agent, people):
    first = version_record(agent=agent, actor=people.admin)
    Agent.objects.filter(pk=agent.pk).update(system_prompt=PROMPT_2)
    agent.tools.set([Tool.objects.get(name="get_ticket_status")])
    second = version_record(agent=agent, actor=people.admin)

    rows = {row.field: row for row in version_diff(first, second)}

    assert [f for f, row in rows.items() if row.changed] == ["system_prompt", "tools"]
    assert (rows["tools"].removed, rows["tools"].added) == (
        ["create_ticket"],
        ["get_ticket_status"],
    )
    assert [(r.op, r.left, r.right) for r in rows["system_prompt"].lines] == [
        ("equal", (1, "You are the IT help desk."), (1, "You are the IT help desk.")),
        ("insert", None, (2, "Answer in one sentence.")),
    ]
    assert line_diff("a\nb", "a\nc") == line_diff("a\nb", "a\nc")  # deterministic
    assert [r.op for r in line_diff("a\nb", "a\nc")] == ["equal", "replace"]


# Runs --------------------------------------------------------------------------------------


def test_a_change_made_outside_the_console_is_recorded_when_the_next_run_starts(
    agent, people, django_capture_on_commit_callbacks
):
    first = version_record(agent=agent, actor=people.admin, reason="Launch")
    Agent.objects.filter(pk=agent.pk).update(system_prompt=PROMPT_2)  # a shell, say
    conversation = Conversation.objects.create(owner=people.member, agent=agent)

    with django_capture_on_commit_callbacks():
        run = run_start(agent=agent, conversation=conversation, actor=people.member, input="hi")

    second = AgentVersion.objects.get(agent=agent, number=2)
    assert (second.created_by, second.reason, second.config["system_prompt"]) == (
        None,
        OUTSIDE,
        PROMPT_2,
    )
    assert [c["field"] for c in second.changes] == ["system_prompt"]
    assert run.version == second != first
    assert Agent.objects.get(pk=agent.pk).live_version == second
    created = AuditEvent.objects.filter(action="agent.version_created").order_by("pk").last()
    assert json.loads(created.data)["version"] == 2
    assert (created.actor_type, created.actor_label) == ("system", "warden")


def test_each_run_records_the_version_that_served_it(
    agent, people, server, django_capture_on_commit_callbacks
):
    server.script("primary", Reply.say("One."), Reply.say("Two."))
    conversation = Conversation.objects.create(owner=people.member, agent=agent)
    with django_capture_on_commit_callbacks():
        one = run_start(agent=agent, conversation=conversation, actor=people.member, input="a")
    run_execute(run_id=one.pk, holder="test")
    Agent.objects.filter(pk=agent.pk).update(system_prompt=PROMPT_2)
    version_record(agent=agent, actor=people.admin, reason="Shorter")

    with django_capture_on_commit_callbacks():
        two = run_start(agent=agent, conversation=conversation, actor=people.member, input="b")

    numbers = dict(AgentVersion.objects.filter(runs__isnull=False).values_list("runs", "number"))
    assert numbers == {one.pk: 1, two.pk: 2}
    queued = [e["version"] for e in events("run.queued")]
    assert queued == [1, 2]


def test_a_run_started_under_v1_is_served_by_v1_after_a_change_to_v2(
    agent, people, server, django_capture_on_commit_callbacks
):
    server.script("primary", Reply.say("As v1."))
    version_record(agent=agent, actor=people.admin, reason="Launch")
    conversation = Conversation.objects.create(owner=people.member, agent=agent)
    with django_capture_on_commit_callbacks():
        run = run_start(agent=agent, conversation=conversation, actor=people.member, input="hi")
    # Before a worker takes it up, the agent changes: a new prompt and another tool.
    Agent.objects.filter(pk=agent.pk).update(system_prompt=PROMPT_2)
    agent.tools.add(Tool.objects.get(name="get_ticket_status"))
    assert version_record(agent=agent, actor=people.admin, reason="v2").number == 2

    run_execute(run_id=run.pk, holder="test")

    sent = server.requests["primary"][-1]
    assert sent["messages"][0] == {"role": "system", "content": PROMPT_1}
    assert [t["function"]["name"] for t in sent["tools"]] == ["create_ticket"]
    run.refresh_from_db()
    assert (run.version.number, run.answer) == (1, "As v1.")


# Rollback ----------------------------------------------------------------------------------


def test_a_rollback_restores_prompt_route_tools_knowledge_and_delegates_audited(
    agent, people, server
):
    base = KnowledgeBase.objects.create(
        name="Runbooks", slug=f"rb-{uuid.uuid4().hex[:6]}", owner=people.admin
    )
    helper_route = other_route(server, "helper")
    helper = Agent.objects.create(
        name="Helper", slug=f"hp-{uuid.uuid4().hex[:4]}", route=helper_route
    )
    agent.knowledge_bases.add(base)
    agent.delegates.add(helper)
    Agent.objects.filter(pk=agent.pk).update(max_steps=4, confidence_threshold="0.40")
    first = version_record(agent=agent, actor=people.admin, reason="Launch")
    route = other_route(server)
    Agent.objects.filter(pk=agent.pk).update(
        system_prompt=PROMPT_2, route=route, max_steps=9, confidence_threshold="0.10"
    )
    agent.tools.set([Tool.objects.get(name="get_ticket_status")])
    agent.knowledge_bases.clear()
    agent.delegates.clear()
    version_record(agent=agent, actor=people.admin, reason="Experiment")

    restored = version_rollback(
        agent=agent, version=first, actor=people.admin, reason="The experiment failed"
    )

    agent = Agent.objects.get(pk=agent.pk)
    assert (agent.system_prompt, agent.route_id, agent.max_steps) == (PROMPT_1, first.route_id, 4)
    assert str(agent.confidence_threshold) == "0.40"
    assert list(agent.tools.values_list("name", flat=True)) == ["create_ticket"]
    assert list(agent.knowledge_bases.all()) == [base]
    assert list(agent.delegates.all()) == [helper]
    assert (restored.number, restored.rollback_of, restored.reason) == (
        3,
        first,
        "The experiment failed",
    )
    assert restored.config == first.config
    assert agent.live_version == restored
    assert events("agent.version_rolled_back") == [
        {
            "version": 3,
            "changed": [
                "system_prompt",
                "route",
                "tools",
                "knowledge_bases",
                "delegates",
                "confidence_threshold",
                "max_steps",
            ],
            "reason": "The experiment failed",
            "restores": 1,
        }
    ]
    assert events("agent.version_released") == [{"version": 1}, {"version": 2}, {"version": 3}]
    rolled = AuditEvent.objects.get(action="agent.version_rolled_back")
    assert (rolled.actor_id, rolled.target_type, rolled.target_id) == (
        str(people.admin.pk),
        "agents.agent",
        str(agent.pk),
    )


def test_a_rollback_to_a_version_whose_route_was_deleted_says_so_and_writes_nothing(
    agent, people, server
):
    gone = other_route(server, "gone")
    Agent.objects.filter(pk=agent.pk).update(route=gone)
    old = version_record(agent=agent, actor=people.admin)
    Agent.objects.filter(pk=agent.pk).update(route=other_route(server), system_prompt=PROMPT_2)
    now = version_record(agent=agent, actor=people.admin)
    gone.delete()
    before = AuditEvent.objects.count()

    with pytest.raises(VersionError, match="v1's model route was deleted: it cannot be restored"):
        version_rollback(
            agent=agent, version=AgentVersion.objects.get(pk=old.pk), actor=people.admin
        )

    assert list(AgentVersion.objects.filter(agent=agent).values_list("number", flat=True)) == [2, 1]
    assert AuditEvent.objects.count() == before
    agent = Agent.objects.get(pk=agent.pk)
    assert (agent.system_prompt, agent.live_version) == (PROMPT_2, now)


def test_a_rollback_to_what_already_serves_is_refused_and_writes_nothing(agent, people):
    first = version_record(agent=agent, actor=people.admin)
    before = AuditEvent.objects.count()

    with pytest.raises(VersionError, match="does what v1 did already"):
        version_rollback(agent=agent, version=first, actor=people.admin)

    assert AgentVersion.objects.filter(agent=agent).count() == 1
    assert AuditEvent.objects.count() == before


def test_a_rollback_to_another_agents_version_is_refused(agent, people, governed):
    theirs = version_record(agent=governed.agent, actor=people.admin)
    mine, before = AgentVersion.objects.filter(agent=agent).count(), AuditEvent.objects.count()

    with pytest.raises(VersionError, match="is not a version of"):
        version_rollback(agent=agent, version=theirs, actor=people.admin)

    assert AgentVersion.objects.filter(agent=agent).count() == mine
    assert AuditEvent.objects.count() == before


def test_an_agent_that_was_rolled_back_can_still_be_deleted(agent, people):
    """Versions go with their agent; the version a rollback restored does not hold it back."""
    first = version_record(agent=agent, actor=people.admin)
    Agent.objects.filter(pk=agent.pk).update(system_prompt=PROMPT_2)
    version_record(agent=agent, actor=people.admin)
    version_rollback(agent=agent, version=first, actor=people.admin)

    Agent.objects.get(pk=agent.pk).delete()

    assert not AgentVersion.objects.filter(agent_id=agent.pk).exists()


def test_a_change_outside_the_console_on_top_of_a_draft_stays_a_draft(
    agent, people, django_capture_on_commit_callbacks
):
    """Deleting a tool the draft uses changes the agent's row: the run that finds it records
    it, but puts nothing of the draft live."""
    first = version_record(agent=agent, actor=people.admin, reason="Launch")
    Agent.objects.filter(pk=agent.pk).update(system_prompt=PROMPT_2)
    draft = version_record(agent=agent, actor=people.admin, release=False)
    agent.tools.clear()  # a shell, say, or a tool deleted
    conversation = Conversation.objects.create(owner=people.member, agent=agent)

    with django_capture_on_commit_callbacks():
        run = run_start(agent=agent, conversation=conversation, actor=people.member, input="hi")

    third = AgentVersion.objects.get(agent=agent, number=3)
    assert (third.reason, third.config["system_prompt"], draft.number) == (OUTSIDE, PROMPT_2, 2)
    assert run.version == first
    assert Agent.objects.get(pk=agent.pk).live_version == first
    assert events("agent.version_released") == [{"version": 1}]


def test_the_route_a_running_release_s_candidate_runs_on_cannot_be_deleted(agent, people, server):
    from agents.releases import release_start

    version_record(agent=agent, actor=people.admin)
    first_route = agent.route
    Agent.objects.filter(pk=agent.pk).update(route=other_route(server, "canary"))
    candidate = version_record(agent=agent, actor=people.admin, release=False)
    release_start(agent=agent, candidate=candidate, actor=people.admin, share=10)
    Agent.objects.filter(pk=agent.pk).update(route=first_route)  # a later draft moves back
    version_record(agent=agent, actor=people.admin, release=False)

    with pytest.raises(ProtectedError) as e:
        candidate.route.delete()

    assert e.value.protected_objects == {candidate}
    assert AgentVersion.objects.get(pk=candidate.pk).route_id is not None


def test_the_route_the_live_version_runs_on_cannot_be_deleted(agent, people, server):
    """A draft moved the agent to another route; the live version still runs on the first."""
    live = version_record(agent=agent, actor=people.admin)
    first_route = agent.route
    Agent.objects.filter(pk=agent.pk).update(route=other_route(server))
    version_record(agent=agent, actor=people.admin, release=False)

    with pytest.raises(ProtectedError, match=r"protected foreign keys: 'AgentVersion\.route'") as e:
        first_route.delete()

    assert e.value.protected_objects == {live}
    assert ModelRoute.objects.filter(pk=first_route.pk).exists()
    assert AgentVersion.objects.get(pk=live.pk).route == first_route
    conversation = Conversation.objects.create(owner=people.member, agent=agent)
    run = run_start(agent=agent, conversation=conversation, actor=people.member, input="hi")
    assert run.version == live


# Concurrency -------------------------------------------------------------------------------


@pytest.mark.usefixtures("committing_db")
def test_two_saves_at_once_number_their_versions_one_after_the_other(help_desk, people):
    """The second writer waits for the first's lock, then reads what the first recorded: it has
    nothing left to record (before, it read the versions as they were before it waited and
    numbered its own as the first did: an IntegrityError)."""
    first = version_record(agent=help_desk, actor=people.admin)
    locked, waiting, result = threading.Event(), threading.Event(), {}

    def holder():
        try:
            with transaction.atomic():
                Agent.objects.filter(pk=help_desk.pk).update(system_prompt=PROMPT_2)
                result["holder"] = version_record(agent=help_desk, actor=people.admin)
                locked.set()
                waiting.wait(30)
        finally:
            connection.close()

    def second():
        try:
            locked.wait(30)
            result["second"] = version_record(agent=help_desk, actor=people.admin)
        except Exception as exc:  # reported below
            result["second"] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=holder), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    locked.wait(30)
    # Let the holder commit only once the second writer is blocked on the agent's lock
    # (PostgreSQL has no event for that: polled, and the test fails if it never blocks).
    blocked = False
    for _ in range(600):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            )
            blocked = bool(cursor.fetchone()[0])
        if blocked:
            break
        threading.Event().wait(0.05)
    waiting.set()
    for thread in threads:
        thread.join(30)

    assert blocked, "the second writer never waited for the agent's lock"
    assert result["holder"].number == 2
    assert result["second"] is None
    assert list(AgentVersion.objects.filter(agent=help_desk).values_list("number", flat=True)) == [
        2,
        1,
    ]
    assert first.number == 1


def test_the_row_a_run_s_start_reads_holds_the_agent_s_whole_config(agent, people, server):
    """The one statement (agents.versions._config_row) that a run's start and every version
    record read: the agent's row, its tools, bases and delegates in id order, its newest
    version, whether a release runs, its live version; a missing agent is DoesNotExist."""
    from agents.releases import release_start
    from agents.versions import _config_row

    first = _config_row(agent.pk)
    assert (first["head_id"], first["head_config"], first["releasing"]) == (None, None, False)
    base = KnowledgeBase.objects.create(
        name="Runbooks", slug=f"rb-{uuid.uuid4().hex[:6]}", owner=people.admin
    )
    helper = Agent.objects.create(
        name="Helper", slug=f"hp-{uuid.uuid4().hex[:4]}", route=other_route(server, "helper")
    )
    agent.knowledge_bases.add(base)
    agent.delegates.add(helper)
    agent.tools.add(Tool.objects.get(name="get_ticket_status"))
    live = version_record(agent=agent, actor=people.admin, reason="Launch")
    Agent.objects.filter(pk=agent.pk).update(system_prompt=PROMPT_2, max_steps=7)
    candidate = version_record(agent=agent, actor=people.admin, release=False)
    release_start(agent=agent, candidate=candidate, actor=people.admin, share=10)

    row = _config_row(agent.pk)
    saved = Agent.objects.get(pk=agent.pk)
    assert row == {
        "route_id": saved.route_id,
        "tool_ids": sorted(saved.tools.values_list("pk", flat=True)),
        "base_ids": [base.pk],
        "delegate_ids": [helper.pk],
        "head_id": candidate.pk,
        "head_config": AgentVersion.objects.get(pk=candidate.pk).config,
        **{name: getattr(saved, name) for name in SCALARS},
        "releasing": True,
        "live_version_id": live.pk,
    }
    assert len(row["tool_ids"]) == 2
    assert row["head_config"]["max_steps"] == 7
    with pytest.raises(Agent.DoesNotExist):
        _config_row(10**9)
