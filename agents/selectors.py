"""Reads for the chat and the run trace: who may see a conversation or a run, and a run as the
page shows it (tool-call cards, citations with their passages, the answer as safe HTML)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from django.contrib.postgres.search import (
    SearchHeadline,
    SearchQuery,
    SearchRank,
    SearchVectorField,
)
from django.db.models import (
    Case,
    F,
    Func,
    IntegerField,
    Prefetch,
    QuerySet,
    Sum,
    TextField,
    Value,
    When,
)
from django.db.models.fields.json import KeyTransform
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from agents.models import FINAL_STATES, Agent, Conversation, Run, RunState, RunStep, StepKind
from governance.access import NoAccess
from governance.guardrails.output import render_markdown
from tools.schemas import text_problem

MASK = "••••••"


def access_conversation(user, conversation_id) -> Conversation:
    """The conversation, if it is `user`'s own; else NoAccess (missing and forbidden alike)."""
    try:
        return Conversation.objects.select_related("agent").get(
            pk=int(conversation_id), owner_id=user.pk
        )
    except (Conversation.DoesNotExist, ValueError, TypeError):
        raise NoAccess("no such conversation") from None


def access_run(user, run_id, *, trace: bool = False) -> Run:
    """The run, if `user` asked for it (a run in a conversation is its owner's); with `trace`
    (its trace page) also if `user` may view every run (the `agents.view_run` permission:
    governance admins, auditors) or reviews one of its approvals or held answers. Else
    NoAccess."""
    try:
        run = Run.objects.select_related("agent", "conversation", "tool").get(pk=int(run_id))
    except (Run.DoesNotExist, ValueError, TypeError):
        raise NoAccess("no such run") from None
    owner = run.conversation.owner_id if run.conversation is not None else run.actor_id
    if owner == user.pk:
        return run
    if trace and user.is_active and (user.has_perm("agents.view_run") or _reviews(user, run.pk)):
        return run
    raise NoAccess("no such run")


def _reviews(user, run_id: int) -> bool:
    from governance.approvals import reviewable
    from governance.models import ApprovalRequest, Escalation

    return (
        reviewable(ApprovalRequest, user).filter(run_id=run_id).exists()
        or reviewable(Escalation, user).filter(run_id=run_id).exists()
    )


# What a viewer other than the run's owner may see of a run's content --------------------------

HIDDEN = "(from a knowledge base you may not read)"  # the trace's words, on every surface
# Releasing a held answer is vouching for it: a reviewer who may not read what it draws on may
# reject it, or leave it to a reviewer who may.
UNREAD_RELEASE = (
    "you may not read a knowledge base this answer draws on: reject it, or leave it to a "
    "reviewer who may read it"
)


def knowledge_sources(run_ids) -> dict[tuple[int, int], set[int | None]]:
    """Per step `(run id, index)` of the runs, the knowledge bases its content came from: the
    passages a retrieval step found and those a tool (`knowledge_search`) returned, by their
    documents' bases. None stands for a base or a document since deleted."""
    from agents.models import Document

    found: dict[tuple[int, int], set[int | None]] = {}
    documents: dict[tuple[int, int], set[int]] = {}
    steps = RunStep.objects.filter(
        run_id__in=list(run_ids), kind__in=[StepKind.RETRIEVAL, StepKind.TOOL]
    ).values_list("run_id", "index", "kind", "output")
    for run_id, index, kind, output in steps:
        output = output if isinstance(output, dict) else {}
        if kind == StepKind.RETRIEVAL:
            bases = {p.get("knowledge_base") for p in _passages(output.get("passages"))}
            if bases:
                found[(run_id, index)] = bases
        elif isinstance(result := output.get("result"), dict):
            passages = _passages(result.get("passages"))
            if ids := {p["document"] for p in passages if "document" in p}:
                documents[(run_id, index)] = ids
    if documents:
        wanted = {i for ids in documents.values() for i in ids if isinstance(i, int)}
        base_of = dict(Document.objects.filter(pk__in=wanted).values_list("pk", "knowledge_base"))
        for key, ids in documents.items():
            found.setdefault(key, set()).update(base_of.get(i) for i in ids)
    return found


def _passages(value) -> list[dict]:
    return [p for p in value if isinstance(p, dict)] if isinstance(value, list) else []


def unreadable_sources(user, run_ids) -> tuple[set[int], set[tuple[int, int]]]:
    """The runs among `run_ids` whose content may draw on a knowledge base `user` may not read
    (the one rule, governance.access.restrict: a denial wins, superusers included), and the
    steps of those runs' conversations that read one. A run's model saw what the earlier runs
    of its conversation read (agents.provenance.run_taint), so one of those counts too. A
    surface that shows `user` a run's answer, citations, messages or steps shows HIDDEN."""
    from agents.models import KnowledgeBase
    from governance.models import Action

    asked = set(run_ids)
    conversation_of = dict(
        Run.objects.filter(
            conversation_id__in=Run.objects.filter(pk__in=asked).values("conversation_id")
        ).values_list("pk", "conversation_id")
    )
    sources = knowledge_sources(conversation_of)
    named = {b for bases in sources.values() for b in bases if b is not None}
    readable = set(
        KnowledgeBase.objects.restrict(user, Action.READ)
        .filter(pk__in=named)
        .values_list("pk", flat=True)
    )
    steps = {key for key, bases in sources.items() if not bases <= readable}
    first_unreadable: dict[int, int] = {}  # per conversation, its first run that read one
    for run_id, _ in steps:
        conversation = conversation_of[run_id]
        first_unreadable[conversation] = min(run_id, first_unreadable.get(conversation, run_id))
    hidden = {
        run_id
        for run_id in asked
        if run_id in conversation_of
        and first_unreadable.get(conversation_of[run_id], run_id + 1) <= run_id
    }
    return hidden, steps


def _earlier_retrievals(run: Run) -> QuerySet[RunStep]:
    if run.conversation_id is None:
        return RunStep.objects.none()
    return RunStep.objects.filter(
        run__conversation_id=run.conversation_id, run_id__lt=run.pk, kind=StepKind.RETRIEVAL
    )


def passages_before(run: Run) -> int:
    """How many passages the conversation's earlier runs were given: `run` numbers its own
    after them, so that a number names one passage in the whole conversation (the model sees
    the earlier ones, and an answer may cite them)."""
    count = Func(KeyTransform("passages", "output"), function="jsonb_array_length")
    total = _earlier_retrievals(run).aggregate(total=Sum(count, output_field=IntegerField()))[
        "total"
    ]
    return total or 0


def earlier_passages(run: Run, numbers: set[int]) -> dict[int, dict]:
    """The passages the conversation's earlier runs were given under `numbers`, by number."""
    found: dict[int, dict] = {}
    for output in _earlier_retrievals(run).values_list("output", flat=True):
        passages = _passages(output.get("passages") if isinstance(output, dict) else None)
        found.update((p["n"], p) for p in passages if p.get("n") in numbers)
    return found


def access_agent_by_slug(user, slug) -> Agent:
    """The agent named `slug`, if `user` may use it (governance.access.access_agent: a disabled
    one too, which the policy then refuses, saying why); else NoAccess, missing or not."""
    from governance.access import access_agent

    pk = Agent.objects.filter(slug=str(slug)[:100]).values_list("pk", flat=True).first()
    if pk is None:
        raise NoAccess("no such agent")
    return access_agent(user, pk)


def agents_usable_by(user) -> QuerySet[Agent]:
    """The enabled agents `user` may use (the chat's choice, the API's list)."""
    return Agent.objects.restrict(user, "use").filter(enabled=True)


def conversations_of(user) -> QuerySet[Conversation]:
    """`user`'s conversations, the latest activity first (a message asked, an answer landed:
    agents.services.conversation_touch moves `updated_at`), the agent builder's tests aside (the
    builder lists those) and evaluations' (each holds one case: agents.evaluation)."""
    return (
        Conversation.objects.filter(owner_id=user.pk, builder_test=False, evaluation=False)
        .select_related("agent")
        .order_by("-updated_at", "-pk")
    )


# Searching one's own conversations -------------------------------------------------------------

SEARCH_CONFIG = "english"
SEARCH_MAX = 200  # characters a search may have
SEARCH_LIMIT = 50  # hits a search shows, the best first
# ts_headline's markers around a matched word: characters from Unicode's private use area, which
# `marked` turns into <mark> once the text around them is escaped.
START, STOP = "\ue000", "\ue001"


class SearchRefused(ValueError):
    """A search that cannot be run (empty, too long, not text): the message says why."""


class RunText(Func):
    """What a search finds a run by: the words of the user's message and, once it was shown to
    them (the run succeeded), of the answer; a held or refused answer is not found. A tsvector
    PostgreSQL keeps in the run's row (`search_vector`, GIN-indexed: migration 0019), not a
    model field, so that loading a run never reads it; this is the one place that names it."""

    output_field = SearchVectorField()

    def __init__(self) -> None:
        super().__init__(F("pk"))

    def as_sql(self, compiler, connection, **extra):
        [run] = self.get_source_expressions()  # the run's row, under the query's alias
        return f"{compiler.quote_name_unless_alias(run.alias)}.search_vector", []


@dataclass
class SearchHit:
    """A run of the user's that the search found, with its words highlighted (safe HTML)."""

    run: Run
    asked: SafeString
    answered: SafeString  # empty when the answer did not match (or was never shown)


def search_query(text: str) -> str:
    """The search as typed, made ready to run, or SearchRefused saying why it cannot be."""
    text = " ".join(str(text).split())
    if not text:
        raise SearchRefused("Type a word or two to search your conversations.")
    if len(text) > SEARCH_MAX:
        raise SearchRefused(
            f"The search is {len(text)} characters long; at most {SEARCH_MAX} are looked for."
        )
    if problem := text_problem(text):
        raise SearchRefused(f"The search {problem}.")
    return text


def conversations_search(user, text: str) -> list[SearchHit]:
    """The runs of `user`'s own conversations whose message or shown answer match `text`
    (PostgreSQL full text, web search syntax: words, "a phrase", or, -not), the best
    SEARCH_LIMIT first, the newest first among equals. Never another user's: a run is found
    through its conversation's owner, the chat's one rule (access_conversation). Two queries:
    the hits, then the headlines of those only (ts_headline reads the whole text)."""
    query = SearchQuery(search_query(text), search_type="websearch", config=SEARCH_CONFIG)
    ranked = list(runs_matching(user, query).values_list("pk", flat=True)[:SEARCH_LIMIT])
    if not ranked:
        return []
    found = (
        Run.objects.filter(pk__in=ranked)
        .select_related("conversation", "agent")
        .annotate(
            asked_html=_headline("input", query, fragments=0),
            answered_html=Case(  # an answer never shown is never read out
                When(state=RunState.SUCCEEDED, then=_headline("answer", query, fragments=2)),
                default=Value(""),
                output_field=TextField(),
            ),
        )
    )
    by_pk = {run.pk: run for run in found}
    hits = []
    for run in (by_pk[pk] for pk in ranked if pk in by_pk):  # (one deleted in between: gone)
        answered = run.answered_html if START in run.answered_html else ""
        hits.append(SearchHit(run, marked(run.asked_html), marked(answered)))
    return hits


def runs_matching(user, query: SearchQuery) -> QuerySet[Run]:
    """The runs of `user`'s own conversations that match `query`, the best first (not an
    evaluation's: agents.evaluation)."""
    return (
        Run.objects.annotate(document=RunText())
        .filter(conversation__owner_id=user.pk, conversation__evaluation=False, document=query)
        .annotate(rank=SearchRank(RunText(), query))
        .order_by("-rank", "-created_at", "-pk")
    )


def _headline(field: str, query: SearchQuery, *, fragments: int) -> SearchHeadline:
    """`field`'s text around the words found, each between START and STOP."""
    return SearchHeadline(
        field,
        query,
        config=SEARCH_CONFIG,
        start_sel=START,
        stop_sel=STOP,
        max_words=30,
        min_words=12,
        max_fragments=fragments,
        fragment_delimiter=" … ",
    )


def marked(headline: str) -> SafeString:
    """A headline as safe HTML: its text escaped, then only the markers made <mark>. The text
    is a user's or a model's: a marker character in it makes at most a balanced <mark>, never
    markup of its own."""
    out: list[str] = []
    open_ = False
    for piece in re.split(f"([{START}{STOP}])", headline):
        if piece == START and not open_:
            out.append("<mark>")
            open_ = True
        elif piece == STOP and open_:
            out.append("</mark>")
            open_ = False
        elif piece not in (START, STOP):
            out.append(str(escape(piece)))
    if open_:
        out.append("</mark>")
    return mark_safe("".join(out))  # noqa: S308 - escaped above, the marks are ours


def runs_with_steps(queryset: QuerySet[Run]) -> QuerySet[Run]:
    return queryset.select_related("agent").prefetch_related(
        Prefetch("steps", queryset=RunStep.objects.order_by("index")),
        "feedback",  # the asker's rating, in the run's footer (agents.feedback)
    )


@dataclass
class Card:
    """A tool call as the user follows it."""

    call_id: str
    name: str
    arguments: object
    status: str = "running"  # running, awaiting approval, done, failed, refused, not run
    detail: str = ""
    approval: int | None = None
    review: str = ""  # the reviewer's decision and comment, for the requester

    @property
    def arguments_text(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, indent=2, ensure_ascii=False)


@dataclass
class Citation:
    n: int
    title: str
    position: int
    text: str


@dataclass
class RunView:
    run: Run
    cards: list[Card] = field(default_factory=list)
    citations: list[Citation] = field(default_factory=list)
    steps: int = 0
    answering: bool = False  # the last step is the answer, not yet released by the run
    review: str = ""  # what the reviewer of a held answer said to the requester
    activity: str = ""  # while it is queued or running: what it is doing now

    @property
    def working(self) -> bool:
        return self.run.state in (RunState.QUEUED, RunState.RUNNING)

    @property
    def elapsed(self) -> int:
        """Seconds since it started (since it was asked, while queued)."""
        since = self.run.started_at or self.run.created_at
        return max(0, int((timezone.now() - since).total_seconds())) if since else 0

    @property
    def elapsed_text(self) -> str:
        return duration_text(self.elapsed)

    @property
    def final(self) -> bool:
        return self.run.state in FINAL_STATES

    @property
    def status(self) -> str:
        labels: dict[str, str] = {
            RunState.QUEUED: "Queued",
            RunState.RUNNING: "Working",
            RunState.AWAITING_APPROVAL: "Waiting for a reviewer to approve a tool call",
            RunState.AWAITING_REVIEW: "Held for review",
            RunState.AWAITING_DELEGATE: "Waiting for an agent it asked",
            RunState.SUCCEEDED: "Answered",
            RunState.FAILED: "Failed",
            RunState.CANCELLED: "Stopped",
            RunState.REJECTED: "Refused",
        }
        return labels[self.run.state]

    @property
    def tokens(self) -> int:
        return self.run.prompt_tokens + self.run.completion_tokens

    @property
    def answer_html(self) -> SafeString:
        """The answer as sanitised markdown, each cited [n] a link to its passage."""
        cited = {c.n for c in self.citations}
        return render_markdown(
            self.run.answer,
            cite=lambda n: f"#run-{self.run.pk}-cite-{n}" if n in cited else None,
        )


def run_view(
    run: Run,
    write_only: dict[str, set[str]] | None = None,
    decisions: dict[int, tuple[str, str]] | None = None,
    answer_review: tuple[str, str] | None = None,
) -> RunView:
    """`run` (with its steps prefetched, or fetched here) as the chat shows it; `decisions`
    maps approval request ids to their (status, comment), `answer_review` is a held answer's
    (status, comment) once decided (a decided call's card says so before the run
    records what follows)."""
    steps = list(run.steps.all())
    view = RunView(run=run, steps=len(steps))
    passages: dict[int, dict] = {}
    cards: dict[str, Card] = {}
    for step in steps:
        if step.kind == StepKind.RETRIEVAL:
            passages = {p["n"]: p for p in step.output.get("passages", [])}
        elif step.kind == StepKind.MODEL:
            for call in step.output.get("tool_calls") or []:
                arguments = _arguments(call.get("arguments"))
                hidden = (write_only or {}).get(call["name"], set())
                if hidden:  # not an object: it cannot be masked key by key, so all of it
                    arguments = (
                        {k: MASK if k in hidden else v for k, v in arguments.items()}
                        if isinstance(arguments, dict)
                        else MASK
                    )
                cards[call["id"]] = Card(call["id"], call["name"], arguments)
        elif step.kind == StepKind.APPROVAL:
            card = cards.get(step.input.get("call", {}).get("id"))
            if card is not None:
                card.approval = step.output.get("approval")
                decided, comment = (decisions or {}).get(card.approval, ("pending", ""))
                card.status, card.detail = _APPROVAL_CARD.get(decided, ("running", ""))
                card.review = _review_note(card.detail, comment)
        elif step.kind == StepKind.TOOL:
            card = cards.get(step.input.get("call", {}).get("id"))
            if card is not None:
                _settle(card, step)
    for card in cards.values():
        if view.final and card.status in ("running", "awaiting approval"):
            card.status = "not run"
    view.cards = list(cards.values())
    last = steps[-1] if steps else None
    view.answering = (
        not view.final
        and last is not None
        and last.kind == StepKind.MODEL
        and not last.output.get("tool_calls")
    )
    view.activity = _activity(run, steps, cards)
    if answer_review is not None:
        status, comment = answer_review
        view.review = _review_note(_ANSWER_REVIEW.get(status, ""), comment)
    for cited in run.citations or []:
        passage = passages.get(cited["n"], {})
        view.citations.append(
            Citation(cited["n"], cited["title"], cited["position"] + 1, passage.get("text", ""))
        )
    return view


def duration_text(seconds: int) -> str:
    """ "12 s", "3 min 05 s", "1 h 02 min" (static/portal/progress.js writes the same)."""
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _activity(run: Run, steps: list[RunStep], cards: dict[str, Card]) -> str:
    """What a queued or running run is doing now, from its last committed step: "Step 3:
    running create_ticket". '' once it is neither."""
    if run.state == RunState.QUEUED:
        return "Queued: waiting for a worker to start it"
    if run.state != RunState.RUNNING:
        return ""
    last = steps[-1] if steps else None
    doing = "starting"
    if last is None:
        doing = "starting: reading the question"
    elif last.kind == StepKind.RETRIEVAL:
        doing = "asking the model, with the passages found"
    elif last.kind == StepKind.MODEL and last.output.get("tool_calls"):
        names = [c.get("name", "") for c in last.output["tool_calls"] if isinstance(c, dict)]
        doing = f"running {', '.join(n for n in names if n) or 'a tool'}"
    elif last.kind == StepKind.MODEL:
        doing = "checking the answer"
    elif last.kind in (StepKind.TOOL, StepKind.DELEGATION):
        doing = "asking the model, with the result"
    elif last.kind == StepKind.APPROVAL:
        call = last.input.get("call") if isinstance(last.input, dict) else None
        card = cards.get(str(call.get("id"))) if isinstance(call, dict) else None
        doing = f"running {card.name}" if card is not None else "running the approved call"
    elif last.kind == StepKind.GUARDRAIL:
        doing = "asking the model"
    elif last.kind == StepKind.ANSWER:
        doing = "finishing"
    return f"Step {len(steps) + 1}: {doing}"


_APPROVAL_CARD = {
    "pending": ("awaiting approval", ""),
    "approved": ("running", "approved by a reviewer"),
    "rejected": ("refused", "rejected by a reviewer"),
    "expired": ("refused", "nobody approved it in time"),
    "withdrawn": ("not run", "the run was stopped"),
}


_ANSWER_REVIEW = {
    "released": "released by a reviewer",
    "rejected": "not released by a reviewer",
}


def _review_note(decision: str, comment: str) -> str:
    """A reviewer's decision with their comment, as the requester reads it ('' for none)."""
    comment = comment.strip()
    return f"{decision.capitalize()}: “{comment}”" if decision and comment else ""


def _settle(card: Card, step: RunStep) -> None:
    output = step.output
    if output.get("sandbox"):  # an evaluation's call: recorded, never executed
        card.status, card.detail = "done", str(output.get("result", {}).get("sandbox", ""))
    elif step.status == "ok":
        card.status = "done"
        result = output.get("result", output.get("withheld", ""))
        card.detail = result if isinstance(result, str) else json.dumps(result)[:500]
    elif output.get("denied"):
        card.status, card.detail = "refused", output.get("error", "")
    else:
        card.status, card.detail = "failed", output.get("error", "")


def _arguments(raw) -> object:
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def write_only_arguments(runs: list[Run]) -> dict[str, set[str]]:
    """Per tool, the arguments its schema marks `writeOnly` (secrets the user typed once):
    cards show them masked. One query for all the runs' tools."""
    from tools.models import Tool

    names = {
        call["name"]
        for run in runs
        for step in run.steps.all()
        if step.kind == StepKind.MODEL
        for call in step.output.get("tool_calls") or []
    }
    if not names:
        return {}
    hidden = {}
    for name, schema in Tool.objects.filter(name__in=names).values_list("name", "parameters"):
        properties = (schema or {}).get("properties", {})
        keys = {k for k, v in properties.items() if isinstance(v, dict) and v.get("writeOnly")}
        if keys:
            hidden[name] = keys
    return hidden


def run_views(runs: list[Run]) -> list[RunView]:
    """The runs (steps prefetched) as the chat shows them, with what reviewers decided and
    said: three queries for any number."""
    from governance.models import ApprovalRequest, Escalation, EscalationStatus

    hidden = write_only_arguments(runs)
    asked = [
        step.output.get("approval")
        for run in runs
        for step in run.steps.all()
        if step.kind == StepKind.APPROVAL
    ]
    decisions = {
        pk: (status, comment)
        for pk, status, comment in (
            ApprovalRequest.objects.filter(pk__in=asked).values_list("pk", "status", "comment")
            if asked
            else []
        )
    }
    reviewed = {
        run_id: (status, comment)
        for run_id, status, comment in Escalation.objects.filter(
            run_id__in=[run.pk for run in runs]
        )
        .exclude(status=EscalationStatus.PENDING)
        .values_list("run_id", "status", "comment")
    }
    return [run_view(run, hidden, decisions, reviewed.get(run.pk)) for run in runs]


# Waiting for a run (the API's `?wait`, the OpenAI-compatible endpoint) -------------------------

PARKED = (RunState.AWAITING_APPROVAL, RunState.AWAITING_REVIEW)
# Settled: nothing more happens to the run without somebody (it ended, or a reviewer is asked).
SETTLED = (*FINAL_STATES, *PARKED)
WAIT_POLL_SECONDS = 2.0  # the database is asked at least this often, whatever Redis says
_sync_redis: dict = {}


def run_decisive(event: dict) -> bool:
    """An event after which the run may have ended or parked: the database says which."""
    kind = event.get("type")
    if kind in ("final", "held"):
        return True
    return kind == "step" and event.get("kind") == "approval" and event.get("status") == "pending"


def run_settled(run_id: int) -> Run | None:
    return Run.objects.filter(pk=run_id, state__in=SETTLED).select_related("agent").first()


def run_current(run_id: int) -> Run:
    return Run.objects.select_related("agent").get(pk=run_id)


def releasing(read):
    """`read`, then the thread's database connection closed (outside a transaction): a long
    wait that looks now and then must not hold one of PostgreSQL's connections throughout."""

    def released(*args, **kwargs):
        from django.db import connection

        try:
            return read(*args, **kwargs)
        finally:
            if not connection.in_atomic_block:
                connection.close()

    return released


def run_wait(*, run: Run, timeout: float) -> Run:
    """The run once it ends or parks, or as it stands after `timeout` seconds. Follows the run's
    event log in Redis (agents.events) and asks the database on each decisive event and every
    WAIT_POLL_SECONDS, so it ends even if Redis lost the events."""
    import time

    import redis

    from agents.events import stream_key

    if run.state in SETTLED:  # an idempotent repeat of a settled request
        return run
    deadline = time.monotonic() + timeout
    if run.done is not None:  # advanced on a thread here (agents.orchestrator.run_here)
        releasing(lambda: None)()  # the request's own queries are done: its connection goes back
        if run.done.wait(timeout) and (settled := releasing(run_settled)(run.pk)) is not None:
            return settled
        # Past the wait, or the thread let the run go (a worker took it over): as for any run.
    if "client" not in _sync_redis:
        from django.conf import settings

        # Its reads block for less than its socket timeout (redis-py 8's default of 5 s leaves
        # little margin); a log Redis lost is no matter: the database is asked anyway.
        _sync_redis["client"] = redis.Redis.from_url(
            settings.REDIS_URL, **settings.REDIS_BLOCKING_OPTIONS
        )
    client, key, last = _sync_redis["client"], stream_key(run.pk), "0-0"
    check = False
    releasing(lambda: None)()  # the request's own queries are done: its connection goes back
    while True:
        if check and (settled := releasing(run_settled)(run.pk)) is not None:
            return settled
        left = deadline - time.monotonic()
        if left <= 0:
            return releasing(run_current)(run.pk)
        try:
            block = max(1, int(min(left, WAIT_POLL_SECONDS) * 1000))
            found = client.xread({key: last}, block=block)
        except redis.RedisError:  # Redis is a notification path: fall back on the database
            time.sleep(min(left, WAIT_POLL_SECONDS))
            found = []
        check = not found
        for _, entries in found:
            for sid, fields in entries:
                last = sid
                check = check or run_decisive(json.loads(fields[b"e"]))


# A run's events, made again (agents.events.run_history) ----------------------------------------


def run_events_rebuilt(*, run_id: int) -> list[dict]:
    """The events the run's workers published, as its committed steps and state say: each
    `{"id": "0-<n>", "step": index or None, "event"}`, oldest first. Tokens are not kept, so
    they are not here. A run that does not stream logged only what settles it (an approval
    asked, the answer held, the end), and so it is here; a `requeued` follows a decided
    approval. The list only grows as the run goes on, so an id names one event for good."""
    from governance.models import ApprovalRequest, ApprovalStatus, Escalation

    run = Run.objects.filter(pk=run_id).values("state", "stream").first()
    if run is None:
        return []
    decided = dict(
        ApprovalRequest.objects.filter(run_id=run_id)
        .exclude(status__in=[ApprovalStatus.PENDING, ApprovalStatus.WITHDRAWN])
        .values_list("pk", "status")
    )
    found: list[tuple[int | None, dict]] = []
    steps = RunStep.objects.filter(run_id=run_id).order_by("index")
    for index, kind, given, output in steps.values_list("index", "kind", "input", "output"):
        event = _step_event(index, kind, given, output)
        if event is not None and (run["stream"] or kind == StepKind.APPROVAL):
            found.append((index, event))
        if event is not None and kind == StepKind.APPROVAL and output.get("approval") in decided:
            status = str(decided[output["approval"]])
            found.append(
                (index, {"type": "requeued", "approval": output["approval"], "status": status})
            )
    state = run["state"]
    if state == RunState.AWAITING_REVIEW or (
        state in FINAL_STATES and Escalation.objects.filter(run_id=run_id).exists()
    ):
        found.append((None, {"type": "held", "reason": "held for review"}))
    if state in FINAL_STATES:
        found.append((None, {"type": "final", "state": str(state)}))
    return [
        {"id": f"0-{n}", "step": index, "event": event}
        for n, (index, event) in enumerate(found, start=1)
    ]


def _step_event(index: int, kind: str, given: dict, output: dict) -> dict | None:
    """A step's event as agents.orchestrator publishes it (what changed, not what it says)."""
    head = {"type": "step", "index": index, "kind": str(kind)}
    call = given.get("call")
    if not isinstance(call, dict):
        call = {}
    if kind == StepKind.RETRIEVAL:
        return {**head, "found": len(output.get("passages") or [])}
    if kind == StepKind.MODEL:
        return {**head, "calls": [c.get("name") for c in output.get("tool_calls") or []]}
    if kind == StepKind.TOOL and "error" in output and "result" not in output:
        return {**head, "error": output["error"]}
    if kind == StepKind.TOOL:
        return {**head, "tool": call.get("name")}
    if kind == StepKind.APPROVAL and output.get("status") == "pending":
        return {
            **head,
            "tool": call.get("name"),
            "approval": output.get("approval"),
            "status": "pending",
        }
    return None  # guardrail and answer steps publish nothing
