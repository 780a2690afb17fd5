import csv
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import Actor, Target, audit_record

pytestmark = pytest.mark.django_db
CHAIN_SCRIPT = Path(__file__).resolve().parent.parent / "chain.py"


@pytest.fixture
def trail():
    alice = Actor("user", "1", "alice")
    bob = Actor("user", "2", "bob")
    with transaction.atomic():
        for run, actor in ((1, alice), (2, bob), (3, alice)):
            audit_record(
                actor=actor, action="run.started", target=Target("agents.run", str(run)), run=run
            )
            audit_record(
                actor=None,
                action="tool.invoked",
                target=Target("tools.tool", "crm", "=HYPERLINK(1)"),
                data={"args": {"query": "+1 555"}, "cost": 0.0125},
                run=run,
            )
            audit_record(
                actor=actor, action="run.finished", target=Target("agents.run", str(run)), run=run
            )
        audit_record(
            actor=bob,
            action="policy.denied",
            target=Target("tools.tool", "erp"),
            data={"why": "tier"},
        )


def export(tmp_path, name, *args) -> Path:
    path = tmp_path / name
    call_command("audit_export", "--output", str(path), *args)
    return path


def standalone(*args) -> subprocess.CompletedProcess:
    """The auditor's run: the script alone, with nothing of Warden importable."""
    return subprocess.run(
        [sys.executable, "-I", str(CHAIN_SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd="/",
        check=False,
    )


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_full_export_verifies_offline(trail, tmp_path, fmt):
    path = export(tmp_path, f"all.{fmt}", "--format", fmt)

    result = standalone("--complete", str(path))

    assert (result.returncode, result.stdout) == (0, "OK: 10 events in 4 streams verified\n")


def test_jsonl_export_carries_every_field_and_the_hashes(trail, tmp_path):
    path = export(tmp_path, "all.jsonl")

    lines = [json.loads(line) for line in path.read_text().splitlines()]
    events = [e.as_chain_dict() for e in AuditEvent.objects.order_by("sequence")]
    assert lines == events


def test_csv_export_defuses_spreadsheet_formulas_reversibly(trail, tmp_path):
    path = export(tmp_path, "all.csv", "--format", "csv")

    rows = list(csv.DictReader(path.open()))
    tool_rows = [r for r in rows if r["action"] == "tool.invoked"]
    assert tool_rows[0]["target_label"] == "'=HYPERLINK(1)"
    assert json.loads(tool_rows[0]["data"]) == {"args": {"query": "+1 555"}, "cost": 0.0125}


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_tampered_export_is_caught_offline(trail, tmp_path, fmt):
    path = export(tmp_path, f"all.{fmt}", "--format", fmt)
    victim = AuditEvent.objects.filter(action="policy.denied").get()
    path.write_text(
        path.read_text().replace(
            '"tier"' if fmt == "jsonl" else '""tier""', '"none"' if fmt == "jsonl" else '""none""'
        )
    )

    result = standalone("--complete", str(path))

    assert result.returncode == 1
    assert result.stdout.startswith(
        f"BROKEN at sequence {victim.sequence} (stream tools.tool:erp, event #1)"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--run", "2"], lambda e: e.run == "2"),
        (["--actor", "alice"], lambda e: e.actor_label == "alice"),
        (["--actor", "user:2"], lambda e: (e.actor_type, e.actor_id) == ("user", "2")),
        (["--actor", "system"], lambda e: e.actor_type == "system"),
        (["--action", "run.*"], lambda e: e.action.startswith("run.")),
        (["--action", "policy.denied"], lambda e: e.action == "policy.denied"),
        (["--target", "tools.tool"], lambda e: e.target_type == "tools.tool"),
        (
            ["--target", "agents.run:3"],
            lambda e: (e.target_type, e.target_id) == ("agents.run", "3"),
        ),
    ],
)
def test_filtered_export_contains_exactly_the_matching_events(trail, tmp_path, args, expected):
    path = export(tmp_path, "some.jsonl", *args)

    exported = [json.loads(line)["sequence"] for line in path.read_text().splitlines()]
    matching = [e.sequence for e in AuditEvent.objects.order_by("sequence") if expected(e)]
    assert exported == matching
    assert 0 < len(matching) < 10
    result = standalone(str(path))  # a filtered export verifies too, its gaps counted
    assert result.returncode == 0, result.stdout


def test_time_range_filter(trail, tmp_path):
    now = timezone.now()
    since = (now - timedelta(minutes=1)).isoformat()
    until = (now + timedelta(minutes=1)).isoformat()

    within = export(tmp_path, "in.jsonl", "--since", since, "--until", until)
    after = export(tmp_path, "out.jsonl", "--since", until)

    assert len(within.read_text().splitlines()) == 10
    assert after.read_text() == ""


def test_bad_time_is_a_clear_error(tmp_path):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="not an ISO 8601 date or time: 'yesterday'"):
        call_command("audit_export", "--since", "yesterday")


def test_export_walks_in_chunks(trail, monkeypatch):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from audit import selectors

    monkeypatch.setattr(selectors, "CHUNK", 3)
    with CaptureQueriesContext(connection) as queries:
        lines = list(selectors.audit_export_lines(filters=selectors.EventFilter(), fmt="jsonl"))

    selects = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT")]
    assert len(lines) == 10
    assert len(selects) == 4  # 10 events in chunks of 3: 3 + 3 + 3 + 1, never all at once
    assert all("LIMIT 3" in sql for sql in selects)


def test_anchors_let_the_offline_check_see_a_missing_stream_or_tail(trail, tmp_path):
    from audit.services import audit_anchor

    anchor = audit_anchor()
    anchors = tmp_path / "anchors.jsonl"
    path = export(tmp_path, "all.jsonl", "--anchors", str(anchors))
    lines = path.read_text().splitlines()
    without_run_2 = [line for line in lines if json.loads(line)["run"] != "2"]
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(without_run_2) + "\n")

    whole = standalone("--complete", "--anchors", str(anchors), str(path))
    caught = standalone("--complete", "--anchors", str(anchors), str(cut))
    blind = standalone("--complete", str(cut))  # without anchors a whole stream can vanish

    assert (whole.returncode, whole.stdout) == (
        0,
        "OK: 10 events in 4 streams verified, 1 anchors\n",
    )
    assert caught.returncode == 1
    assert caught.stdout.startswith(
        "BROKEN at anchor (stream run:2, event #3): the stream is missing "
        f"(anchor {anchor.sequence} recorded it at #3)"
    )
    assert blind.returncode == 0


def test_standalone_script_refuses_unknown_options(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")

    result = standalone("--compelte", str(path))

    assert result.returncode == 2
    assert "unrecognized arguments: --compelte" in result.stderr
