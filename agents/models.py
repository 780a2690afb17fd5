import threading
from decimal import Decimal

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
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
        on_delete=models.SET_NULL,
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
        on_delete=models.PROTECT,
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
