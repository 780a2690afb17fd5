"""Webhooks per OAuth2 application: a run's change of state is recorded for each subscribed
webhook with the change itself, POSTed with an HMAC signature to a real HTTP receiver on
loopback, retried with backoff, refused where the SSRF rules say so; the secret is encrypted at
rest and never logged."""

import json
import logging
import re
import signal
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import connection, transaction
from django.utils import timezone
from oauth2_provider.models import Application

from agents.models import Conversation, Run, RunState
from agents.orchestrator import run_execute
from agents.services import run_acquire_lease, run_cancel, run_finish, run_park, run_start
from audit.models import AuditEvent
from audit.services import SYSTEM
from governance.models import Action
from governance.services import access_grant
from integrations.models import DeliveryStatus, Webhook, WebhookAttempt, WebhookDelivery
from integrations.tasks import webhook_deliver_task
from integrations.webhooks import (
    WebhookError,
    WebhookSignatureError,
    webhook_claim,
    webhook_create,
    webhook_deliver,
    webhook_record,
    webhook_secret_rotate,
    webhook_sign,
    webhook_verify,
)
from tests.model_server import Reply
from tools.secrets import decrypt
from tools.tests.endpoint import Answer, Endpoint

pytestmark = pytest.mark.django_db
LOOPBACK = ["127.0.0.1/32"]


@pytest.fixture
def other_application(people):
    return Application.objects.create(
        name="ERP",
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
        user=people.member,
        client_secret="another-s3cret-for-tests",
    )


@pytest.fixture
def receiver():
    """A real HTTP server on loopback that records every POST and answers as scripted."""
    endpoint = Endpoint()
    endpoint.answer("/hook", Answer(204, b""))
    yield endpoint
    endpoint.close()


@pytest.fixture
def loopback_allowed(settings):
    settings.WARDEN_OUTBOUND_ALLOW_NETWORKS = LOOPBACK
    return settings


def a_run(agent, actor, client=None) -> tuple[Run, int]:
    """A run of `agent` by `actor` (through the application `client`, if one), leased as a
    worker leases it: (run, fencing token)."""
    conversation = Conversation.objects.create(owner=actor, agent=agent)
    run = Run.objects.create(
        agent=agent,
        conversation=conversation,
        actor=actor,
        input="hi",
        client_application_id=client.pk if client else None,
    )
    token = run_acquire_lease(run_id=run.pk, holder="test")
    assert token is not None
    return run, token


def hooked(application, url, **kwargs) -> tuple[Webhook, str]:
    return webhook_create(application=application, url=url, actor=SYSTEM, **kwargs)


def deliveries(run) -> list[tuple[int, str]]:
    return list(
        WebhookDelivery.objects.filter(run_id=run.pk)
        .order_by("webhook_id", "event")
        .values_list("webhook_id", "event")
    )


def let_backoff_pass(delivery) -> None:
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at="2000-01-01T00:00Z")


# Signatures -------------------------------------------------------------------------------

BODY = b'{"id":"d1","type":"run.succeeded"}'


def test_a_signature_verifies_with_the_secret_and_returns_its_timestamp():
    header = webhook_sign(secret="k" * 32, body=BODY, timestamp=1_700_000_000)

    assert header.startswith("t=1700000000,v1=")
    assert len(header.split("v1=")[1]) == 64
    verified = webhook_verify(secret="k" * 32, header=header, body=BODY, now=1_700_000_100)
    assert verified == 1_700_000_000


@pytest.mark.parametrize(
    ("secret", "body", "now", "problem"),
    [
        ("x" * 32, BODY, 1_700_000_000, "does not match"),
        ("k" * 32, BODY.replace(b"succeeded", b"failed"), 1_700_000_000, "does not match"),
        ("k" * 32, BODY, 1_700_000_301, "replay"),  # too old
        ("k" * 32, BODY, 1_699_999_699, "replay"),  # from the future
    ],
    ids=["wrong secret", "modified body", "old timestamp", "future timestamp"],
)
def test_a_signature_is_refused_with_a_wrong_secret_a_changed_body_or_outside_the_window(
    secret, body, now, problem
):
    header = webhook_sign(secret="k" * 32, body=BODY, timestamp=1_700_000_000)

    with pytest.raises(WebhookSignatureError, match=problem):
        webhook_verify(secret=secret, header=header, body=body, now=now)


@pytest.mark.parametrize(
    "header",
    ["", "garbage", "t=abc,v1=00", "v1=00", "t=1700000000", "t=1,t=2,v1=00", "t=-5,v1=00"],
)
def test_a_malformed_signature_header_is_refused_clearly(header):
    with pytest.raises(WebhookSignatureError, match="malformed signature header"):
        webhook_verify(secret="k" * 32, header=header, body=BODY, now=1_700_000_000)


def test_one_matching_signature_among_several_is_enough():
    good = webhook_sign(secret="k" * 32, body=BODY, timestamp=1_700_000_000).split(",")[1]
    header = f"t=1700000000,v1={'0' * 64},{good}"

    assert webhook_verify(secret="k" * 32, header=header, body=BODY, now=1_700_000_000)


# Configuration ----------------------------------------------------------------------------


def test_a_new_webhook_gets_a_generated_secret_stored_encrypted_and_audited(application):
    webhook, secret = hooked(application, "https://hooks.example.com/warden?token=abc")

    assert secret.startswith("whsec_")
    assert len(secret) >= 40
    with connection.cursor() as cursor:
        cursor.execute("SELECT secret_ciphertext FROM portal_webhook WHERE id = %s", [webhook.pk])
        (stored,) = cursor.fetchone()
    assert secret not in stored
    assert decrypt(stored) == secret
    event = AuditEvent.objects.get(action="webhook.created", target_id=str(webhook.pk))
    assert json.loads(event.data) == {
        "application": application.pk,
        "url": "https://hooks.example.com/warden",  # the query may hold a token: left out
        "events": [
            "run.succeeded",
            "run.failed",
            "run.cancelled",
            "run.rejected",
            "run.awaiting_approval",
            "run.awaiting_review",
        ],
        "active": True,
    }
    assert secret not in "".join(AuditEvent.objects.values_list("data", flat=True))


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://hooks.example.com/x", "absolute https URL"),
        ("http://hooks.example.com/x", "absolute https URL"),
        ("https://user:pw@hooks.example.com/x", "user name or password"),
        ("https://169.254.169.254/latest/meta-data", "private or reserved"),
        ("https://10.0.0.7/hook", "private or reserved"),
        ("https://[::1]/hook", "private or reserved"),
    ],
)
def test_a_webhook_url_must_be_public_https_in_production(settings, application, url, problem):
    settings.WARDEN_WEBHOOK_ALLOW_HTTP = False

    with pytest.raises(WebhookError, match=problem):
        hooked(application, url)

    assert not Webhook.objects.exists()
    assert not AuditEvent.objects.filter(action="webhook.created").exists()


def test_plain_http_is_allowed_only_where_the_setting_allows_it(settings, application):
    settings.WARDEN_WEBHOOK_ALLOW_HTTP = True

    webhook, _ = hooked(application, "http://hooks.example.com/x")

    assert webhook.url == "http://hooks.example.com/x"


def test_a_chosen_secret_must_be_long_enough(application):
    with pytest.raises(WebhookError, match="at least 24 characters"):
        hooked(application, "https://hooks.example.com/x", secret="short")

    assert not Webhook.objects.exists()


# Events -----------------------------------------------------------------------------------


def test_each_state_records_exactly_one_delivery_per_subscribed_webhook(
    application, other_application, governed, people
):
    every, _ = hooked(application, "https://a.example.com/hook")
    failures, _ = hooked(application, "https://b.example.com/hook", events=["run.failed"])
    hooked(application, "https://c.example.com/hook", active=False)
    hooked(other_application, "https://d.example.com/hook")  # another account's application

    succeeded, token = a_run(governed.agent, people.integration, application)
    run_finish(run_id=succeeded.pk, token=token, state=RunState.SUCCEEDED, answer="42")
    failed, token = a_run(governed.agent, people.integration, application)
    run_finish(run_id=failed.pk, token=token, state=RunState.FAILED, error="boom")
    waiting, token = a_run(governed.agent, people.integration, application)
    with transaction.atomic():
        run_park(run_id=waiting.pk, token=token, state=RunState.AWAITING_APPROVAL)
    queued, _ = a_run(governed.agent, people.integration, application)
    Run.objects.filter(pk=queued.pk).update(state=RunState.QUEUED, lease_holder="")
    run_cancel(run=queued, actor=people.integration)

    assert deliveries(succeeded) == [(every.pk, "run.succeeded")]
    assert deliveries(failed) == [(every.pk, "run.failed"), (failures.pk, "run.failed")]
    assert deliveries(waiting) == [(every.pk, "run.awaiting_approval")]
    assert deliveries(queued) == [(every.pk, "run.cancelled")]
    assert WebhookDelivery.objects.count() == 5


@pytest.mark.parametrize(("release", "event"), [(True, "run.succeeded"), (False, "run.rejected")])
def test_a_reviewers_decision_on_a_held_answer_is_an_event(
    application, governed, people, release, event
):
    from governance.approvals import escalation_create, escalation_decide

    webhook, _ = hooked(application, "https://a.example.com/hook")
    run, token = a_run(governed.agent, people.integration, application)
    with transaction.atomic():
        escalation = escalation_create(
            run=run, answer="maybe", citations=[], confidence=0.2, threshold=0.5, agent=run.agent
        )
        run_park(run_id=run.pk, token=token, state=RunState.AWAITING_REVIEW)

    escalation_decide(escalation_id=escalation.pk, decided_by=people.admin, release=release)

    assert Run.objects.get(pk=run.pk).state == event.removeprefix("run.")
    assert list(
        WebhookDelivery.objects.filter(run_id=run.pk)
        .order_by("created_at")
        .values_list("webhook_id", "event")
    ) == [(webhook.pk, "run.awaiting_review"), (webhook.pk, event)]


def test_the_payload_names_the_run_not_its_content(application, governed, people):
    hooked(application, "https://a.example.com/hook")
    run, token = a_run(governed.agent, people.integration, application)

    run_finish(run_id=run.pk, token=token, state=RunState.SUCCEEDED, answer="the secret plan")

    delivery = WebhookDelivery.objects.get(run_id=run.pk)
    payload = json.loads(delivery.body)
    assert payload == {
        "id": str(delivery.pk),
        "type": "run.succeeded",
        "created": payload["created"],
        "data": {
            "run": {
                "id": run.pk,
                "agent": governed.agent.slug,
                "state": "succeeded",
                "url": f"/api/v1/runs/{run.pk}",
            }
        },
    }
    assert payload["created"].startswith(delivery.created_at.strftime("%Y-%m-%dT%H:%M"))
    assert delivery.status == DeliveryStatus.PENDING
    assert delivery.attempts == 0


def test_runs_of_other_accounts_record_nothing(application, governed, people):
    hooked(application, "https://a.example.com/hook")
    run, token = a_run(governed.agent, people.member)

    run_finish(run_id=run.pk, token=token, state=RunState.SUCCEEDED)

    assert deliveries(run) == []


def test_runs_the_application_did_not_start_record_nothing(application, governed, people):
    # The same account in the browser (or by a personal token), and a second application of it.
    from integrations.tests.conftest import application_for

    hooked(application, "https://a.example.com/hook")
    other = application_for(people.integration, "ERP")
    by_hand, token = a_run(governed.agent, people.integration)
    run_finish(run_id=by_hand.pk, token=token, state=RunState.SUCCEEDED)
    by_other, token = a_run(governed.agent, people.integration, other)
    run_finish(run_id=by_other.pk, token=token, state=RunState.SUCCEEDED)

    assert deliveries(by_hand) == []
    assert deliveries(by_other) == []


def test_a_rolled_back_change_records_and_enqueues_nothing(
    application, governed, people, django_capture_on_commit_callbacks
):
    hooked(application, "https://a.example.com/hook")
    run, token = a_run(governed.agent, people.integration, application)

    with (
        django_capture_on_commit_callbacks() as callbacks,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        run_park(run_id=run.pk, token=token, state=RunState.AWAITING_APPROVAL)
        raise RuntimeError("the step's transaction failed")

    assert deliveries(run) == []
    assert callbacks == []
    assert Run.objects.get(pk=run.pk).state == RunState.RUNNING


def test_the_delivery_is_enqueued_only_once_the_change_commits(
    application, governed, people, django_capture_on_commit_callbacks
):
    hooked(application, "https://a.example.com/hook")
    run, token = a_run(governed.agent, people.integration, application)

    with django_capture_on_commit_callbacks() as callbacks:
        run_finish(run_id=run.pk, token=token, state=RunState.FAILED, error="boom")

    # run_finish's own callback counts the finished run (telemetry.metrics); the webhook's
    # one enqueues its delivery.
    assert len(callbacks) == 2
    assert deliveries(run) == [(Webhook.objects.get().pk, "run.failed")]


def test_a_real_run_that_asks_for_approval_notifies_the_application(
    server, help_desk, application, people
):
    webhook, _ = hooked(application, "https://a.example.com/hook", events=["run.awaiting_approval"])
    route = help_desk.route
    for obj in (help_desk, route, help_desk.tools.get()):
        access_grant(obj=obj, holder=people.integration, action=Action.USE, actor=SYSTEM)

    server.script("primary", Reply.call("create_ticket", {"title": "VPN down"}))
    conversation = Conversation.objects.create(owner=people.integration, agent=help_desk)
    run = run_start(
        agent=help_desk,
        conversation=conversation,
        actor=people.integration,
        input="open a ticket",
        client_application_id=application.pk,  # as the API sets it for a token's request
    )
    run_execute(run_id=run.pk, holder="test")
    run.refresh_from_db()

    assert run.state == RunState.AWAITING_APPROVAL
    assert deliveries(run) == [(webhook.pk, "run.awaiting_approval")]


@pytest.fixture
def broken_receiver_first():
    """A receiver of run_state_changed that fails in the database, connected before the
    webhooks' one (agents.signals)."""
    from agents.signals import on_run_state, run_state_changed
    from integrations.webhooks import webhook_run_state_changed

    def broken(**kwargs):
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 / 0")  # a bug: the transaction would be aborted

    run_state_changed.disconnect(sender=Run, dispatch_uid="integrations.webhooks")
    on_run_state(broken, dispatch_uid="test.broken")
    on_run_state(webhook_run_state_changed, dispatch_uid="integrations.webhooks")
    yield
    run_state_changed.disconnect(sender=Run, dispatch_uid="test.broken")


def test_a_failing_receiver_does_not_stop_the_run(
    broken_receiver_first, application, governed, people
):
    hooked(application, "https://a.example.com/hook")
    run, token = a_run(governed.agent, people.integration, application)

    run_finish(run_id=run.pk, token=token, state=RunState.SUCCEEDED)

    assert Run.objects.get(pk=run.pk).state == RunState.SUCCEEDED
    assert len(deliveries(run)) == 1  # the next receiver still ran, in a sound transaction


# Delivery ---------------------------------------------------------------------------------


def one_delivery(application, governed, people, url, **kwargs):
    _, secret = hooked(application, url, **kwargs)
    run, token = a_run(governed.agent, people.integration, application)
    run_finish(run_id=run.pk, token=token, state=RunState.SUCCEEDED)
    return WebhookDelivery.objects.get(run_id=run.pk), secret


def attempts(delivery) -> list[tuple[int, int | None]]:
    return list(
        WebhookAttempt.objects.filter(delivery=delivery)
        .order_by("number")
        .values_list("number", "status_code")
    )


def test_a_delivery_is_a_signed_post_the_receiver_verifies(
    loopback_allowed, receiver, application, governed, people
):
    delivery, secret = one_delivery(application, governed, people, receiver.url("/hook"))

    attempted = webhook_deliver(delivery_id=str(delivery.pk))

    assert (attempted.status, attempted.retry_in) == ("delivered", None)
    [request] = receiver.requests
    assert request.method == "POST"
    assert request.body == delivery.body.encode()
    assert request.headers["content-type"] == "application/json"
    assert request.headers["warden-event"] == "run.succeeded"
    assert request.headers["warden-delivery"] == str(delivery.pk)
    stamp = webhook_verify(
        secret=secret, header=request.headers["warden-signature"], body=request.body
    )
    assert abs(stamp - time.time()) < 10
    with pytest.raises(WebhookSignatureError):
        webhook_verify(
            secret="whsec_" + "0" * 43,
            header=request.headers["warden-signature"],
            body=request.body,
        )
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 204)
    assert delivery.delivered_at is not None
    assert delivery.next_attempt_at is None
    assert attempts(delivery) == [(1, 204)]


def test_failures_are_retried_with_exponential_backoff_until_one_succeeds(
    loopback_allowed, receiver, application, governed, people
):
    receiver.answer("/hook", Answer(500), Answer(503), Answer(502), Answer(200))
    delivery, _ = one_delivery(application, governed, people, receiver.url("/hook"))

    outcomes = []
    for _ in range(4):
        attempted = webhook_deliver(delivery_id=str(delivery.pk))
        outcomes.append((attempted.status, attempted.retry_in))
        assert webhook_deliver(delivery_id=str(delivery.pk)).status == "not due"  # backoff
        let_backoff_pass(delivery)

    assert outcomes == [("pending", 10), ("pending", 20), ("pending", 40), ("delivered", None)]
    assert attempts(delivery) == [(1, 500), (2, 503), (3, 502), (4, 200)]
    assert len(receiver.requests) == 4
    assert {r.headers["warden-delivery"] for r in receiver.requests} == {str(delivery.pk)}
    assert {r.body for r in receiver.requests} == {delivery.body.encode()}
    # Delivered: never sent again, whatever message arrives.
    assert webhook_deliver(delivery_id=str(delivery.pk)).status == "not due"
    assert len(receiver.requests) == 4


def test_the_task_schedules_the_next_attempt_after_the_backoff(
    monkeypatch, loopback_allowed, receiver, application, governed, people
):
    receiver.answer("/hook", Answer(500))
    delivery, _ = one_delivery(application, governed, people, receiver.url("/hook"))
    scheduled = []
    monkeypatch.setattr(
        webhook_deliver_task,
        "apply_async",
        lambda args, countdown: scheduled.append((args, countdown)),
    )

    assert webhook_deliver_task(str(delivery.pk)) == "pending"

    assert scheduled == [((str(delivery.pk),), 10)]


def test_a_delivery_gives_up_after_the_configured_attempts(
    loopback_allowed, receiver, application, governed, people
):
    loopback_allowed.WARDEN_WEBHOOK_MAX_ATTEMPTS = 3
    receiver.answer("/hook", Answer(500))
    delivery, _ = one_delivery(application, governed, people, receiver.url("/hook"))

    outcomes = []
    for _ in range(4):
        outcomes.append(webhook_deliver(delivery_id=str(delivery.pk)).status)
        let_backoff_pass(delivery)

    assert outcomes == ["pending", "pending", "failed", "not due"]
    assert len(receiver.requests) == 3
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("failed", 3, "HTTP 500")


@pytest.mark.parametrize(
    ("answer", "status", "retry_in", "error"),
    [
        (Answer(400), "failed", None, "HTTP 400: refused by the receiver, not retried"),
        (Answer(410), "failed", None, "HTTP 410: refused by the receiver, not retried"),
        (
            Answer(301, b"", {"Location": "https://elsewhere.example.com/"}),
            "failed",
            None,
            "HTTP 301: redirects are not followed; update the webhook's URL",
        ),
        (Answer(408), "pending", 10, "HTTP 408"),
        (Answer(429, b"", {"Retry-After": "120"}), "pending", 120, "HTTP 429"),
        (Answer(503, b"", {"Retry-After": "999999"}), "pending", 3600, "HTTP 503"),
    ],
    ids=["400", "410", "301", "408", "429 Retry-After", "503 capped Retry-After"],
)
def test_which_answers_are_retried(
    loopback_allowed, receiver, application, governed, people, answer, status, retry_in, error
):
    receiver.answer("/hook", answer)
    delivery, _ = one_delivery(application, governed, people, receiver.url("/hook"))

    attempted = webhook_deliver(delivery_id=str(delivery.pk))

    assert (attempted.status, attempted.retry_in) == (status, retry_in)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.last_status_code, delivery.last_error) == (
        status,
        answer.status,
        error,
    )
    assert len(receiver.requests) == 1


def test_a_receiver_that_is_down_is_retried(
    loopback_allowed, unused_tcp_port, application, governed, people
):
    url = f"http://127.0.0.1:{unused_tcp_port}/hook"
    delivery, _ = one_delivery(application, governed, people, url)

    attempted = webhook_deliver(delivery_id=str(delivery.pk))

    assert (attempted.status, attempted.retry_in) == ("pending", 10)
    delivery.refresh_from_db()
    assert delivery.last_status_code is None
    assert delivery.last_error.startswith("ConnectError: ")


def test_an_inactive_webhook_is_not_sent_what_it_had_queued(
    loopback_allowed, receiver, application, governed, people
):
    delivery, _ = one_delivery(application, governed, people, receiver.url("/hook"))
    Webhook.objects.update(active=False)

    attempted = webhook_deliver(delivery_id=str(delivery.pk))

    assert attempted.status == "failed"
    assert receiver.requests == []


# SSRF -------------------------------------------------------------------------------------


def test_without_the_allowance_a_loopback_receiver_is_refused_and_logged_as_failed(
    receiver, application, governed, people, caplog
):
    url = f"http://localhost:{receiver.port}/hook"  # a name: checked when connecting
    delivery, _ = one_delivery(application, governed, people, url)

    with caplog.at_level(logging.INFO, logger="integrations.webhooks"):
        attempted = webhook_deliver(delivery_id=str(delivery.pk))

    assert (attempted.status, attempted.retry_in) == ("failed", None)
    assert receiver.requests == []
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.last_status_code is None
    assert re.search(r"private or reserved network \((127.0.0.1|::1)\)", delivery.last_error)
    assert attempts(delivery) == [(1, None)]
    assert f"webhook delivery {delivery.pk}" in caplog.text
    assert "private or reserved" in caplog.text


def test_the_metadata_address_is_refused_even_if_it_was_allowed_when_saved(
    settings, application, governed, people
):
    settings.WARDEN_OUTBOUND_ALLOW_NETWORKS = ["169.254.0.0/16"]
    delivery, _ = one_delivery(
        application, governed, people, "http://169.254.169.254/latest/meta-data"
    )
    settings.WARDEN_OUTBOUND_ALLOW_NETWORKS = []

    attempted = webhook_deliver(delivery_id=str(delivery.pk))

    assert attempted.status == "failed"
    delivery.refresh_from_db()
    assert "private or reserved" in delivery.last_error


# Secrets ----------------------------------------------------------------------------------


def test_the_secret_is_never_logged(
    loopback_allowed, receiver, application, governed, people, caplog
):
    receiver.answer("/hook", Answer(500), Answer(200))
    with caplog.at_level(logging.DEBUG):
        delivery, secret = one_delivery(application, governed, people, receiver.url("/hook"))
        webhook_deliver(delivery_id=str(delivery.pk))
        let_backoff_pass(delivery)
        webhook_deliver(delivery_id=str(delivery.pk))
        rotated = webhook_secret_rotate(webhook=delivery.webhook, actor=SYSTEM)

    assert "webhook delivery" in caplog.text  # the attempts were logged
    for value in (secret, rotated):
        assert value not in caplog.text
    signature = receiver.requests[-1].headers["warden-signature"]
    assert signature.split("v1=")[1] not in caplog.text


def test_a_rotated_secret_signs_the_next_attempts(
    loopback_allowed, receiver, application, governed, people
):
    receiver.answer("/hook", Answer(500), Answer(200))
    delivery, old = one_delivery(application, governed, people, receiver.url("/hook"))
    webhook_deliver(delivery_id=str(delivery.pk))

    new = webhook_secret_rotate(webhook=delivery.webhook, actor=SYSTEM)
    let_backoff_pass(delivery)
    webhook_deliver(delivery_id=str(delivery.pk))

    first, second = receiver.requests
    assert webhook_verify(secret=old, header=first.headers["warden-signature"], body=first.body)
    assert webhook_verify(secret=new, header=second.headers["warden-signature"], body=second.body)
    with pytest.raises(WebhookSignatureError):
        webhook_verify(secret=old, header=second.headers["warden-signature"], body=second.body)
    assert AuditEvent.objects.filter(action="webhook.secret_rotated").count() == 1


# A real worker ----------------------------------------------------------------------------


@pytest.mark.usefixtures("committing_db")
def test_a_real_worker_retries_until_the_receiver_takes_it(
    start_worker, loopback_allowed, receiver, application, governed, people
):
    receiver.answer("/hook", Answer(500), Answer(503), Answer(200))
    _, secret = hooked(application, receiver.url("/hook"), events=["run.failed"])
    start_worker(WARDEN_OUTBOUND_ALLOW_NETWORKS="127.0.0.1/32", WARDEN_WEBHOOK_BACKOFF_SECONDS="1")
    run, token = a_run(governed.agent, people.integration, application)

    run_finish(run_id=run.pk, token=token, state=RunState.FAILED, error="boom")  # commits

    delivery = WebhookDelivery.objects.get(run_id=run.pk)
    deadline = time.monotonic() + 60
    while delivery.status == DeliveryStatus.PENDING:
        assert time.monotonic() < deadline, f"still pending after {delivery.attempts} attempts"
        time.sleep(0.2)
        delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("delivered", 3)
    assert attempts(delivery) == [(1, 500), (2, 503), (3, 200)]
    assert len(receiver.requests) == 3
    last = receiver.requests[-1]
    assert webhook_verify(secret=secret, header=last.headers["warden-signature"], body=last.body)
    assert json.loads(last.body)["data"]["run"] == {
        "id": run.pk,
        "agent": governed.agent.slug,
        "state": "failed",
        "url": f"/api/v1/runs/{run.pk}",
    }
    assert uuid.UUID(last.headers["warden-delivery"]) == delivery.pk


# Admin ------------------------------------------------------------------------------------


def shown_secret(response) -> str:
    match = re.search(r'<code class="webhook-secret">([^<]+)</code>', response.content.decode())
    assert match, response.content.decode()[:2000]
    return match.group(1)


def test_an_admin_creates_a_webhook_and_sees_its_secret_once(client, people, application):
    client.force_login(people.admin)

    response = client.post(
        "/admin/portal/webhook/add/",
        {
            "application": application.pk,
            "url": "https://hooks.example.com/warden",
            "events": ["run.succeeded", "run.failed"],
            "active": "on",
            "description": "CRM",
            "secret": "",
        },
    )

    assert response.status_code == 200
    secret = shown_secret(response)
    assert "no-store" in response["Cache-Control"]
    webhook = Webhook.objects.get()
    assert (webhook.application, webhook.url, webhook.events, webhook.active) == (
        application,
        "https://hooks.example.com/warden",
        ["run.succeeded", "run.failed"],
        True,
    )
    assert decrypt(webhook.secret_ciphertext) == secret
    change = client.get(f"/admin/portal/webhook/{webhook.pk}/change/").content.decode()
    listing = client.get("/admin/portal/webhook/").content.decode()
    assert secret not in change
    assert secret not in listing
    assert webhook.secret_ciphertext not in change
    assert f"?webhook__id__exact={webhook.pk}" in change  # the delivery log
    event = AuditEvent.objects.get(action="webhook.created")
    assert (event.actor_id, event.target_id) == (str(people.admin.pk), str(webhook.pk))


def test_an_admin_may_choose_the_secret(client, people, application):
    client.force_login(people.admin)
    chosen = "a-secret-the-receiver-already-has"

    response = client.post(
        "/admin/portal/webhook/add/",
        {
            "application": application.pk,
            "url": "https://hooks.example.com/warden",
            "events": ["run.failed"],
            "secret": chosen,
        },
    )

    assert shown_secret(response) == chosen
    assert decrypt(Webhook.objects.get().secret_ciphertext) == chosen


def test_the_admin_refuses_a_private_address(client, people, application):
    client.force_login(people.admin)

    response = client.post(
        "/admin/portal/webhook/add/",
        {
            "application": application.pk,
            "url": "https://169.254.169.254/latest/meta-data",
            "events": ["run.failed"],
        },
    )

    assert response.status_code == 200
    assert "private or reserved" in response.content.decode()
    assert not Webhook.objects.exists()
    assert not AuditEvent.objects.filter(action="webhook.created").exists()


def test_an_admin_change_and_a_rotation_are_audited(client, people, application):
    from auditlog.models import LogEntry

    webhook, old = hooked(application, "https://hooks.example.com/warden")
    client.force_login(people.admin)

    response = client.post(
        f"/admin/portal/webhook/{webhook.pk}/change/",
        {"url": "https://hooks.example.com/v2", "events": ["run.failed"], "description": ""},
    )
    assert response.status_code == 302
    rotated = client.post(f"/admin/portal/webhook/{webhook.pk}/rotate-secret/")

    new = shown_secret(rotated)
    assert new != old
    webhook.refresh_from_db()
    assert (webhook.url, webhook.events, webhook.active) == (
        "https://hooks.example.com/v2",
        ["run.failed"],
        False,
    )
    assert decrypt(webhook.secret_ciphertext) == new
    changed = AuditEvent.objects.get(action="webhook.changed")
    assert json.loads(changed.data)["fields"] == ["url", "active", "events"]
    assert changed.actor_id == str(people.admin.pk)
    assert AuditEvent.objects.get(action="webhook.secret_rotated").actor_id == str(people.admin.pk)
    history = LogEntry.objects.get_for_object(webhook)
    assert history.exists()
    assert all("secret_ciphertext" not in (entry.changes or {}) for entry in history)


def test_a_member_cannot_rotate_a_secret(client, people, application):
    webhook, old = hooked(application, "https://hooks.example.com/warden")
    client.force_login(people.member)

    response = client.post(f"/admin/portal/webhook/{webhook.pk}/rotate-secret/")

    assert response.status_code == 302  # to the admin's sign-in
    webhook.refresh_from_db()
    assert decrypt(webhook.secret_ciphertext) == old
    assert not AuditEvent.objects.filter(action="webhook.secret_rotated").exists()


def test_the_delivery_log_is_read_only(
    client, loopback_allowed, receiver, people, application, governed
):
    receiver.answer("/hook", Answer(500))
    delivery, secret = one_delivery(application, governed, people, receiver.url("/hook"))
    webhook_deliver(delivery_id=str(delivery.pk))
    client.force_login(people.admin)

    listing = client.get(f"/admin/portal/webhookdelivery/?webhook__id__exact={delivery.webhook_id}")
    page = client.get(f"/admin/portal/webhookdelivery/{delivery.pk}/change/")

    assert listing.status_code == 200
    assert str(delivery.pk) in listing.content.decode()
    assert page.status_code == 200
    assert "HTTP 500" in page.content.decode()
    assert secret not in page.content.decode()
    assert client.get("/admin/portal/webhookdelivery/add/").status_code == 403
    before = WebhookDelivery.objects.values().get(pk=delivery.pk)
    posted = client.post(f"/admin/portal/webhookdelivery/{delivery.pk}/change/", {"status": "x"})
    assert posted.status_code == 403
    deleted = client.post(f"/admin/portal/webhookdelivery/{delivery.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 403
    assert WebhookDelivery.objects.values().get(pk=delivery.pk) == before


def test_a_new_encryption_key_re_encrypts_the_webhook_secrets(settings, application):
    from io import StringIO

    from cryptography.fernet import Fernet
    from django.core.management import call_command

    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.WARDEN_ENCRYPTION_KEY = [old_key]
    webhook, secret = hooked(application, "https://hooks.example.com/warden")
    settings.WARDEN_ENCRYPTION_KEY = [new_key, old_key]
    out = StringIO()

    call_command("secrets_rotate", stdout=out)  # the one command for every secret

    assert out.getvalue().splitlines() == [
        "Rotated 0 secret(s) to the newest key; 0 already used it.",
        "Rotated 1 webhook secret(s) to the newest key; 0 already used it.",
    ]
    settings.WARDEN_ENCRYPTION_KEY = [new_key]  # the old key dropped
    webhook.refresh_from_db()
    assert decrypt(webhook.secret_ciphertext) == secret
    assert AuditEvent.objects.filter(action="webhook.secret_reencrypted").count() == 1


# Lost messages ----------------------------------------------------------------------------


def test_the_beat_job_resends_only_what_is_overdue(monkeypatch, application, governed, people):
    from integrations.tasks import webhook_deliveries_resume_task

    hooked(application, "https://a.example.com/hook")
    recorded = []
    for _ in range(3):
        run, token = a_run(governed.agent, people.integration, application)
        run_finish(run_id=run.pk, token=token, state=RunState.SUCCEEDED)
        recorded.append(WebhookDelivery.objects.get(run_id=run.pk))
    overdue, fresh, done = recorded
    let_backoff_pass(overdue)
    let_backoff_pass(done)
    WebhookDelivery.objects.filter(pk=done.pk).update(status=DeliveryStatus.DELIVERED)
    sent = []
    monkeypatch.setattr(webhook_deliver_task, "delay", sent.append)

    assert webhook_deliveries_resume_task() == 1

    assert sent == [str(overdue.pk)]
    assert WebhookDelivery.objects.get(pk=fresh.pk).attempts == 0


def test_an_application_without_an_account_cannot_have_a_webhook(client, people, application):
    Application.objects.filter(pk=application.pk).update(user=None)
    application.refresh_from_db()
    client.force_login(people.admin)

    with pytest.raises(WebhookError, match="has no user"):
        hooked(application, "https://hooks.example.com/warden")
    response = client.post(
        "/admin/portal/webhook/add/",
        {
            "application": application.pk,
            "url": "https://hooks.example.com/x",
            "events": ["run.failed"],
        },
    )

    assert response.status_code == 200
    assert "has no user" in response.content.decode()
    assert not Webhook.objects.exists()


# At least once ----------------------------------------------------------------------------


class HeldReceiver:
    """A receiver on loopback that records each POST and holds its answer (200) until the
    test releases it: a receiver still processing when the sender dies."""

    def __init__(self):
        self.requests: list[tuple[dict, bytes]] = []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                if len(receiver.requests) == 1:
                    receiver.release.wait(60)
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender is gone

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def wait_for(condition, what: str, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not {what} within {seconds} s"
        time.sleep(0.1)


@pytest.mark.usefixtures("committing_db")
def test_an_event_resent_after_its_worker_died_mid_attempt_carries_the_same_id(
    start_worker, loopback_allowed, application, governed, people
):
    from integrations.tasks import webhook_deliveries_resume_task

    held = HeldReceiver()
    try:
        _, secret = hooked(application, held.url, events=["run.failed"])
        first = start_worker(WARDEN_OUTBOUND_ALLOW_NETWORKS="127.0.0.1/32")
        run, token = a_run(governed.agent, people.integration, application)
        run_finish(run_id=run.pk, token=token, state=RunState.FAILED, error="boom")  # commits

        # The receiver has the event and is working on it when the worker is killed.
        wait_for(lambda: len(held.requests) == 1, "received")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        delivery = WebhookDelivery.objects.get(run_id=run.pk)
        assert (delivery.status, delivery.attempts) == ("pending", 1)
        assert attempts(delivery) == []  # its outcome was never recorded
        # While the dead worker's lease holds, the sweep sends nothing.
        assert webhook_deliveries_resume_task() == 0

        let_backoff_pass(delivery)  # the lease runs out
        start_worker(WARDEN_OUTBOUND_ALLOW_NETWORKS="127.0.0.1/32")
        assert webhook_deliveries_resume_task() == 1
        wait_for(lambda: len(held.requests) == 2, "sent again")
        wait_for(
            lambda: WebhookDelivery.objects.get(pk=delivery.pk).status == "delivered", "recorded"
        )
    finally:
        held.close()

    (headers_1, body_1), (headers_2, body_2) = held.requests
    assert headers_1["warden-delivery"] == headers_2["warden-delivery"] == str(delivery.pk)
    assert body_1 == body_2  # the same bytes, its signed id included
    assert json.loads(body_2)["id"] == str(delivery.pk)
    for headers, body in held.requests:
        webhook_verify(secret=secret, header=headers["warden-signature"], body=body)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 2, 200)
    assert attempts(delivery) == [(2, 200)]


def claim_twice(delivery) -> tuple[int | None, int | None]:
    """Two claims on one delivery, as when an attempt outlives its lease and the sweeper sends
    the delivery again: the first is still out when the second is taken."""
    old = webhook_claim(delivery_id=str(delivery.pk))
    assert webhook_claim(delivery_id=str(delivery.pk)) is None  # not while the lease holds
    let_backoff_pass(delivery)
    return old, webhook_claim(delivery_id=str(delivery.pk))


def record(delivery, attempt: int, code: int):
    return webhook_record(
        delivery_id=str(delivery.pk),
        attempt=attempt,
        started=timezone.now(),
        duration_ms=5,
        code=code,
        error="" if code < 300 else f"HTTP {code}",
    )


def test_a_stale_attempts_failure_cannot_undo_a_later_success(application, governed, people):
    delivery, _ = one_delivery(application, governed, people, "https://hooks.example.com/x")
    old, new = claim_twice(delivery)

    assert (old, new) == (1, 2)
    assert record(delivery, new, 204).status == "delivered"
    assert record(delivery, old, 500).status == "superseded"

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 2, 204)
    assert delivery.next_attempt_at is None
    assert attempts(delivery) == [(1, 500), (2, 204)]  # both logged, the 2xx decided


def test_a_stale_attempts_success_delivers_and_the_later_failure_changes_nothing(
    application, governed, people
):
    delivery, _ = one_delivery(application, governed, people, "https://hooks.example.com/x")
    old, new = claim_twice(delivery)

    assert record(delivery, old, 200).status == "delivered"  # the receiver has it
    assert record(delivery, new, 503).status == "superseded"

    delivery.refresh_from_db()
    assert (delivery.status, delivery.last_status_code, delivery.next_attempt_at) == (
        "delivered",
        200,
        None,
    )
    assert webhook_claim(delivery_id=str(delivery.pk)) is None  # never sent again


def test_a_stale_attempts_failure_leaves_the_later_claim_in_charge(application, governed, people):
    delivery, _ = one_delivery(application, governed, people, "https://hooks.example.com/x")
    old, new = claim_twice(delivery)
    delivery.refresh_from_db()
    lease = delivery.next_attempt_at

    assert record(delivery, old, 503).status == "superseded"
    delivery.refresh_from_db()
    assert (delivery.status, delivery.next_attempt_at, delivery.last_status_code) == (
        "pending",
        lease,  # not rescheduled by the old attempt: the new one is still out
        None,
    )
    attempted = record(delivery, new, 500)
    assert (attempted.status, attempted.retry_in) == ("pending", 20)  # the second backoff
