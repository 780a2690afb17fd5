"""Secrets: encrypted at rest under WARDEN_ENCRYPTION_KEY, rotated to a new key, write-only in
the admin, and never in logs or audit data."""

import hashlib
import json
import logging
import stat
from io import StringIO

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connection

from audit.models import AuditEvent
from audit.services import SYSTEM
from tests.processes import embedded_env, manage, production_env
from tools.models import Secret, SecretKind
from tools.secrets import SecretError, decrypt, encrypt, rotate, secret_rotate, secret_set

pytestmark = pytest.mark.django_db

VALUE = "sk-live-7f3a9c1e-do-not-leak"
UNREADABLE = (
    "cannot be decrypted with the configured WARDEN_ENCRYPTION_KEY (was the key rotated away?)"
)


def new_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture
def old_key(settings) -> str:
    key = new_key()
    settings.WARDEN_ENCRYPTION_KEY = [key]
    return key


@pytest.fixture
def gail():
    return get_user_model().objects.create_user("gail", is_staff=True, is_superuser=True)


@pytest.fixture
def staff_client(client, gail):
    client.force_login(gail)
    return client


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("sequence"))


def run_rotate() -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("secrets_rotate", stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


# --- keys and settings -----------------------------------------------------------------------


def test_the_test_run_gets_a_generated_private_key_like_the_embedded_mode(settings):
    path = settings.VAR_DIR / "encryption_key"
    keys = settings.WARDEN_ENCRYPTION_KEY

    assert keys == [path.read_text().strip()]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert decrypt(encrypt(VALUE)) == VALUE


def test_the_embedded_mode_keeps_its_generated_key_across_restarts(tmp_path):
    var = tmp_path / "var"
    show = (
        "import hashlib; from django.conf import settings; "
        "print(hashlib.sha256(','.join(settings.WARDEN_ENCRYPTION_KEY).encode()).hexdigest())"
    )

    first = manage("shell", "--no-imports", "-c", show, env=embedded_env(var))
    second = manage("shell", "--no-imports", "-c", show, env=embedded_env(var))

    assert first.returncode == 0, first.stderr
    key = (var / "encryption_key").read_text().strip()
    assert first.stdout.strip() == hashlib.sha256(key.encode()).hexdigest()
    assert second.stdout == first.stdout
    assert stat.S_IMODE((var / "encryption_key").stat().st_mode) == 0o600


def test_production_refuses_to_start_without_an_encryption_key():
    result = manage("check", env=production_env(WARDEN_ENCRYPTION_KEY=""))

    assert result.returncode != 0
    assert "WARDEN_ENCRYPTION_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_malformed_key_in_the_list_is_named_by_position_without_echoing_it():
    keys = f"{new_key()},hunter2-not-a-key"

    result = manage("check", env=production_env(WARDEN_ENCRYPTION_KEY=keys))

    assert result.returncode == 2
    assert "WARDEN_ENCRYPTION_KEY must be 32 url-safe base64-encoded bytes" in result.stderr
    assert "(key 2 is not one)" in result.stderr
    assert "hunter2" not in result.stderr
    assert keys.split(",")[0] not in result.stderr


def test_without_a_key_storing_or_reading_a_secret_is_a_configuration_error(settings, old_key):
    secret = secret_set(name="crm-token", value=VALUE, actor=SYSTEM)
    settings.WARDEN_ENCRYPTION_KEY = []

    with pytest.raises(ImproperlyConfigured, match="WARDEN_ENCRYPTION_KEY is not set"):
        secret_set(name="erp-token", value=VALUE, actor=SYSTEM)
    with pytest.raises(ImproperlyConfigured, match="WARDEN_ENCRYPTION_KEY is not set"):
        secret.reveal()
    assert list(Secret.objects.values_list("name", flat=True)) == ["crm-token"]
    assert len(events("secret.set")) == 1


# --- encryption ------------------------------------------------------------------------------


def test_the_stored_ciphertext_is_not_the_plaintext_and_decrypts_back(old_key):
    secret_set(name="crm-token", value=VALUE, actor=SYSTEM, description="CRM API")

    secret = Secret.objects.get(name="crm-token")
    assert VALUE not in secret.ciphertext
    assert Fernet(old_key).decrypt(secret.ciphertext.encode()).decode() == VALUE
    assert secret.reveal() == VALUE
    assert secret.description == "CRM API"
    assert secret.kind == SecretKind.BEARER


def test_a_token_from_a_removed_key_cannot_be_decrypted_and_says_why(settings, old_key):
    token = encrypt(VALUE)
    secret = secret_set(name="crm-token", value=VALUE, actor=SYSTEM)
    settings.WARDEN_ENCRYPTION_KEY = [new_key()]

    with pytest.raises(SecretError) as plain:
        decrypt(token)
    with pytest.raises(SecretError) as stored:
        Secret.objects.get(pk=secret.pk).reveal()

    assert str(plain.value) == f"the secret {UNREADABLE}"
    assert str(stored.value) == f"secret 'crm-token' {UNREADABLE}"
    for message in (str(plain.value), str(stored.value)):
        assert VALUE not in message
        assert old_key not in message
        assert settings.WARDEN_ENCRYPTION_KEY[0] not in message


def test_rotate_reencrypts_under_the_newest_key(settings, old_key):
    token = encrypt(VALUE)
    newest = new_key()
    settings.WARDEN_ENCRYPTION_KEY = [newest, old_key]

    rotated = rotate(token)

    assert rotated != token
    assert Fernet(newest).decrypt(rotated.encode()).decode() == VALUE


def test_str_and_repr_never_show_the_value(old_key):
    secret = secret_set(name="crm-token", value=VALUE, actor=SYSTEM)

    assert str(secret) == "crm-token"
    assert repr(secret) == "<Secret 'crm-token' (bearer)>"


def test_a_basic_auth_secret_needs_user_colon_password(old_key):
    with pytest.raises(SecretError) as refused:
        secret_set(name="ldap", value="no-colon-here", kind=SecretKind.BASIC, actor=SYSTEM)

    assert str(refused.value) == "A basic auth secret is user:password (a colon is missing)."
    assert not Secret.objects.exists()


# --- the service and its audit events ------------------------------------------------------


def test_setting_a_secret_audits_its_name_and_kind_only(old_key, gail):
    secret = secret_set(name="crm-token", value=VALUE, kind=SecretKind.HEADER, actor=gail)

    (event,) = events("secret.set")
    assert json.loads(event.data) == {"name": "crm-token", "kind": "header"}
    assert (event.actor_type, event.actor_id) == ("user", str(gail.pk))
    assert (event.target_type, event.target_id) == ("tools.secret", str(secret.pk))


def test_an_update_without_a_value_keeps_it_and_is_audited_as_an_update(old_key):
    first = secret_set(name="crm-token", value=VALUE, actor=SYSTEM)

    second = secret_set(name="crm-token", value=None, description="rotated monthly", actor=SYSTEM)

    assert second.ciphertext == first.ciphertext
    assert second.value_set_at == first.value_set_at
    assert Secret.objects.get().reveal() == VALUE
    assert Secret.objects.get().description == "rotated monthly"
    assert json.loads(events("secret.updated")[0].data) == {"name": "crm-token", "kind": "bearer"}


def test_nothing_logs_or_audits_the_value(settings, old_key, caplog, staff_client):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django.db.backends")
    connection.force_debug_cursor = True  # SQL is logged too: only ciphertext may reach it
    try:
        secret = secret_set(name="crm-token", value=VALUE, actor=SYSTEM)
        assert Secret.objects.get(pk=secret.pk).reveal() == VALUE
        settings.WARDEN_ENCRYPTION_KEY = [new_key(), old_key]
        assert secret_rotate(secret_id=secret.pk, actor=SYSTEM) is True
        assert Secret.objects.get(pk=secret.pk).reveal() == VALUE
        page = staff_client.get(f"/admin/tools/secret/{secret.pk}/change/").content.decode()
        listing = staff_client.get("/admin/tools/secret/").content.decode()
    finally:
        connection.force_debug_cursor = False

    assert "tools_secret" in caplog.text  # the capture did see the queries
    assert VALUE not in caplog.text
    data = [event.data for event in AuditEvent.objects.all()]
    assert data
    assert all(VALUE not in text for text in data)
    ciphertext = Secret.objects.get(pk=secret.pk).ciphertext
    assert all(ciphertext not in text for text in data)
    for html in (page, listing):
        assert "crm-token" in html
        assert VALUE not in html
        assert ciphertext not in html


# --- rotation --------------------------------------------------------------------------------


def test_rotation_to_a_new_key_makes_the_old_key_unnecessary(settings, old_key):
    secret_set(name="crm-token", value=VALUE, actor=SYSTEM)
    secret_set(name="erp-login", value="svc:pa55", kind=SecretKind.BASIC, actor=SYSTEM)
    newest = new_key()
    settings.WARDEN_ENCRYPTION_KEY = [newest, old_key]
    secret_set(name="wiki-token", value="wiki-value", actor=SYSTEM)  # already under the newest

    out, err = run_rotate()

    assert out == "Rotated 2 secret(s) to the newest key; 1 already used it.\n"
    assert err == ""
    settings.WARDEN_ENCRYPTION_KEY = [newest]  # the old key dropped
    assert {secret.name: secret.reveal() for secret in Secret.objects.all()} == {
        "crm-token": VALUE,
        "erp-login": "svc:pa55",
        "wiki-token": "wiki-value",
    }
    assert [json.loads(event.data) for event in events("secret.rotated")] == [
        {"name": "crm-token", "kind": "bearer"},
        {"name": "erp-login", "kind": "basic"},
    ]
    assert all(event.actor_type == "system" for event in events("secret.rotated"))
    rotated_at = dict(Secret.objects.values_list("name", "rotated_at"))
    assert rotated_at["crm-token"] is not None
    assert rotated_at["wiki-token"] is None


def test_rotating_again_changes_nothing(settings, old_key):
    secret_set(name="crm-token", value=VALUE, actor=SYSTEM)
    settings.WARDEN_ENCRYPTION_KEY = [new_key(), old_key]
    run_rotate()
    ciphertext = Secret.objects.get().ciphertext

    out, _err = run_rotate()

    assert out == "Rotated 0 secret(s) to the newest key; 1 already used it.\n"
    assert Secret.objects.get().ciphertext == ciphertext
    assert len(events("secret.rotated")) == 1


def test_rotation_lists_secrets_no_key_can_read_and_rotates_the_rest(settings, old_key):
    secret_set(name="lost", value="lost-value", actor=SYSTEM)
    lost_key = old_key
    settings.WARDEN_ENCRYPTION_KEY = [new_key()]
    secret_set(name="kept", value=VALUE, actor=SYSTEM)
    newest = new_key()
    settings.WARDEN_ENCRYPTION_KEY = [newest, settings.WARDEN_ENCRYPTION_KEY[0]]

    out, err = StringIO(), StringIO()

    with pytest.raises(CommandError, match=r"^1 secret\(s\) could not be rotated$"):
        call_command("secrets_rotate", stdout=out, stderr=err)

    assert out.getvalue() == "Rotated 1 secret(s) to the newest key; 0 already used it.\n"
    assert err.getvalue() == f"secret 'lost' {UNREADABLE}\n"
    assert lost_key not in err.getvalue()
    assert Fernet(newest).decrypt(Secret.objects.get(name="kept").ciphertext.encode())


# --- the admin -------------------------------------------------------------------------------


def test_the_admin_creates_a_secret_and_never_shows_it_back(staff_client, gail, old_key):
    response = staff_client.post(
        "/admin/tools/secret/add/",
        {"name": "crm-token", "kind": "bearer", "description": "CRM API", "value": VALUE},
    )

    assert response.status_code == 302
    assert response.wsgi_request.sensitive_post_parameters == ("value",)  # not in error reports
    secret = Secret.objects.get(name="crm-token")
    assert secret.reveal() == VALUE
    assert secret.value_set_at is not None
    (event,) = events("secret.set")
    assert (event.actor_id, json.loads(event.data)) == (
        str(gail.pk),
        {"name": "crm-token", "kind": "bearer"},
    )
    page = staff_client.get(f"/admin/tools/secret/{secret.pk}/change/").content.decode()
    assert 'type="password"' in page
    assert "Leave blank to keep the current value" in page
    assert "value set" in page.lower()
    assert "key rotated" in page.lower()
    assert VALUE not in page
    assert secret.ciphertext not in page


def test_the_admin_requires_a_value_on_create(staff_client, old_key):
    response = staff_client.post(
        "/admin/tools/secret/add/", {"name": "crm-token", "kind": "bearer", "value": ""}
    )

    assert response.status_code == 200
    assert "This field is required." in response.content.decode()
    assert not Secret.objects.exists()
    assert not events("secret.set")


def test_a_refused_form_does_not_echo_the_value(staff_client, old_key):
    response = staff_client.post(
        "/admin/tools/secret/add/", {"name": "not a slug!", "kind": "bearer", "value": VALUE}
    )

    assert response.status_code == 200
    assert "Enter a valid “slug”" in response.content.decode()
    assert VALUE not in response.content.decode()
    assert not Secret.objects.exists()


def test_the_admin_edit_with_a_blank_value_keeps_it(staff_client, old_key):
    secret = secret_set(name="crm-token", value=VALUE, actor=SYSTEM)

    response = staff_client.post(
        f"/admin/tools/secret/{secret.pk}/change/",
        {"kind": "header", "description": "now a header", "value": ""},
    )

    assert response.status_code == 302
    secret.refresh_from_db()
    assert (secret.kind, secret.description, secret.reveal()) == ("header", "now a header", VALUE)
    assert json.loads(events("secret.updated")[0].data) == {"name": "crm-token", "kind": "header"}
    assert len(events("secret.set")) == 1  # only the creation


def test_the_admin_edit_with_a_value_replaces_it_and_cannot_rename(staff_client, old_key):
    secret = secret_set(name="crm-token", value=VALUE, actor=SYSTEM)

    response = staff_client.post(
        f"/admin/tools/secret/{secret.pk}/change/",
        {"name": "renamed", "kind": "bearer", "description": "", "value": "sk-new-value"},
    )

    assert response.status_code == 302
    secret.refresh_from_db()
    assert (secret.name, secret.reveal()) == ("crm-token", "sk-new-value")
    assert len(events("secret.set")) == 2


def test_the_admin_refuses_basic_auth_without_a_colon(staff_client, old_key):
    response = staff_client.post(
        "/admin/tools/secret/add/", {"name": "ldap", "kind": "basic", "value": "no-colon-here"}
    )

    assert response.status_code == 200
    assert "A basic auth secret is user:password" in response.content.decode()
    assert not Secret.objects.exists()


def test_the_admin_delete_is_audited(staff_client, old_key):
    secret = secret_set(name="crm-token", value=VALUE, actor=SYSTEM)

    response = staff_client.post(f"/admin/tools/secret/{secret.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert not Secret.objects.exists()
    (event,) = events("secret.deleted")
    assert (event.target_id, json.loads(event.data)) == (
        str(secret.pk),
        {"name": "crm-token", "kind": "bearer"},
    )
