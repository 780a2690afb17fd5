"""Webhooks: configuring them (audited), signing and verifying their POSTs, recording an event
for each subscribed webhook with the run's change of state, and delivering it with retries.

Who is told: a run's events go to the active webhooks of the applications whose account is the
run's actor (a client-credentials token acts as its application's account, so those are the
runs the application started; two applications on one account both hear of them).

Delivery is at least once. The `WebhookDelivery` rows are written inside the transaction that
changes the run (agents.signals), and `webhook_deliver_task` is enqueued after it commits. Each
attempt first claims the row (`webhook_claim`: under the row's lock, the attempt's number and a
lease past its timeout) and commits that before the POST; its outcome is recorded fenced by the
number (`webhook_record`). So a redelivered or duplicated message never sends a delivery while
another attempt's lease holds, an attempt whose lease ran out cannot undo a later one, and a
delivery recorded as delivered is never sent again. But a worker that dies after the receiver
took the POST and before the outcome was recorded leaves the delivery pending, and a beat job
sends it again once the lease has run out (it also re-enqueues deliveries whose message was
lost: Redis flushed, a worker killed). Every attempt of one event carries the same delivery id,
in the `Warden-Delivery` header and as the signed body's `id`: receivers deduplicate by it.
2xx delivers; 408, 425, 429, 5xx, timeouts and connection errors are retried after 10 s, 20 s,
40 s... (settings WARDEN_WEBHOOK_*); any other answer (3xx included: redirects are not
followed) and an address that the SSRF rules refuse fail it at once.

Signature: ``Warden-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``;
`webhook_verify` checks it for receivers (and the tests). Each attempt is signed afresh (a new
`t`); the body, its `id` included, is the same bytes every time. The secret never reaches a
log, an audit event or an error message.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.db import transaction
from django.db.models import Subquery
from django.urls import reverse
from django.utils import timezone

from agents.models import Run
from audit.services import Target, audit_record
from integrations.models import (
    DeliveryStatus,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEvent,
)
from tools.outbound import AddressRefused, OutboundError, checked_address, guarded_client
from tools.secrets import SecretError, decrypt, encrypt, rotate, uses_newest_key

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "Warden-Signature"
EVENT_HEADER = "Warden-Event"
DELIVERY_HEADER = "Warden-Delivery"
SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix for secret scanners, not a secret
MIN_SECRET_LENGTH = 24
RETRIED_STATUSES = frozenset({408, 425, 429})
EARLY = timedelta(seconds=2)  # a countdown may fire a little before the stored time


class WebhookError(Exception):
    """A webhook cannot be saved as asked; the message is for the admin (never the secret)."""


class WebhookSignatureError(ValueError):
    """A webhook's signature header is malformed, stale (a replay) or does not match."""


# Configuration ------------------------------------------------------------------------------


def webhook_url_problem(url: str) -> str | None:
    """Why `url` cannot receive webhooks, or None. Host names are checked on every connection
    (tools.outbound); an address written in the URL is checked here already."""
    parts = urlsplit(url)
    allowed = ("http", "https") if settings.WARDEN_WEBHOOK_ALLOW_HTTP else ("https",)
    if parts.scheme not in allowed or not parts.hostname:
        return f"The URL must be an absolute {' or '.join(allowed)} URL."
    if parts.username is not None or parts.password is not None:
        return "The URL must not carry a user name or password: the signature authenticates."
    try:
        checked_address(parts.hostname, [parts.hostname])
    except AddressRefused as exc:
        return f"{exc}."
    except ValueError:
        pass  # a host name, not an address: checked when connecting
    return None


def webhook_application_problem(application: Any) -> str | None:
    if application.user_id is None:
        return (
            "The application has no user: its tokens act as that account, and a webhook hears "
            "of that account's runs. Set the application's user first."
        )
    return None


def _events(events: Iterable[str] | None) -> list[str]:
    chosen = list(WebhookEvent.values) if events is None else list(dict.fromkeys(events))
    unknown = [event for event in chosen if event not in WebhookEvent.values]
    if unknown or not chosen:
        raise WebhookError(
            f"Choose events among {', '.join(WebhookEvent.values)}"
            + (f" (unknown: {', '.join(unknown)})." if unknown else ".")
        )
    return chosen


def webhook_secret_problem(secret: str) -> str | None:
    if len(secret) < MIN_SECRET_LENGTH:
        return f"A signing secret has at least {MIN_SECRET_LENGTH} characters."
    return None


def _new_secret(secret: str | None) -> str:
    if secret is None:
        return SECRET_PREFIX + secrets.token_urlsafe(32)
    problem = webhook_secret_problem(secret)
    if problem:
        raise WebhookError(problem)
    return secret


def _described(webhook: Webhook) -> dict[str, Any]:
    """The webhook for its audit events: the URL without its query (which may hold a token)."""
    parts = urlsplit(webhook.url)
    return {
        "application": webhook.application_id,
        "url": f"{parts.scheme}://{parts.netloc}{parts.path}",
        "events": list(webhook.events),
        "active": webhook.active,
    }


def webhook_create(
    *,
    application: Any,
    url: str,
    actor: Any,
    events: Iterable[str] | None = None,
    active: bool = True,
    description: str = "",
    secret: str | None = None,
) -> tuple[Webhook, str]:
    """A new webhook for `application`, and its signing secret (generated unless given): the
    only time the secret is returned. Audited as ``webhook.created``."""
    problem = webhook_application_problem(application) or webhook_url_problem(url)
    if problem:
        raise WebhookError(problem)
    secret = _new_secret(secret)
    with transaction.atomic():
        webhook = Webhook.objects.create(
            application=application,
            url=url,
            events=_events(events),
            active=active,
            description=description,
            secret_ciphertext=encrypt(secret),
            secret_set_at=timezone.now(),
        )
        audit_record(
            actor=actor,
            action="webhook.created",
            target=Target.of(webhook),
            data=_described(webhook),
        )
    return webhook, secret


def webhook_update(
    *,
    webhook: Webhook,
    actor: Any,
    url: str | None = None,
    events: Iterable[str] | None = None,
    active: bool | None = None,
    description: str | None = None,
) -> Webhook:
    """Change what is given (None keeps it); audited as ``webhook.changed`` with the fields."""
    wanted: dict[str, Any] = {"url": url, "active": active, "description": description}
    if events is not None:
        wanted["events"] = _events(events)
    if url is not None:
        problem = webhook_url_problem(url)
        if problem:
            raise WebhookError(problem)
    with transaction.atomic():
        locked = Webhook.objects.select_for_update().get(pk=webhook.pk)
        changed = []
        for name, value in wanted.items():
            if value is not None and value != getattr(locked, name):
                setattr(locked, name, value)
                changed.append(name)
        if changed:
            locked.save(update_fields=[*changed, "updated_at"])
            audit_record(
                actor=actor,
                action="webhook.changed",
                target=Target.of(locked),
                data={**_described(locked), "fields": changed},
            )
    return locked


def webhook_secret_rotate(*, webhook: Webhook, actor: Any, secret: str | None = None) -> str:
    """Replace the signing secret (generated unless given) and return it, once; deliveries
    from now on are signed with it. Audited as ``webhook.secret_rotated`` (without it)."""
    secret = _new_secret(secret)
    with transaction.atomic():
        locked = Webhook.objects.select_for_update().get(pk=webhook.pk)
        locked.secret_ciphertext = encrypt(secret)
        locked.secret_set_at = timezone.now()
        locked.save(update_fields=["secret_ciphertext", "secret_set_at", "updated_at"])
        audit_record(
            actor=actor,
            action="webhook.secret_rotated",
            target=Target.of(locked),
            data=_described(locked),
        )
    return secret


def webhook_secret_reencrypt(*, webhook_id: int, actor: Any) -> bool:
    """Re-encrypt one webhook's secret under the newest WARDEN_ENCRYPTION_KEY (the secret
    itself unchanged); False when it already was. Audited as ``webhook.secret_reencrypted``.
    Raises SecretError when no configured key reads it."""
    with transaction.atomic():
        webhook = Webhook.objects.select_for_update().get(pk=webhook_id)
        if uses_newest_key(webhook.secret_ciphertext):
            return False
        label = f"webhook {webhook.pk}'s secret"
        webhook.secret_ciphertext = rotate(webhook.secret_ciphertext, label=label)
        webhook.save(update_fields=["secret_ciphertext"])
        audit_record(
            actor=actor,
            action="webhook.secret_reencrypted",
            target=Target.of(webhook),
            data=_described(webhook),
        )
    return True


def webhook_delete(*, webhook: Webhook, actor: Any) -> None:
    """Delete the webhook and its delivery log; audited as ``webhook.deleted``."""
    with transaction.atomic():
        target, data = Target.of(webhook), _described(webhook)
        webhook.delete()
        audit_record(actor=actor, action="webhook.deleted", target=target, data=data)


# Signatures ---------------------------------------------------------------------------------


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    signed = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def webhook_sign(*, secret: str, body: bytes, timestamp: int) -> str:
    """The Warden-Signature header's value for `body` sent at `timestamp` (unix seconds)."""
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def webhook_verify(
    *,
    secret: str,
    header: str,
    body: bytes | str,
    tolerance: int = 300,
    now: float | None = None,
) -> int:
    """Check a received Warden-Signature header against the raw body; returns its timestamp.

    Raises WebhookSignatureError when the header is malformed, its timestamp is more than
    `tolerance` seconds from `now` (a replayed or very late message), or no v1 signature
    matches (compared in constant time). Several v1 entries are allowed; one must match."""
    if isinstance(body, str):
        body = body.encode()
    timestamp: int | None = None
    signatures: list[str] = []
    for item in (header or "").split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise WebhookSignatureError("malformed signature header: expected t=...,v1=...")
        if key == "t":
            if not (value.isascii() and value.isdigit()) or timestamp is not None:
                raise WebhookSignatureError("malformed signature header: bad timestamp")
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        raise WebhookSignatureError("malformed signature header: t= and v1= are required")
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance:
        raise WebhookSignatureError(
            f"the signature's timestamp is more than {tolerance} s away: refused as a replay"
        )
    expected = _digest(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, signature) for signature in signatures):
        raise WebhookSignatureError("the signature does not match the body")
    return timestamp


# Events -------------------------------------------------------------------------------------


def webhook_run_state_changed(run_id: int, state: str, **signal: Any) -> None:
    """agents.signals.run_state_changed: record the event for every active webhook subscribed
    to it of the application that started the run, in the caller's transaction; enqueue their
    delivery once it commits. A run the browser or a personal token started is no
    application's business (and costs no query when the sender said so)."""
    event = f"run.{state}"
    if event not in WebhookEvent.values:
        return
    if "application_id" in signal and signal["application_id"] is None:
        return
    run = Run.objects.filter(pk=run_id)
    # One query: the run's application's active webhooks for the event, each with the agent.
    webhooks = list(
        Webhook.objects.filter(
            application_id=Subquery(run.values("client_application_id")),
            active=True,
            events__contains=[event],
        )
        .annotate(agent_slug=Subquery(run.values("agent__slug")))
        .only("pk")
    )
    if not webhooks:
        return
    agent = webhooks[0].agent_slug
    now = timezone.now()
    deliveries = []
    for webhook in webhooks:
        delivery = WebhookDelivery(webhook=webhook, event=event, run_id=run_id, next_attempt_at=now)
        delivery.body = _body(delivery, now=now, run={"id": run_id, "agent": agent})
        deliveries.append(delivery)
    WebhookDelivery.objects.bulk_create(deliveries)
    for delivery in deliveries:
        transaction.on_commit(functools.partial(_enqueue, str(delivery.pk)))


def _body(delivery: WebhookDelivery, *, now: datetime, run: dict) -> str:
    state = delivery.event.removeprefix("run.")
    payload = {
        "id": str(delivery.pk),
        "type": delivery.event,
        "created": now.isoformat(timespec="milliseconds"),
        "data": {
            "run": {**run, "state": state, "url": reverse("api-run", args=[run["id"]])},
        },
    }
    return json.dumps(payload, separators=(",", ":"))


def _enqueue(delivery_id: str, countdown: int | None = None) -> None:
    from integrations.tasks import webhook_deliver_task

    webhook_deliver_task.apply_async((delivery_id,), countdown=countdown)


# Delivery -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempted:
    """What `webhook_deliver` did: the delivery's status after it, and when to try again."""

    status: str
    retry_in: int | None = None


NOT_DUE = Attempted("not due")
SUPERSEDED = Attempted("superseded")  # a later attempt (or a 2xx) decides the delivery


def webhook_backoff(attempt: int) -> int:
    """Seconds to wait after failed attempt number `attempt` (1-based): doubling, capped."""
    base = settings.WARDEN_WEBHOOK_BACKOFF_SECONDS
    return min(base * 2 ** (attempt - 1), settings.WARDEN_WEBHOOK_BACKOFF_MAX_SECONDS)


def webhook_deliver(*, delivery_id: str) -> Attempted:
    """Make the delivery's next attempt if it is due and still pending, and record it.

    At least once: the claim is committed before the POST, so a worker that dies after the
    receiver got the event but before the outcome is recorded leaves the delivery pending,
    and the sweeper sends it again, with the same id, once the claim's lease has run out."""
    attempt = webhook_claim(delivery_id=delivery_id)
    if attempt is None:
        return NOT_DUE
    delivery = WebhookDelivery.objects.select_related("webhook").get(pk=delivery_id)
    started, began = timezone.now(), time.monotonic()
    code, error, retry_after, final = _post(
        delivery, timeout=settings.WARDEN_WEBHOOK_TIMEOUT_SECONDS
    )
    return webhook_record(
        delivery_id=delivery_id,
        attempt=attempt,
        started=started,
        duration_ms=int((time.monotonic() - began) * 1000),
        code=code,
        error=error,
        retry_after=retry_after,
        final=final,
    )


def webhook_claim(*, delivery_id: str) -> int | None:
    """Take the delivery's next attempt if it is due and pending: its number, or None.

    The claim moves `next_attempt_at` past the attempt's timeout (a lease: the sweeper leaves
    the delivery alone meanwhile) and counts the attempt, under the row's lock, so two
    messages for one delivery never both attempt it while the lease holds. A lease can still
    run out under a slow attempt; `webhook_record` is fenced by the number for that."""
    now = timezone.now()
    lease = timedelta(seconds=settings.WARDEN_WEBHOOK_TIMEOUT_SECONDS + 60)
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update()
            .filter(pk=delivery_id, status=DeliveryStatus.PENDING, next_attempt_at__lte=now + EARLY)
            .only("pk", "attempts")
            .first()
        )
        if delivery is None:
            return None
        delivery.attempts += 1
        delivery.next_attempt_at = now + lease
        delivery.save(update_fields=["attempts", "next_attempt_at"])
    return delivery.attempts


def webhook_record(
    *,
    delivery_id: str,
    attempt: int,
    started: datetime,
    duration_ms: int,
    code: int | None,
    error: str,
    retry_after: int | None = None,
    final: bool = False,
) -> Attempted:
    """Record attempt number `attempt` and what it means for the delivery, fenced.

    Every attempt is logged. A 2xx delivers the delivery if it is still pending, whichever
    attempt it answers (the receiver has the event). Anything else decides (retry or fail)
    only for the latest claim: an older attempt whose lease ran out while another took over
    is logged and changes nothing, so two senders never leave the delivery inconsistent."""
    succeeded = code is not None and 200 <= code < 300
    with transaction.atomic():
        delivery = WebhookDelivery.objects.select_for_update().get(pk=delivery_id)
        WebhookAttempt.objects.create(
            delivery=delivery,
            number=attempt,
            started_at=started,
            duration_ms=duration_ms,
            status_code=code,
            error=error,
        )
        pending = delivery.status == DeliveryStatus.PENDING
        decides = pending and (succeeded or delivery.attempts == attempt)
        if decides:
            if succeeded:
                status, retry_in = DeliveryStatus.DELIVERED, None
            elif final or attempt >= settings.WARDEN_WEBHOOK_MAX_ATTEMPTS:
                status, retry_in = DeliveryStatus.FAILED, None
            else:
                status = DeliveryStatus.PENDING
                retry_in = max(webhook_backoff(attempt), min(retry_after or 0, _cap()))
            delivery.status, delivery.last_status_code, delivery.last_error = status, code, error
            delivery.next_attempt_at = None
            if retry_in is not None:
                delivery.next_attempt_at = timezone.now() + timedelta(seconds=retry_in)
            fields = ["status", "last_status_code", "last_error", "next_attempt_at"]
            if succeeded:
                delivery.delivered_at = timezone.now()
                fields.append("delivered_at")
            delivery.save(update_fields=fields)
    outcome = f"HTTP {code}" if code is not None else error
    if not decides:
        logger.info(
            "webhook delivery %s (%s, webhook %s) attempt %d: %s; superseded (%s after %d)",
            delivery.pk,
            delivery.event,
            delivery.webhook_id,
            attempt,
            outcome,
            delivery.status,
            delivery.attempts,
        )
        return SUPERSEDED
    log = logger.warning if status == DeliveryStatus.FAILED else logger.info
    log(
        "webhook delivery %s (%s, webhook %s) attempt %d: %s; %s",
        delivery.pk,
        delivery.event,
        delivery.webhook_id,
        attempt,
        outcome,
        f"retry in {retry_in} s" if retry_in is not None else status,
    )
    return Attempted(str(status), retry_in)


def _cap() -> int:
    return settings.WARDEN_WEBHOOK_BACKOFF_MAX_SECONDS


def _post(delivery: WebhookDelivery, *, timeout: int) -> tuple[int | None, str, int | None, bool]:
    """POST the delivery: (status code, error, Retry-After seconds, whether the failure is
    final). Never raises for what the receiver or the network does."""
    webhook = delivery.webhook
    if not webhook.active:
        return None, "the webhook was deactivated before the attempt", None, True
    try:
        secret = decrypt(webhook.secret_ciphertext, label=f"webhook {webhook.pk}'s secret")
    except SecretError as exc:
        return None, str(exc), None, True
    body = delivery.body.encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Warden-Webhooks/1",
        EVENT_HEADER: delivery.event,
        DELIVERY_HEADER: str(delivery.pk),
        SIGNATURE_HEADER: webhook_sign(secret=secret, body=body, timestamp=int(time.time())),
    }
    problem = webhook_url_problem(webhook.url)
    if problem:  # the rules changed since the URL was saved (https only now, say)
        return None, problem, None, True
    try:
        with (
            guarded_client(timeout=timeout) as client,
            client.stream("POST", webhook.url, content=body, headers=headers) as response,
        ):
            code = response.status_code
            retry_after = response.headers.get("retry-after", "")
    except AddressRefused as exc:
        return None, str(exc), None, True
    except OutboundError as exc:  # the name does not resolve (yet, or any more)
        return None, str(exc), None, False
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {str(exc)[:300] or 'no answer'}", None, False
    if 200 <= code < 300:
        return code, "", None, False
    if code in RETRIED_STATUSES or code >= 500:
        wait = int(retry_after) if retry_after.isascii() and retry_after.isdigit() else None
        return code, f"HTTP {code}", wait, False
    if 300 <= code < 400:
        return (
            code,
            f"HTTP {code}: redirects are not followed; update the webhook's URL",
            None,
            True,
        )
    return code, f"HTTP {code}: refused by the receiver, not retried", None, True


def webhook_deliveries_overdue(*, grace: int = 60, limit: int = 500) -> list[str]:
    """Pending deliveries whose attempt is overdue by more than `grace` seconds: their task's
    message was lost (Redis flushed), or a worker died mid-attempt (its claim's lease ran out;
    the receiver may have the event already: it is sent again with the same id). Enqueueing
    one twice is harmless: the claim lets one attempt through."""
    cutoff = timezone.now() - timedelta(seconds=grace)
    return [
        str(pk)
        for pk in WebhookDelivery.objects.filter(
            status=DeliveryStatus.PENDING, next_attempt_at__lt=cutoff
        ).values_list("pk", flat=True)[:limit]
    ]
