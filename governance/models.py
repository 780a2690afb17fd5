"""Governance state: who is denied what, approvals, escalations, budgets (DESIGN.md §6).

The grants themselves are guardian's object permissions; this app holds what guardian has no
word for. Governance sits below tools and agents (DESIGN.md §2), so it never imports their
models: a denial names its object by content type and id; requests, escalations and budgets
point at runs, agents and tools through lazy foreign keys ("agents.Run") without a database
constraint or a reverse accessor, and `DO_NOTHING` on delete: a decision record outlives what
it decided about (it keeps the id), as the audit trail does.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.contrib.postgres.fields import ArrayField
from django.db import models


def _upward(model: str, **options: Any) -> models.ForeignKey[Any, Any]:
    """A foreign key to a model of an app above governance (module docstring)."""
    options.setdefault("related_name", "+")
    return models.ForeignKey(model, on_delete=models.DO_NOTHING, db_constraint=False, **options)


class Action(models.TextChoices):
    USE = "use"
    READ = "read"


class AccessDenial(models.Model):
    """An explicit deny: this user, or every member of this group, may not `action` the object,
    whatever any grant says. Deny wins over grants, group or direct, and over superuser status,
    so a governance team can shut one person out of one agent without touching the groups."""

    content_type = models.ForeignKey(ContentType, on_delete=models.CASCADE, related_name="+")
    object_id = models.PositiveBigIntegerField()
    target = GenericForeignKey("content_type", "object_id")
    action = models.CharField(max_length=16, choices=Action.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="access_denials",
    )
    group = models.ForeignKey(
        "auth.Group", null=True, blank=True, on_delete=models.CASCADE, related_name="access_denials"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(user__isnull=True) ^ models.Q(group__isnull=True),
                name="accessdenial_user_xor_group",
            ),
            models.UniqueConstraint(
                fields=["content_type", "object_id", "action", "user"],
                condition=models.Q(user__isnull=False),
                name="accessdenial_unique_user",
            ),
            models.UniqueConstraint(
                fields=["content_type", "object_id", "action", "group"],
                condition=models.Q(group__isnull=False),
                name="accessdenial_unique_group",
            ),
        ]
        indexes = [models.Index(fields=["content_type", "object_id"])]

    def __str__(self) -> str:
        holder = self.user or self.group
        return f"{holder} denied {self.action} of {self.content_type.model} {self.object_id}"


class ApprovalStatus(models.TextChoices):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"  # the run was cancelled first


class ApprovalRequest(models.Model):
    """A tool call waiting for a reviewer: bound to the tool (and its version), the run step
    and a hash of the exact arguments. The run is parked until a decision; then it executes
    `approved_arguments` (the requested ones, or a reviewer's edit re-validated against the
    tool's schema) and nothing else. The requester never decides their own request."""

    key = models.CharField(
        max_length=200, unique=True, help_text="The call's idempotency key: run, step, call."
    )
    run = _upward("agents.Run")
    # None: an MCP client called the tool itself (no agent's run).
    agent = _upward("agents.Agent", db_index=False, null=True, blank=True)
    tool = _upward("tools.Tool", db_index=False)
    tool_name = models.CharField(max_length=64)
    tool_version = models.CharField(max_length=16)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="approval_requests"
    )
    arguments = models.JSONField()
    arguments_hash = models.CharField(max_length=64)
    reasons = models.JSONField(default=list, help_text="Why the policy asked for approval.")
    approver_groups = models.ManyToManyField(
        "auth.Group",
        blank=True,
        related_name="+",
        help_text="Who may decide, as the agent and tool said when it was asked; none: any "
        "reviewer.",
    )
    status = models.CharField(
        max_length=16, choices=ApprovalStatus.choices, default=ApprovalStatus.PENDING
    )
    approved_arguments = models.JSONField(null=True, blank=True)
    approved_hash = models.CharField(max_length=64, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="approval_decisions",
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(
                fields=["expires_at"],
                condition=models.Q(status="pending"),
                name="approval_pending_expiry",
            )
        ]

    def __str__(self) -> str:
        return f"approval {self.pk}: {self.tool_name} ({self.status})"

    @property
    def edited(self) -> bool:
        return bool(self.approved_hash) and self.approved_hash != self.arguments_hash


class EscalationStatus(models.TextChoices):
    PENDING = "pending"
    RELEASED = "released"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"


class Escalation(models.Model):
    """A final answer held because its confidence was below the agent's threshold. The user
    sees "held for review" until a reviewer releases it (as it was or edited) or rejects it."""

    run = models.OneToOneField(
        "agents.Run", on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    agent = _upward("agents.Agent", db_index=False)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="escalations"
    )
    question = models.TextField()
    answer = models.TextField(help_text="The answer as the model gave it.")
    citations = models.JSONField(default=list, blank=True)
    confidence = models.DecimalField(max_digits=4, decimal_places=3, null=True)
    threshold = models.DecimalField(max_digits=3, decimal_places=2)
    approver_groups = models.ManyToManyField("auth.Group", blank=True, related_name="+")
    status = models.CharField(
        max_length=16, choices=EscalationStatus.choices, default=EscalationStatus.PENDING
    )
    released_answer = models.TextField(blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="escalation_decisions",
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"escalation {self.pk} of run {self.run_id} ({self.status})"


class BudgetPeriod(models.TextChoices):
    DAY = "day"
    MONTH = "month"


class Budget(models.Model):
    """A limit on model use, in tokens, money or both, per day or month, for one user, one team
    (every member's use counts) or one agent. Before each model call an estimate is reserved
    on every budget that applies, atomically; after it, the reservation is settled at what the
    call really used. A hard budget refuses the call that would not fit; every budget tells
    its subject once when use passes `notify_at_percent`."""

    name = models.CharField(max_length=200)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="budgets",
    )
    group = models.ForeignKey(
        "auth.Group",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="budgets",
        verbose_name="team",
    )
    agent = _upward("agents.Agent", null=True, blank=True, db_index=False)
    period = models.CharField(
        max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH
    )
    max_tokens = models.PositiveBigIntegerField(null=True, blank=True)
    max_cost = models.DecimalField(
        "max cost (USD)", max_digits=12, decimal_places=4, null=True, blank=True
    )
    hard = models.BooleanField(
        default=True, help_text="Refuse calls past the limit; otherwise only notify."
    )
    notify_at_percent = models.PositiveSmallIntegerField(default=80)
    enabled = models.BooleanField(default=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(user__isnull=False, group__isnull=True, agent_id__isnull=True)
                    | models.Q(user__isnull=True, group__isnull=False, agent_id__isnull=True)
                    | models.Q(user__isnull=True, group__isnull=True, agent_id__isnull=False)
                ),
                name="budget_one_subject",
            ),
            models.CheckConstraint(
                condition=models.Q(max_tokens__isnull=False) | models.Q(max_cost__isnull=False),
                name="budget_has_a_limit",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class BudgetUsage(models.Model):
    """A budget's use in one period: settled use plus what in-flight calls have reserved."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="usage")
    period_start = models.DateField()
    used_tokens = models.PositiveBigIntegerField(default=0)
    used_cost = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    reserved_tokens = models.PositiveBigIntegerField(default=0)
    reserved_cost = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    notified = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["budget", "period_start"], name="budget_usage_period")
        ]

    def __str__(self) -> str:
        return f"{self.budget} from {self.period_start}"


class BudgetReservation(models.Model):
    """An estimate held on one budget's usage for one model call until the call settles.
    Unsettled ones of a crashed worker are settled at their estimate by the beat job."""

    key = models.CharField(max_length=200, help_text="The model step: run:<id>:step:<n>.")
    usage = models.ForeignKey(BudgetUsage, on_delete=models.CASCADE, related_name="reservations")
    tokens = models.PositiveBigIntegerField()
    cost = models.DecimalField(max_digits=14, decimal_places=6)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["key", "usage"], name="budget_reservation_once")
        ]

    def __str__(self) -> str:
        return f"{self.key}: {self.tokens} tokens on {self.usage}"


class TeamPolicy(models.Model):
    """What a team (a group) may do beyond its grants: where its data may be processed. A run
    by a member of several teams keeps to the regions all of them (and the agent) allow."""

    group = models.OneToOneField(
        "auth.Group", on_delete=models.CASCADE, related_name="policy", verbose_name="team"
    )
    allowed_regions = ArrayField(
        models.CharField(max_length=50),
        default=list,
        blank=True,
        help_text="Model deployments outside these regions are never used for the team's "
        "members; empty allows all.",
    )

    class Meta:
        verbose_name = "team policy"
        verbose_name_plural = "team policies"

    def __str__(self) -> str:
        return f"policy of {self.group}"
