"""The chat as it waits: a run at work says which step and for how long, answers' code blocks
are highlighted, and the page knows whether a worker is ready (the warming-up notice)."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from agents import workers
from agents.models import Conversation, Run, RunStep
from agents.selectors import duration_text

pytestmark = pytest.mark.django_db


def _run(people, agent, **fields) -> Run:
    conversation = Conversation.objects.create(owner=people.member, agent=agent)
    return Run.objects.create(
        agent=agent, conversation=conversation, actor=people.member, input="q", **fields
    )


def _step(run, index, kind, output, **extra):
    now = timezone.now()
    return RunStep.objects.create(
        run=run, index=index, kind=kind, output=output, started_at=now, finished_at=now, **extra
    )


def _progress(client, run) -> str:
    page = client.get(f"/chat/runs/{run.pk}/").content.decode()
    body = page.split('<div class="run-body">', 1)[1].split('<div class="bubble answer streaming"')[
        0
    ]
    if 'class="run-progress"' not in body:
        return ""
    return body.split('class="run-progress"', 1)[1].split("</p>", 1)[0]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (59, "59 s"), (60, "1 min 00 s"), (75, "1 min 15 s"), (3725, "1 h 02 min")],
)
def test_durations_read_as_people_say_them(seconds, text):
    assert duration_text(seconds) == text


def test_a_run_at_work_says_which_step_and_for_how_long(client, people, help_desk):
    client.force_login(people.member)
    queued = _run(people, help_desk)
    started = timezone.now() - timedelta(seconds=75)
    running = _run(people, help_desk, state="running", started_at=started)

    shown = _progress(client, queued)
    assert "Queued: waiting for a worker to start it" in shown
    assert 'data-elapsed="0"' in shown or 'data-elapsed="1"' in shown

    shown = _progress(client, running)
    assert "Step 1: starting: reading the question" in shown
    assert 'data-elapsed="75"' in shown or 'data-elapsed="76"' in shown
    assert ("1 min 15 s" in shown) or ("1 min 16 s" in shown)

    _step(running, 0, "retrieval", {"passages": []})
    assert "Step 2: asking the model, with the passages found" in _progress(client, running)
    call = {"id": "c1", "name": "create_ticket", "arguments": "{}"}
    _step(running, 1, "model", {"content": "", "tool_calls": [call]})
    assert "Step 3: running create_ticket" in _progress(client, running)
    _step(running, 2, "tool", {"result": {"ticket": 1}}, input={"call": call})
    assert "Step 4: asking the model, with the result" in _progress(client, running)
    _step(running, 3, "model", {"content": "Done.", "tool_calls": []})
    assert "Step 5: checking the answer" in _progress(client, running)


@pytest.mark.parametrize("state", ["succeeded", "failed", "awaiting_approval", "cancelled"])
def test_a_run_that_is_not_at_work_shows_no_progress(client, people, help_desk, state):
    client.force_login(people.member)
    run = _run(people, help_desk, state=state, answer="Done.", started_at=timezone.now())

    assert _progress(client, run) == ""


def test_an_answers_code_is_highlighted_and_its_citations_stay_text(client, people, help_desk):
    client.force_login(people.member)
    run = _run(
        people,
        help_desk,
        state="succeeded",
        answer="Run this [1]:\n\n```bash\necho '<script>alert(1)</script>' # [1]\n```\n",
        citations=[{"n": 1, "title": "FAQ", "position": 0, "document": 1, "chunk": 1}],
    )
    _step(run, 0, "retrieval", {"passages": [{"n": 1, "title": "FAQ", "position": 0}]})

    page = client.get(f"/chat/c/{run.conversation_id}/").content.decode()
    answer = page.split('<div class="bubble answer">', 1)[1].split('<ol class="citations"')[0]

    assert "portal/code.css" in page
    assert "portal/code.js" in page
    assert answer.count("<a ") == 1  # the citation in the text, none in the code
    assert f'href="#run-{run.pk}-cite-1"' in answer
    assert '<span class="code-lang">Bash</span>' in answer
    assert "<script" not in answer
    assert "<span class=\"s1\">'&lt;script&gt;alert(1)&lt;/script&gt;'</span>" in answer
    assert '<span class="c1"># [1]</span>' in answer


@pytest.fixture
def fresh_ping(settings):
    """Each question asks the workers (no answer kept from an earlier test or request)."""
    settings.READY_CACHE_SECONDS = 0
    workers._cached = None
    yield
    workers._cached = None


def test_the_chat_knows_when_no_worker_is_ready_and_when_one_is(
    client, people, fresh_ping, start_worker
):
    client.force_login(people.member)
    page = client.get("/chat/").content.decode()
    assert 'data-workers-url="/chat/workers/"' in page
    assert "portal/progress.js" in page

    cold = client.get("/chat/workers/")
    assert cold.status_code == 200
    assert cold.json() == {"ready": False}
    assert cold["Cache-Control"] == "no-store"

    start_worker()  # answers a ping once its models are loaded (agents.warm)

    assert client.get("/chat/workers/").json() == {"ready": True}


def test_a_worker_busy_with_a_run_is_ready_though_it_cannot_answer_a_ping(
    client, people, help_desk, fresh_ping
):
    """A solo pool answers no ping while it works; its live lease on the run says it is there."""
    client.force_login(people.member)
    run = _run(people, help_desk, state="running", started_at=timezone.now())
    Run.objects.filter(pk=run.pk).update(lease_expires_at=timezone.now() + timedelta(seconds=30))

    assert client.get("/chat/workers/").json() == {"ready": True}

    Run.objects.filter(pk=run.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert client.get("/chat/workers/").json() == {"ready": False}  # its worker is gone


def test_the_workers_answer_is_for_signed_in_people_only(client, fresh_ping):
    response = client.get("/chat/workers/")

    assert response.status_code == 302
    assert response["Location"].startswith("/login/")
    assert workers._cached is None  # not even asked


def test_the_workers_answer_is_shared_for_a_moment(people, client, settings):
    settings.READY_CACHE_SECONDS = 60
    workers._cached = (time.monotonic(), True)  # a worker answered just now
    try:
        client.force_login(people.member)
        assert client.get("/chat/workers/").json() == {"ready": True}  # not asked again
    finally:
        workers._cached = None
