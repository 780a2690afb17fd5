import threading
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone
from pgvector.django import HnswIndex, VectorField

from governance.querysets import RestrictedQuerySet


class ModelRoute(models.Model):
    """A named way to reach a model: an ordered list of deployments tried in turn.

    The gateway builds one litellm Router per route and rebuilds it when `updated_at` moves.
    A failing deployment is retried `num_retries` times, then skipped for `cooldown_seconds`
    after `allowed_fails` failures, and the next deployment (by position) answers.
    """

    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    num_retries = models.PositiveSmallIntegerField(default=1)
    timeout_seconds = models.FloatField(default=30, validators=[MinValueValidator(0.1)])
    cooldown_seconds = models.PositiveIntegerField(default=30)
    allowed_fails = models.PositiveSmallIntegerField(default=1)
    fallbacks_enabled = models.BooleanField(default=True)
    cache_seconds = models.PositiveIntegerField(
        default=0, help_text="Reuse an identical model answer for this long (0: no cache)."
    )
    external = models.BooleanField(
        default=True,
        help_text="Its deployments are run by someone else (a provider's API): personal data "
        "(emails, phone numbers, card numbers, IBANs, SSNs) is replaced by placeholders before "
        "text is sent, and put back in what comes back.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    objects = RestrictedQuerySet.as_manager()

    class Meta:
        permissions = [("use_modelroute", "Can use the model route")]

    def __str__(self) -> str:
        return self.name


class Deployment(models.Model):
    """One model endpoint of a route: a litellm model string, where it lives, how to pay it."""

    route = models.ForeignKey(ModelRoute, on_delete=models.CASCADE, related_name="deployments")
    position = models.PositiveSmallIntegerField(help_text="Tried in ascending order.")
    model = models.CharField(
        max_length=200,
        help_text="litellm model string, e.g. openai/gpt-4o-mini or warden-local/demo",
    )
    api_base = models.URLField(blank=True)
    api_key_ref = models.CharField(
        max_length=200,
        blank=True,
        help_text="Where the key comes from: env:VARIABLE_NAME (never the key itself).",
    )
    region = models.CharField(max_length=50, blank=True)
    weight = models.PositiveSmallIntegerField(default=1)
    input_cost_per_token = models.DecimalField(
        max_digits=12,
        decimal_places=10,
        null=True,
        blank=True,
        help_text="Only for models litellm's cost map does not know.",
    )
    output_cost_per_token = models.DecimalField(
        max_digits=12, decimal_places=10, null=True, blank=True
    )

    class Meta:
        ordering = ["route", "position"]
        constraints = [
            models.UniqueConstraint(fields=["route", "position"], name="deployment_route_position"),
        ]

    def __str__(self) -> str:
        return f"{self.route.name}#{self.position} {self.model}"

    def save(self, *args, **kwargs):
        super().save(*args, **kwargs)
        self._touch_route()

    def delete(self, *args, **kwargs):
        result = super().delete(*args, **kwargs)
        self._touch_route()
        return result

    def _touch_route(self) -> None:
        # The gateway rebuilds a route's router when the route's updated_at moves.
        from django.utils import timezone

        ModelRoute.objects.filter(pk=self.route_id).update(updated_at=timezone.now())


class AnswerCache(models.TextChoices):
    OFF = "off", "Off: every question asks the model"
    EXACT = "exact", "The same question: an answer given before to the same question"
    SIMILAR = "similar", "Similar questions too: also a question that means the same"


class InjectionAction(models.TextChoices):
    BLOCK = "block", "Block: refuse the message"
    APPROVE = "approve", "Require approval for the run's next tool call"
    FLAG = "flag", "Flag it in the audit trail only"


class Agent(models.Model):
    """An agent users chat with: a system prompt, a model route, the tools it may offer."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    system_prompt = models.TextField(blank=True)
    route = models.ForeignKey(ModelRoute, on_delete=models.PROTECT, related_name="agents")
    tools = models.ManyToManyField(
        "tools.Tool",
        blank=True,
        related_name="agents",
        help_text="The tools the agent may offer the model (disabled ones are not offered).",
    )
    allowed_regions = ArrayField(
        models.CharField(max_length=50),
        default=list,
        blank=True,
        help_text="Deployments outside these regions are never used; empty allows all.",
    )
    confidence_threshold = models.DecimalField(
        max_digits=3,
        decimal_places=2,
        default=Decimal("0.80"),
        validators=[MinValueValidator(0), MaxValueValidator(1)],
    )
    knowledge_bases = models.ManyToManyField(
        "agents.KnowledgeBase",
        blank=True,
        related_name="agents",
        # Files attached in a conversation are that conversation's alone: never an agent's.
        limit_choices_to={"conversation__isnull": True},
        help_text="Each run first retrieves passages from these (those the user may read).",
    )
    passages_per_run = models.PositiveSmallIntegerField(
        default=4, validators=[MinValueValidator(1), MaxValueValidator(20)]
    )
    max_steps = models.PositiveSmallIntegerField(default=8, validators=[MinValueValidator(1)])
    max_tokens_per_run = models.PositiveIntegerField(default=20_000)
    injection_action = models.CharField(
        "on a suspected prompt injection",
        max_length=8,
        choices=InjectionAction.choices,
        default=InjectionAction.APPROVE,
        help_text="In the user's message. A retrieved passage or a tool's output that looks "
        "like one is always quarantined: the model never sees it (agents.provenance).",
    )
    runs_per_minute = models.PositiveIntegerField(
        default=0, help_text="Runs of this agent per minute, all users together (0: no limit)."
    )
    runs_per_user_per_minute = models.PositiveIntegerField(
        default=0, help_text="Runs of this agent per minute by any one user (0: no limit)."
    )
    approver_groups = models.ManyToManyField(
        "auth.Group",
        blank=True,
        related_name="approvable_agents",
        help_text="Members of these groups decide approval requests and held answers of this "
        "agent's runs (with the tool's approver groups). None: any reviewer.",
    )
    answer_cache = models.CharField(
        "answer cache",
        max_length=8,
        choices=AnswerCache.choices,
        default=AnswerCache.OFF,
        help_text="Answer a standalone question (a conversation's first) with the answer the "
        "same version gave to the same question, or a similar one, for people who may read and "
        "use exactly the same knowledge bases and tools (agents.answer_cache). Only answers "
        "delivered without a tool call, a review or personal data are kept; a changed document "
        "drops those that read its knowledge base.",
    )
    enabled = models.BooleanField(default=True)
    mcp_exposed = models.BooleanField(
        "exposed over MCP",
        default=False,
        help_text="MCP clients (and other agents) may ask it as a tool, ask_<slug>, those of "
        "their accounts that may use it (integrations/mcp).",
    )
    delegates = models.ManyToManyField(
        "self",
        symmetrical=False,
        blank=True,
        related_name="delegators",
        help_text="Agents this one may ask as tools (ask_<slug>): each question is a run of its "
        "own, by the same user, with that user's permissions, never more.",
    )
    live_version = models.ForeignKey(
        "agents.AgentVersion",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        editable=False,
        help_text="The version that serves its runs (but those a release gives a candidate).",
    )

    objects = RestrictedQuerySet.as_manager()

    class Meta:
        permissions = [("use_agent", "Can use the agent")]

    def __str__(self) -> str:
        return self.name


def version_route_deleted(collector, field, sub_objs, using) -> None:
    """SET_NULL for a deleted route's versions, but a route that the live version of an agent
    or a running release's candidate runs on cannot be deleted: every run it serves would fail
    (a draft may have moved the agent itself to another route, so the agent's own PROTECT does
    not hold it)."""
    live = Agent.objects.using(using).filter(live_version__in=sub_objs).values("live_version")
    candidates = Release.objects.using(using).filter(
        state=ReleaseState.RUNNING, candidate__in=sub_objs
    )
    serving = AgentVersion.objects.using(using).filter(
        models.Q(pk__in=live) | models.Q(pk__in=candidates.values("candidate"))
    )
    if serving.exists():
        # The admin's delete page lists them as what protects the route.
        raise models.ProtectedError("a serving agent version runs on it", set(serving))
    models.SET_NULL(collector, field, sub_objs, using)


class AgentVersion(models.Model):
    """One immutable state of an agent's behaviour (agents.versions.BEHAVIOUR): its system
    prompt, route, tools, knowledge bases, agents it may ask, limits, threshold and guardrail
    setting, as `config`, with `changes` against the version before it, who made it and why.
    Every run records the version that served it. Never updated or deleted (enforced in the
    database); a rollback is a new version with an old one's config."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    config = models.JSONField()
    changes = models.JSONField(
        default=list,
        blank=True,
        help_text="Against the version before: [{field, before, after}], in people's words.",
    )
    route = models.ForeignKey(
        ModelRoute,
        on_delete=version_route_deleted,
        null=True,
        blank=True,
        related_name="+",
        help_text="The config's route (none once that route was deleted: not servable).",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    reason = models.TextField(blank=True)
    rollback_of = models.ForeignKey(
        "self",
        # Versions go only with their agent, all of them at once (the constraint is checked at
        # commit): PROTECT would keep an agent that was ever rolled back from being deleted.
        on_delete=models.DO_NOTHING,
        null=True,
        blank=True,
        related_name="+",
        help_text="The version whose config this one restored, if it is a rollback.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["agent", "number"], name="agent_version_number"),
        ]
        ordering = ["agent", "-number"]

    def __str__(self) -> str:
        return f"v{self.number}"


class ReleaseKind(models.TextChoices):
    CANARY = "canary", "Canary: promoted once it has run long enough and its evaluation passed"
    AB = "ab", "A/B: both versions serve until a person promotes or stops it"


class ReleaseState(models.TextChoices):
    RUNNING = "running"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back", "Rolled back"
    STOPPED = "stopped"


def _rate_limit(label: str, help_text: str) -> models.DecimalField:
    """A release guard that is a percentage of the candidate's runs (none: not guarded)."""
    return models.DecimalField(
        label,
        max_digits=5,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(0), MaxValueValidator(100)],
        help_text=help_text,
    )


class Release(models.Model):
    """A candidate version of an agent serving `share` percent of its conversations beside the
    baseline (the live version when it started), each conversation sticking to the version it
    was first given (agents.releases.release_candidate). While it runs, the judge (a beat job,
    agents.releases.releases_judge) compares the candidate's live metrics with its guards and
    rolls it back when one is crossed; a canary is promoted once it has run `min_duration`,
    `min_runs` runs and its evaluation passed. At most one runs per agent (a constraint).
    Guards are limits on the candidate alone; an empty one is not judged."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="releases")
    candidate = models.ForeignKey(AgentVersion, on_delete=models.PROTECT, related_name="+")
    baseline = models.ForeignKey(
        AgentVersion,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The live version when the release started: it serves the other runs.",
    )
    kind = models.CharField(max_length=8, choices=ReleaseKind.choices, default=ReleaseKind.CANARY)
    share = models.PositiveSmallIntegerField(
        "share (%)",
        default=10,
        validators=[MinValueValidator(1), MaxValueValidator(99)],
        help_text="The percentage of conversations the candidate serves.",
    )
    state = models.CharField(
        max_length=12, choices=ReleaseState.choices, default=ReleaseState.RUNNING
    )
    max_error_rate = _rate_limit(
        "max error rate (%)",
        "Of the candidate's finished runs, the percentage that failed.",
    )
    max_escalation_rate = _rate_limit(
        "max escalation rate (%)",
        "Of its settled runs (finished, or waiting for a reviewer), the percentage "
        "that asked a reviewer (a tool call's approval or a held answer).",
    )
    max_held_rate = _rate_limit(
        "max held-answer rate (%)",
        "Of its settled runs, the percentage whose answer was held for review.",
    )
    max_thumbs_down_rate = _rate_limit(
        "max thumbs-down rate (%)",
        "Of its finished runs, the percentage someone rated not helpful.",
    )
    max_p95_latency_ms = models.PositiveIntegerField(
        "max p95 latency (ms)",
        null=True,
        blank=True,
        help_text="95% of its finished runs took at most this long, start to end.",
    )
    max_cost_per_run = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="The mean cost of its finished runs.",
    )
    min_runs = models.PositiveIntegerField(
        default=20,
        help_text="Settled runs of the candidate (finished, or waiting for a reviewer) before a "
        "guard judges it, and before it is promoted.",
    )
    min_duration = models.DurationField(
        default=timedelta(hours=1),
        help_text="How long it runs at least before it is promoted (hh:mm:ss).",
    )
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    started_at = models.DateTimeField(default=timezone.now)
    ended_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="Who promoted, stopped or rolled it back; none: the judge.",
    )
    ended_at = models.DateTimeField(null=True, blank=True)
    ended_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["agent"],
                condition=models.Q(state="running"),
                name="release_one_running_per_agent",
            ),
            models.CheckConstraint(
                condition=models.Q(share__gte=1, share__lte=99), name="release_share_1_to_99"
            ),
            models.CheckConstraint(
                condition=~models.Q(candidate=models.F("baseline")),
                name="release_candidate_not_baseline",
            ),
            models.CheckConstraint(
                condition=models.Q(state="running", ended_at__isnull=True)
                | (~models.Q(state="running") & models.Q(ended_at__isnull=False)),
                name="release_ended_when_not_running",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display().split(':')[0]} of v{self.candidate.number}"

    GUARDS = (
        "max_error_rate",
        "max_escalation_rate",
        "max_held_rate",
        "max_thumbs_down_rate",
        "max_p95_latency_ms",
        "max_cost_per_run",
    )


class Conversation(models.Model):
    """A user's thread with one agent."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    builder_test = models.BooleanField(
        default=False,
        help_text="Started in the agent builder to test the agent: listed there, not in the "
        "owner's chat (a real conversation all the same, governed and audited as any).",
    )
    evaluation = models.BooleanField(
        default=False,
        help_text="Holds one case of an evaluation run (agents.evaluation): in no chat list, "
        "a real conversation all the same, governed and audited as any.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.title or f"conversation {self.pk}"


class MessageRole(models.TextChoices):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class Message(models.Model):
    """One message of a conversation, as the model sees it."""

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    run = models.ForeignKey(
        "Run", on_delete=models.SET_NULL, null=True, blank=True, related_name="messages"
    )
    role = models.CharField(max_length=16, choices=MessageRole.choices)
    content = models.TextField(blank=True)
    tool_calls = models.JSONField(default=list, blank=True)
    tool_call_id = models.CharField(max_length=100, blank=True)
    tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0))
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["conversation", "id"]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"


class RunState(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"
    AWAITING_REVIEW = "awaiting_review", "Held for review"
    AWAITING_DELEGATE = "awaiting_delegate", "Waiting for an agent it asked"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


FINAL_STATES = (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.REJECTED)


class RunKind(models.TextChoices):
    """Who asked for the run: a person or an integration asking an agent (the chat, the REST
    and OpenAI-compatible APIs), an MCP client (a tool call, or an agent asked as a tool), or
    another agent's run (delegation: `parent` is that run)."""

    AGENT = "agent", "An agent answers a message"
    MCP = "mcp", "An MCP client's call"
    DELEGATED = "delegated", "Asked by another agent's run"


class Run(models.Model):
    """One execution of an agent on one user message (DESIGN.md §3).

    A worker advances a run only while it holds the lease; each lease grant increments
    `fencing_token`, and every write a worker makes checks that the token is still its own, so
    a worker that lost its lease (it stalled, another took over) can never write again.
    """

    # Not columns, set by agents.services: `replayed` when an idempotency key answers with this
    # earlier run; `done` when the run is advanced on a thread of this process (set as that
    # thread is done with it: agents.orchestrator.run_here).
    replayed = False
    done: threading.Event | None = None

    kind = models.CharField(max_length=12, choices=RunKind.choices, default=RunKind.AGENT)
    agent = models.ForeignKey(
        Agent,
        on_delete=models.PROTECT,
        related_name="runs",
        null=True,
        blank=True,
        help_text="The agent that answers; none for an MCP client's tool call (`tool`).",
    )
    tool = models.ForeignKey(
        "tools.Tool",
        on_delete=models.PROTECT,
        related_name="runs",
        null=True,
        blank=True,
        help_text="The tool an MCP client called: the run is that one call (its arguments are "
        "the run's input, as JSON).",
    )
    parent = models.ForeignKey(
        "self",
        on_delete=models.PROTECT,
        related_name="children",
        null=True,
        blank=True,
        help_text="The run whose agent asked this one's (delegation).",
    )
    client = models.CharField(
        max_length=200,
        blank=True,
        help_text="The MCP client that asked, as it named itself (name and version).",
    )
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="runs", null=True, blank=True
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="runs"
    )
    version = models.ForeignKey(
        AgentVersion,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="runs",
        help_text="The agent's version that served the run (none before versions existed, and "
        "for an MCP client's tool call).",
    )
    state = models.CharField(max_length=20, choices=RunState.choices, default=RunState.QUEUED)
    idempotency_key = models.CharField(max_length=200, blank=True)
    client_application_id = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="The OAuth2 application whose token started the run (its webhooks hear of "
        "it); empty for the browser, a personal access token, or Warden itself.",
    )
    idempotency_fingerprint = models.CharField(
        max_length=64,
        blank=True,
        help_text="A digest of the request that used the idempotency key: the same key with "
        "another request is refused, not answered with this run.",
    )
    input = models.TextField()
    stream = models.BooleanField(
        default=True,
        help_text="Publish the run's steps and the answer's tokens to its channel group as "
        "they happen (the chat does; an integration that waits for the result need not).",
    )
    trace_parent = models.CharField(
        max_length=55,
        blank=True,
        help_text="The W3C traceparent of the run's first span: every attempt at the run is "
        "traced under it (telemetry.tracing); empty when tracing is off.",
    )
    sandbox = models.BooleanField(
        default=False,
        help_text="An evaluation's run: its tool calls are recorded with the policy's decision "
        "and answered with a sandbox result, never executed (no ledger row, no HTTP, no effect).",
    )
    cancel_requested = models.BooleanField(default=False)
    lease_holder = models.CharField(max_length=200, blank=True)
    fencing_token = models.BigIntegerField(default=0)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0))
    latency_ms = models.PositiveIntegerField(default=0)
    confidence = models.DecimalField(max_digits=4, decimal_places=3, null=True, blank=True)
    answer = models.TextField(blank=True)
    citations = models.JSONField(
        default=list, blank=True, help_text="The passages the answer cites, by its [n] markers."
    )
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["actor", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="run_idempotency_per_actor",
            ),
            models.CheckConstraint(
                # An agent answers, or (an MCP client's call) exactly one tool runs.
                condition=models.Q(agent__isnull=False, tool__isnull=True)
                | models.Q(kind="mcp", agent__isnull=True, tool__isnull=False),
                name="run_agent_or_mcp_tool",
            ),
            models.CheckConstraint(
                condition=models.Q(parent__isnull=True) | models.Q(kind="delegated"),
                name="run_parent_only_delegated",
            ),
        ]
        indexes = [
            models.Index(
                fields=["lease_expires_at"],
                condition=models.Q(state__in=["queued", "running"]),
                name="run_active_lease",
            ),
        ]

    def __str__(self) -> str:
        return f"run {self.pk} ({self.state})"

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def trace_id(self) -> str:
        """The run's trace id in the tracing backend (32 hex digits), or ""."""
        from telemetry.tracing import trace_id

        return trace_id(self.trace_parent)

    @property
    def subject(self) -> str:
        """What the run is of, for people: the agent's name, or the tool an MCP client called."""
        if self.agent is not None:
            return self.agent.name
        return f"{self.tool.name} (MCP)" if self.tool is not None else ""


class StepKind(models.TextChoices):
    RETRIEVAL = "retrieval"
    MODEL = "model"
    TOOL = "tool"
    GUARDRAIL = "guardrail"
    APPROVAL = "approval"
    DELEGATION = "delegation"  # another agent asked (its run is a child of this one)
    ANSWER = "answer"


class StepStatus(models.TextChoices):
    OK = "ok"
    ERROR = "error"


class RunStep(models.Model):
    """A committed step of a run: what went in, what came out. A resumed run starts after the
    last of these and never repeats one."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="steps")
    index = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=StepKind.choices)
    input = models.JSONField(default=dict, blank=True)
    output = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=8, choices=StepStatus.choices, default=StepStatus.OK)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0))
    deployment = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["run", "index"]
        constraints = [
            models.UniqueConstraint(fields=["run", "index"], name="runstep_run_index"),
        ]

    def __str__(self) -> str:
        return f"run {self.run_id} step {self.index} {self.kind}"


class Rating(models.TextChoices):
    UP = "up", "Helpful"
    DOWN = "down", "Not helpful"


FEEDBACK_COMMENT_LENGTH = 2000


class Feedback(models.Model):
    """A person's verdict on a run's answer: up or down, with an optional comment. One per
    person per run, changed in place (agents.feedback.feedback_record, audited); the agent's
    owners read it (agents.feedback.feedback_visible_to) on the run's trace, in the admin and
    through the API."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="feedback")
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="feedback"
    )
    rating = models.CharField(max_length=4, choices=Rating.choices)
    comment = models.TextField(blank=True, max_length=FEEDBACK_COMMENT_LENGTH)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "feedback"
        constraints = [
            models.UniqueConstraint(fields=["run", "author"], name="feedback_one_per_person"),
            models.CheckConstraint(
                condition=models.Q(rating__in=["up", "down"]), name="feedback_rating_known"
            ),
        ]
        indexes = [models.Index(fields=["-updated_at"], name="feedback_latest")]

    def __str__(self) -> str:
        return f"{self.get_rating_display()} on run {self.run_id}"


class EvaluationSet(models.Model):
    """A named set of questions for one agent, each with what a good answer holds
    (EvaluationCase). An evaluation (EvaluationRun) puts a version of the agent through every
    case and passes when its overall score reaches `pass_mark`."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="evaluation_sets")
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    pass_mark = models.DecimalField(
        max_digits=3,
        decimal_places=2,
        default=Decimal("0.80"),
        validators=[MinValueValidator(0), MaxValueValidator(1)],
        help_text="The overall score (0 to 1) an evaluation must reach to pass.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["agent", "name"], name="evaluation_set_agent_name"),
        ]
        ordering = ["agent", "name"]

    def __str__(self) -> str:
        return self.name


class EvaluationExpect(models.TextChoices):
    ANSWER = "answer", "Answers (with the expected facts, citations and tool calls)"
    REFUSE = "refuse", "Refuses (no answer)"
    ESCALATE = "escalate", "Escalates (held for review, or a call that needs approval)"


class EvaluationCase(models.Model):
    """One question of an evaluation set and what a good run of it does: the facts its answer
    states (`expected_facts`, phrases found case-insensitively), the documents it cites (by
    title), the tool calls it makes ([{"name", "arguments": a subset}]), or that it refuses or
    escalates instead (`expect`). `source_run` is the run a case was made from (feedback)."""

    set = models.ForeignKey(EvaluationSet, on_delete=models.CASCADE, related_name="cases")
    question = models.TextField()
    expected_facts = models.JSONField(default=list, blank=True)
    expected_citations = models.JSONField(default=list, blank=True)
    expected_tools = models.JSONField(default=list, blank=True)
    expect = models.CharField(
        max_length=8, choices=EvaluationExpect.choices, default=EvaluationExpect.ANSWER
    )
    notes = models.TextField(blank=True)
    source_run = models.ForeignKey(
        "Run", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["set", "id"]

    def __str__(self) -> str:
        return self.question[:60]


class EvaluationState(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class EvaluationRun(models.Model):
    """One evaluation: `version` of the set's agent put through every case of `set`, each case
    a real run in sandbox mode (agents.evaluation.services). `scores` holds the means over the
    cases ({correctness, citations, tools, behaviour, overall}); `passed` is overall against the
    set's pass mark (None until it finished)."""

    set = models.ForeignKey(EvaluationSet, on_delete=models.CASCADE, related_name="evaluations")
    version = models.ForeignKey(AgentVersion, on_delete=models.PROTECT, related_name="evaluations")
    state = models.CharField(
        max_length=10, choices=EvaluationState.choices, default=EvaluationState.QUEUED
    )
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    scores = models.JSONField(default=dict, blank=True)
    latency_ms_p50 = models.PositiveIntegerField(null=True, blank=True)
    latency_ms_p95 = models.PositiveIntegerField(null=True, blank=True)
    tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0))
    passed = models.BooleanField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["version", "set", "-finished_at"], name="evaluation_latest"),
        ]

    def __str__(self) -> str:
        return f"evaluation {self.pk} of {self.version} on {self.set}"


class EvaluationResult(models.Model):
    """One case of an evaluation: the run that answered it, what it answered, the tool calls
    it made (recorded, not executed), and its scores ({correctness, citations, tools,
    behaviour, overall} and what they were found on)."""

    evaluation = models.ForeignKey(EvaluationRun, on_delete=models.CASCADE, related_name="results")
    case = models.ForeignKey(EvaluationCase, on_delete=models.CASCADE, related_name="results")
    run = models.ForeignKey(
        "Run", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    answer = models.TextField(blank=True)
    scores = models.JSONField(default=dict, blank=True)
    passed = models.BooleanField(default=False)
    latency_ms = models.PositiveIntegerField(default=0)
    tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0))
    tool_calls = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["evaluation", "case"]
        constraints = [
            models.UniqueConstraint(
                fields=["evaluation", "case"], name="evaluation_result_one_per_case"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.evaluation_id}: case {self.case_id}"


class CachedAnswer(models.Model):
    """An answer kept to serve the same or a similar standalone question again
    (agents.answer_cache). Scoped: only a run of the same agent `version` whose asker may read
    and use exactly the knowledge bases and tools whose digest is `scope` finds it (never keyed
    by a user: two people with the same access share it, two with different access never do).
    `knowledge_bases` are the bases of that scope (a changed document in one drops the entry);
    `documents` are those its cited passages came from. `tokens`: what the model call that
    produced it used, so what a hit saves. The question is kept for the trace and the admin;
    entries hold no personal data (such answers are never kept)."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+")
    version = models.ForeignKey(AgentVersion, on_delete=models.CASCADE, related_name="+")
    scope = models.CharField(max_length=64)
    question = models.TextField()
    question_hash = models.CharField(max_length=64)
    # The question's (all-MiniLM-L6-v2); none for an answer kept by the exact tier alone.
    embedding = VectorField(dimensions=384, null=True, blank=True)
    answer = models.TextField()
    citations = models.JSONField(default=list, blank=True)
    confidence = models.FloatField(null=True, blank=True)
    knowledge_bases = ArrayField(models.BigIntegerField(), default=list, blank=True)
    documents = ArrayField(models.BigIntegerField(), default=list, blank=True)
    tokens = models.PositiveIntegerField(default=0)
    run = models.ForeignKey(
        "agents.Run", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    hits = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            # Its index is the filter of every lookup (and the exact tier's whole lookup).
            models.UniqueConstraint(
                fields=["version", "scope", "question_hash"], name="cached_answer_question"
            )
        ]
        indexes = [
            HnswIndex(
                name="cached_answer_embedding_hnsw",
                fields=["embedding"],
                m=16,
                ef_construction=64,
                opclasses=["vector_cosine_ops"],
            ),
            GinIndex(fields=["knowledge_bases"], name="cached_answer_bases"),
        ]

    def __str__(self) -> str:
        return f"cached answer {self.pk} (v{self.version_id}, {self.hits} hits)"


# The knowledge models belong to this app (DESIGN.md §2); they live in agents/knowledge/.
from agents.knowledge.models import (  # noqa: E402, F401
    Chunk,
    Document,
    DocumentSource,
    DocumentStatus,
    KnowledgeBase,
)


class DriftSignal(models.TextChoices):
    CONFIDENCE = "confidence", "Answer confidence"
    RETRIEVAL = "retrieval", "Top retrieval similarity"
    REFUSALS = "refusals", "Refusal rate"
    TOOL_MIX = "tool_mix", "Tool-call mix"


class DriftCheck(models.Model):
    """One day of one agent's signal compared with its reference window (agents.drift): the
    statistic (population stability index, Jensen-Shannon distance or a difference of
    proportions), its value, the threshold it was held to and whether it alerted. Written once
    a day by the `drift-check` beat job (or `manage.py drift`) for each signal with enough
    samples on both sides; an alert is audited (`agent.drift_detected`) and stays open in the
    console until someone acknowledges it."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="drift_checks")
    day = models.DateField()
    signal = models.CharField(max_length=16, choices=DriftSignal.choices)
    statistic = models.CharField(max_length=24)
    value = models.FloatField()
    threshold = models.FloatField()
    alert = models.BooleanField(default=False)
    samples = models.PositiveIntegerField(help_text="Runs, answers or calls counted on the day.")
    reference_samples = models.PositiveIntegerField()
    reference_since = models.DateField()
    reference_until = models.DateField()
    distributions = models.JSONField(
        default=dict, blank=True, help_text="{day: {category: count}, reference: {...}}"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    acknowledged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["agent", "day", "signal"], name="drift_check_once"),
        ]
        indexes = [
            models.Index(
                fields=["-day"], condition=models.Q(alert=True), name="drift_alerts_latest"
            ),
        ]
        ordering = ["-day", "agent", "signal"]
        permissions = [("acknowledge_driftcheck", "Can acknowledge a drift alert")]

    def __str__(self) -> str:
        return f"{self.agent} {self.signal} on {self.day}"


class DriftReference(models.Model):
    """A reference window an admin pinned for an agent's drift checks (agents.drift): days
    known to be right (say, the two weeks after a release was approved) that later days are
    compared with, instead of the days just before each. Days up to `until` keep the rolling
    reference."""

    agent = models.OneToOneField(Agent, on_delete=models.CASCADE, related_name="drift_reference")
    since = models.DateField()
    until = models.DateField()
    reason = models.TextField(blank=True)
    pinned_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    pinned_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(since__lte=models.F("until")), name="drift_reference_ordered"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.agent}: {self.since}..{self.until}"
