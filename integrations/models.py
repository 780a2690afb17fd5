"""The integration API's own records: personal access tokens (integrations/tokens.py) and webhooks
(integrations/webhooks.py sends them)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils import timezone


class PersonalAccessToken(models.Model):
    """A user's own credential for the API: a random secret shown once when it is made, kept
    only as its SHA-256 digest (the secret is 256 random bits, so a fast digest is enough and
    lets a request find its token by index). It acts as its user, narrowed to its `scopes`,
    until it expires or is revoked; `prefix` (the secret's first characters) lets a user tell
    their tokens apart without Warden keeping the secret."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="access_tokens"
    )
    name = models.CharField(max_length=100, help_text="What the token is for.")
    prefix = models.CharField(max_length=16)
    digest = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=list, help_text="The OAuth2 scopes the token carries.")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def active(self) -> bool:
        return self.revoked_at is None and self.expires_at > timezone.now()

    # The two names DRF's and our HasScope permission read on request.auth, as on DOT's tokens.
    @property
    def scope(self) -> str:
        return " ".join(self.scopes)

    def is_valid(self, scopes=None) -> bool:
        return self.active and set(scopes or ()) <= set(self.scopes)


class ApplicationScopes(models.Model):
    """The OAuth2 scopes an application may ask a token for: a governance admin's choice per
    application (none until chosen), so a client's token never carries more than its
    application was allowed, whatever it asks for."""

    application = models.OneToOneField(
        settings.OAUTH2_PROVIDER_APPLICATION_MODEL,
        on_delete=models.CASCADE,
        related_name="allowed_scopes",
    )
    scopes = models.JSONField(default=list, blank=True)

    class Meta:
        verbose_name = "allowed scopes"
        verbose_name_plural = "allowed scopes"

    def __str__(self) -> str:
        return ", ".join(self.scopes) or "no scopes"

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        known = settings.OAUTH2_PROVIDER["SCOPES"]
        if not isinstance(self.scopes, list) or not all(isinstance(s, str) for s in self.scopes):
            raise ValidationError({"scopes": "a list of scope names"})
        unknown = sorted(set(self.scopes) - set(known))
        if unknown:
            raise ValidationError({"scopes": f"unknown scopes: {', '.join(unknown)}"})


class MCPClientAccess(models.Model):
    """What an OAuth2 application's tokens may reach over MCP (integrations/mcp): only the tools
    and agents listed here, of those exposed over MCP that the token's account may use. An
    application without one reaches every exposed tool and agent its account may use; a
    personal access token is its person's own client, limited by the person's access alone."""

    application = models.OneToOneField(
        settings.OAUTH2_PROVIDER_APPLICATION_MODEL,
        on_delete=models.CASCADE,
        related_name="mcp_access",
    )
    tools = models.ManyToManyField("tools.Tool", blank=True, related_name="+")
    agents = models.ManyToManyField("agents.Agent", blank=True, related_name="+")

    class Meta:
        verbose_name = "MCP allowlist"
        verbose_name_plural = "MCP allowlists"

    def __str__(self) -> str:
        return f"MCP allowlist of {self.application}"


class MCPSession(models.Model):
    """An MCP client seen at /mcp: a handshake-era client's session (its Mcp-Session-Id), or,
    for a client of the sessionless protocol (2026-07-28), its credential and name. Open while
    seen within WARDEN_MCP_SESSION_IDLE_SECONDS and not closed (a client's DELETE)."""

    key = models.CharField(max_length=200, unique=True, help_text="The session id, or a digest.")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="mcp_sessions"
    )
    application = models.ForeignKey(
        settings.OAUTH2_PROVIDER_APPLICATION_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
        help_text="The OAuth2 application whose token it uses; empty for a personal token.",
    )
    personal_token = models.ForeignKey(
        PersonalAccessToken, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    client = models.CharField(max_length=200, blank=True, help_text="Its name and version.")
    protocol_version = models.CharField(max_length=20, blank=True)
    opened_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)
    calls = models.PositiveIntegerField(default=0)

    class Meta:
        verbose_name = "MCP session"
        indexes = [models.Index(fields=["-last_seen_at"], name="mcpsession_seen")]

    def __str__(self) -> str:
        return f"{self.client or 'an MCP client'} as {self.user}"

    @staticmethod
    def OPEN() -> models.Q:
        """Open now: not closed, and seen within the idle time."""
        idle = timedelta(seconds=settings.WARDEN_MCP_SESSION_IDLE_SECONDS)
        return models.Q(closed_at__isnull=True, last_seen_at__gte=timezone.now() - idle)

    @property
    def is_open(self) -> bool:
        idle = timedelta(seconds=settings.WARDEN_MCP_SESSION_IDLE_SECONDS)
        return self.closed_at is None and self.last_seen_at >= timezone.now() - idle


class WebhookEvent(models.TextChoices):
    """What a webhook can be told: a run of the application's account reached this state."""

    RUN_SUCCEEDED = "run.succeeded"
    RUN_FAILED = "run.failed"
    RUN_CANCELLED = "run.cancelled"
    RUN_REJECTED = "run.rejected"
    RUN_AWAITING_APPROVAL = "run.awaiting_approval"
    RUN_AWAITING_REVIEW = "run.awaiting_review"


def all_events() -> list[str]:
    return list(WebhookEvent.values)


class Webhook(models.Model):
    """An OAuth2 client application's endpoint for run events. The events it subscribes to
    are sent for the runs its application started, that is the runs whose actor is the
    application's account (a client-credentials token acts as that account). The signing
    secret is generated by Warden, stored encrypted (tools.secrets) and shown only once."""

    application = models.ForeignKey(
        settings.OAUTH2_PROVIDER_APPLICATION_MODEL,
        on_delete=models.CASCADE,
        related_name="webhooks",
    )
    url = models.URLField(
        "URL",
        max_length=2000,
        help_text="Where Warden POSTs the events: https (http only where "
        "WARDEN_WEBHOOK_ALLOW_HTTP allows it), on a public address.",
    )
    events = ArrayField(
        models.CharField(max_length=40, choices=WebhookEvent.choices),
        default=all_events,
        help_text="The events sent to this URL.",
    )
    active = models.BooleanField(default=True)
    description = models.CharField(max_length=200, blank=True)
    secret_ciphertext = models.TextField(editable=False)
    secret_set_at = models.DateTimeField(null=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["application__name", "url"]

    def __str__(self) -> str:
        return f"{self.application} → {self.url[:80]}"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookDelivery(models.Model):
    """One event for one webhook: written with the run's change of state, then attempted by
    `webhook_deliver_task` until the receiver answers 2xx, refuses for good, or the attempts
    run out. Its id is the `Warden-Delivery` header and the payload's `id`: a receiver that
    sees it twice has seen the same event twice. `body` holds the exact bytes sent each time."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=40, choices=WebhookEvent.choices)
    run = models.ForeignKey(
        "agents.Run", null=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False
    )
    body = models.TextField()
    status = models.CharField(
        max_length=20, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "webhook deliveries"
        indexes = [
            # The sweeper's question: pending deliveries whose next attempt is overdue.
            models.Index(
                fields=["next_attempt_at"],
                name="portal_delivery_due",
                condition=models.Q(status="pending"),
            ),
            models.Index(fields=["webhook", "-created_at"], name="portal_delivery_webhook"),
        ]

    def __str__(self) -> str:
        return f"{self.event} #{str(self.id)[:8]}"


class WebhookAttempt(models.Model):
    """One POST of a delivery: when, how long, and what came back (a status code or why none
    did). Never the response's body, never the signature."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="tries")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [
            models.UniqueConstraint(fields=["delivery", "number"], name="portal_attempt_once")
        ]

    def __str__(self) -> str:
        return f"attempt {self.number}"
