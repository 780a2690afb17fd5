"""A second factor for governance admins and reviewers (issue 19; portal/second_factor.py):
after the password, a session owes a code from an authenticator (TOTP) or a recovery code, and
reaches nothing else until it gives one. Codes are computed here from the device's key, as an
authenticator app computes them (django_otp.oath.totp)."""

import json
import subprocess
import sys
from urllib.parse import urlencode

import pytest
from asgiref.sync import async_to_sync
from axes.models import AccessAttempt
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone
from django_otp.oath import totp
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import AuditEvent
from governance import roles
from integrations.models import PersonalAccessToken
from integrations.tokens import token_create
from tests.processes import ROOT, embedded_env, production_env

pytestmark = pytest.mark.django_db
User = get_user_model()
PASSWORD = "correct horse battery staple"
HERE = "203.0.113.7"
ENFORCED = ["superusers", "staff", roles.GOVERNANCE_ADMIN, roles.REVIEWER]
VERIFY = "/login/second-factor/"
ENROL = "/login/second-factor/enrol/"


@pytest.fixture(autouse=True)
def enforced(settings):
    settings.WARDEN_SECOND_FACTOR_GROUPS = ENFORCED
    return settings


def _user(username: str, group: str | None = None, **extra):
    user = User.objects.create_user(username, password=PASSWORD, **extra)
    if group:
        user.groups.add(Group.objects.get_or_create(name=group)[0])
    return user


@pytest.fixture
def rita():
    """A reviewer."""
    return _user("rita", roles.REVIEWER)


@pytest.fixture
def ada():
    """A superuser in no group: `superusers` alone makes her owe a second factor."""
    return _user("ada", is_staff=True, is_superuser=True)


@pytest.fixture
def mo():
    """A member: not asked."""
    return _user("mo", roles.MEMBER)


def authenticator(user) -> TOTPDevice:
    return TOTPDevice.objects.create(user=user, name="phone", confirmed=True)


def code_of(device: TOTPDevice, *, steps_ahead: int = 0) -> str:
    """What the app shows now (or `steps_ahead` periods later: within the device's tolerance,
    and not yet used)."""
    device.refresh_from_db()
    value = totp(device.bin_key, device.step, device.t0, device.digits, device.drift + steps_ahead)
    return f"{value:0{device.digits}d}"


def wrong_code(device: TOTPDevice) -> str:
    right = {code_of(device, steps_ahead=n) for n in (-1, 0, 1)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in right)


def sign_in(client: Client, user, next_url: str = ""):
    data = {"username": user.username, "password": PASSWORD}
    if next_url:
        data["next"] = next_url
    return client.post("/login/", data, REMOTE_ADDR=HERE)


def give(client: Client, code: str, next_url: str = ""):
    data = {"code": code, **({"next": next_url} if next_url else {})}
    return client.post(VERIFY, data, REMOTE_ADDR=HERE)


def actions(user) -> list[str]:
    events = AuditEvent.objects.filter(target_id=str(user.pk)).order_by("sequence")
    return [e.action for e in events if "second_factor" in e.action or "recovery" in e.action]


def unthrottle(device) -> None:
    """Move the device's last failure back past its throttle (instead of sleeping)."""
    type(device).objects.filter(pk=device.pk).update(
        throttling_failure_timestamp=timezone.now() - timezone.timedelta(hours=1)
    )


# Enforcement -------------------------------------------------------------------------------


def test_a_reviewer_sees_nothing_and_changes_nothing_before_the_code(client, rita):
    device = authenticator(rita)
    response = sign_in(client, rita, next_url="/inbox/")
    assert response.status_code == 302
    assert response["Location"] == f"{VERIFY}?{urlencode({'next': '/inbox/'})}"

    home = client.get("/")
    assert home.status_code == 302
    assert home["Location"].startswith(VERIFY)
    assert b"Reviewer" not in home.content
    inbox = client.get("/inbox/", follow=True)
    assert inbox.redirect_chain[0][0].startswith(VERIFY)
    assert b"Second factor" in inbox.content
    assert b"Approvals" not in inbox.content
    made = client.post("/account/tokens/", {"name": "sneaky", "scopes": ["runs:read"]})
    assert made.status_code == 302
    assert made["Location"] == VERIFY
    assert not PersonalAccessToken.objects.filter(user=rita).exists()

    verified = give(client, code_of(device), next_url="/inbox/")
    assert verified.status_code == 302
    assert verified["Location"] == "/inbox/"
    home = client.get("/")
    assert home.status_code == 200
    assert roles.REVIEWER in home.content.decode()
    assert actions(rita) == ["auth.second_factor_verified"]


def test_a_superuser_is_kept_out_of_the_admin_until_verified(client, ada):
    device = authenticator(ada)
    sign_in(client, ada)
    for path in ("/admin/", "/admin/auth/user/", f"/admin/auth/user/{ada.pk}/change/"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response["Location"] == f"{VERIFY}?{urlencode({'next': path})}"
    deleted = client.post(
        "/admin/auth/user/",
        {"action": "delete_selected", "_selected_action": [ada.pk], "post": "yes"},
    )
    assert deleted.status_code == 302
    assert deleted["Location"] == VERIFY
    assert User.objects.filter(pk=ada.pk).exists()

    give(client, code_of(device))
    response = client.get("/admin/auth/user/")
    assert response.status_code == 200
    assert b"ada" in response.content


def test_a_member_is_not_asked(client, mo):
    response = sign_in(client, mo)
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert client.get("/").status_code == 200
    assert not TOTPDevice.objects.filter(user=mo).exists()


def test_the_setting_off_asks_nobody(client, rita, enforced):
    enforced.WARDEN_SECOND_FACTOR_GROUPS = []
    authenticator(rita)
    response = sign_in(client, rita)
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert roles.REVIEWER in client.get("/").content.decode()


def test_a_group_named_in_the_setting_is_asked_and_others_not(client, rita, mo, enforced):
    enforced.WARDEN_SECOND_FACTOR_GROUPS = [roles.MEMBER]
    assert sign_in(client, mo)["Location"].startswith(ENROL)
    other = Client()
    assert sign_in(other, rita)["Location"] == "/"


# Enrolment ---------------------------------------------------------------------------------


def test_enrolment_shows_the_key_confirms_with_a_code_and_gives_ten_codes_once(client, rita):
    response = sign_in(client, rita)
    assert response["Location"] == f"{ENROL}?{urlencode({'next': '/'})}"
    page = client.get(response["Location"])
    assert page.status_code == 200
    device = TOTPDevice.objects.get(user=rita)
    assert not device.confirmed
    body = page.content.decode()
    assert device.config_url.replace("&", "&amp;") in body  # otpauth://totp/Warden:rita?...
    assert "data:image/svg+xml;base64," in body
    assert client.get("/").status_code == 302  # still owed
    assert client.get(ENROL).content.decode().count(device.config_url.replace("&", "&amp;"))

    done = client.post(ENROL, {"code": code_of(device), "next": "/"}, REMOTE_ADDR=HERE)
    assert done.status_code == 200
    device.refresh_from_db()
    assert device.confirmed
    codes = sorted(StaticToken.objects.filter(device__user=rita).values_list("token", flat=True))
    assert len(codes) == 10
    assert len(set(codes)) == 10
    assert all(f"<code>{c}</code>" in done.content.decode() for c in codes)
    assert "no-store" in done["Cache-Control"]
    assert client.get("/").status_code == 200  # verified by the enrolment
    event = AuditEvent.objects.get(action="auth.second_factor_enrolled")
    assert json.loads(event.data) == {"address": HERE, "recovery_codes": 10}
    assert device.key not in event.data
    assert codes[0] not in event.data

    # Enrolled: the page does not hand out a key again, and the next sign-in asks for a code.
    again = client.get(ENROL)
    assert again.status_code == 302
    other = Client()
    assert sign_in(other, rita)["Location"].startswith(VERIFY)
    assert give(other, code_of(device, steps_ahead=1)).status_code == 302
    assert other.get("/").status_code == 200


def test_enrolment_refuses_a_wrong_code(client, rita):
    sign_in(client, rita)
    client.get(ENROL)
    device = TOTPDevice.objects.get(user=rita)
    refused = client.post(ENROL, {"code": wrong_code(device)}, REMOTE_ADDR=HERE)
    assert refused.status_code == 400
    assert b"not right" in refused.content
    device.refresh_from_db()
    assert not device.confirmed
    assert not StaticDevice.objects.filter(user=rita).exists()
    assert client.get("/").status_code == 302
    assert actions(rita) == ["auth.second_factor_failed"]


# Verification ------------------------------------------------------------------------------


def test_a_wrong_code_is_refused_counted_and_throttled(client, rita):
    device = authenticator(rita)
    sign_in(client, rita)
    refused = give(client, wrong_code(device))
    assert refused.status_code == 400
    assert b"not right" in refused.content
    assert client.get("/").status_code == 302
    assert AccessAttempt.objects.get(username="rita", ip_address=HERE).failures_since_start == 1
    event = AuditEvent.objects.get(action="auth.second_factor_failed")
    assert json.loads(event.data) == {"address": HERE, "method": "authenticator"}

    # Right away even the right code waits: the device's own throttle (1 s after one failure).
    throttled = give(client, code_of(device))
    assert throttled.status_code == 400
    assert b"wait" in throttled.content
    assert client.get("/").status_code == 302
    unthrottle(device)
    assert give(client, code_of(device)).status_code == 302
    assert client.get("/").status_code == 200


def test_a_code_is_good_once(client, rita):
    device = authenticator(rita)
    code = code_of(device)
    sign_in(client, rita)
    assert give(client, code).status_code == 302
    other = Client()
    sign_in(other, rita)
    assert give(other, code).status_code == 400  # replayed within its period
    assert other.get("/").status_code == 302


def test_wrong_codes_lock_the_account_out_from_that_address(client, rita, enforced):
    enforced.OTP_TOTP_THROTTLE_FACTOR = 0  # the lockout alone, without the device's waits
    device = authenticator(rita)
    sign_in(client, rita)
    for _ in range(4):
        assert give(client, wrong_code(device)).status_code == 400
    locked = give(client, wrong_code(device))
    assert locked.status_code == 429
    assert "Retry-After" in locked
    assert AuditEvent.objects.filter(action="auth.locked_out").count() == 1
    # While locked, even the right code is not looked at, and the password is refused too.
    assert give(client, code_of(device)).status_code == 429
    assert client.get("/").status_code == 302
    assert sign_in(Client(), rita).status_code == 429


def test_a_recovery_code_works_once(client, rita):
    authenticator(rita)
    static = StaticDevice.objects.create(user=rita, name="Recovery codes", confirmed=True)
    StaticToken.objects.bulk_create(
        [StaticToken(device=static, token=t) for t in ("abcd2345", "efgh6723")]
    )
    sign_in(client, rita)
    used = give(client, "ABCD-2345")  # as someone copies it: case and a dash do not matter
    assert used.status_code == 302
    assert client.get("/").status_code == 200
    assert list(static.token_set.values_list("token", flat=True)) == ["efgh6723"]
    event = AuditEvent.objects.get(action="auth.recovery_code_used")
    assert json.loads(event.data) == {"address": HERE, "remaining": 1}

    other = Client()
    sign_in(other, rita)
    again = give(other, "abcd2345")
    assert again.status_code == 400
    assert other.get("/").status_code == 302
    assert actions(rita) == ["auth.recovery_code_used", "auth.second_factor_failed"]


@pytest.mark.parametrize("typed", ["", "\x00" * 40, "12345\x00", "9" * 5000, "ⅠⅡⅢⅣⅤⅥ"])
def test_bad_input_is_a_refusal_not_a_failure(client, rita, typed):
    authenticator(rita)
    sign_in(client, rita)
    response = give(client, typed)
    assert response.status_code == 400
    assert client.get("/").status_code == 302


def test_next_must_stay_on_the_site(client, rita):
    device = authenticator(rita)
    sign_in(client, rita)
    response = give(client, code_of(device), next_url="https://evil.example/")
    assert response["Location"] == "/"


# The API and the websocket -----------------------------------------------------------------


def test_the_api_refuses_an_owing_session_but_takes_a_token(client, rita):
    device = authenticator(rita)
    _, secret = token_create(user=rita, name="ci", scopes=["agents:run"], days=30)
    sign_in(client, rita)
    refused = client.get("/api/v1/agents")
    assert refused.status_code == 403
    assert refused.json()["type"] == "/api/problems/second-factor-required"
    assert client.get("/v1/models").status_code == 403

    # The same browser, with a personal token: the token speaks, not the owing session.
    by_token = client.get("/api/v1/agents", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert by_token.status_code == 200
    # A header that is not a token does not fall back to the owing session.
    odd = client.get("/api/v1/agents", HTTP_AUTHORIZATION="Digest whatever")
    assert odd.status_code in (401, 403)
    assert odd.json()["type"] != "/api/problems/second-factor-required"
    assert "results" not in odd.json()

    # On a page, a header does not stand in for the second factor.
    page = client.get("/", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert page.status_code == 302
    assert page["Location"].startswith(VERIFY)

    give(client, code_of(device))
    assert client.get("/api/v1/agents").status_code == 200


@pytest.mark.usefixtures("committing_db")  # the consumer reads the session on another thread
def test_a_websocket_of_an_owing_session_is_refused(rita):
    from config.asgi import application

    device = authenticator(rita)
    client = Client()
    sign_in(client, rita)
    cookie = f"{django_settings.SESSION_COOKIE_NAME}={client.cookies['sessionid'].value}"
    headers = [(b"origin", b"http://localhost"), (b"host", b"localhost")]

    async def connect():
        socket = WebsocketCommunicator(application, "/ws/", headers=[*headers, cookie_header])
        await socket.connect(timeout=5)
        return socket

    async def refused() -> int:
        socket = await connect()
        output = await socket.receive_output(timeout=5)
        assert output["type"] == "websocket.close", output
        return output["code"]

    async def answered() -> dict:
        socket = await connect()
        await socket.send_json_to({"type": "ping"})
        frame = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return frame

    cookie_header = (b"cookie", cookie.encode())
    assert async_to_sync(refused)() == 4401
    give(client, code_of(device))
    cookie = f"{django_settings.SESSION_COOKIE_NAME}={client.cookies['sessionid'].value}"
    cookie_header = (b"cookie", cookie.encode())  # verifying gave the session a new key
    assert async_to_sync(answered)()["type"] == "pong"


# The admin's reset -------------------------------------------------------------------------


def test_an_admin_resets_a_reviewers_second_factor(client, ada, rita):
    mine = authenticator(ada)
    theirs = authenticator(rita)
    StaticDevice.objects.create(user=rita, name="Recovery codes", confirmed=True)
    sign_in(client, ada)
    give(client, code_of(mine))
    response = client.post(
        "/admin/auth/user/",
        {"action": "reset_second_factor", "_selected_action": [rita.pk]},
    )
    assert response.status_code == 302
    assert not TOTPDevice.objects.filter(pk=theirs.pk).exists()
    assert not StaticDevice.objects.filter(user=rita).exists()
    assert TOTPDevice.objects.filter(pk=mine.pk).exists()
    event = AuditEvent.objects.get(action="auth.second_factor_reset")
    assert event.actor_id == str(ada.pk)
    assert event.target_id == str(rita.pk)
    assert json.loads(event.data) == {"authenticators": 1, "recovery_code_sets": 1}

    # Her next sign-in enrols a new authenticator.
    assert sign_in(Client(), rita)["Location"].startswith(ENROL)


def test_a_reviewer_cannot_reset_anyones_second_factor(rita, mo):
    device = authenticator(rita)
    reviewer = Client()
    sign_in(reviewer, rita)
    give(reviewer, code_of(device))
    TOTPDevice.objects.create(user=mo, name="phone", confirmed=True)
    response = reviewer.post(
        "/admin/auth/user/", {"action": "reset_second_factor", "_selected_action": [mo.pk]}
    )
    assert response.status_code in (302, 403)
    assert TOTPDevice.objects.filter(user=mo).exists()
    assert not AuditEvent.objects.filter(action="auth.second_factor_reset").exists()


# The setting ----------------------------------------------------------------------------------


def groups_setting(env: dict[str, str]) -> subprocess.CompletedProcess:
    code = "from django.conf import settings; print(settings.WARDEN_SECOND_FACTOR_GROUPS)"
    return subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("production", "", str(ENFORCED)),
        ("embedded", "", "[]"),
        ("production", "off", "[]"),
        ("production", "OFF", "[]"),
        ("embedded", "default", str(ENFORCED)),
        ("production", "Sales, Reviewer", "['Sales', 'Reviewer']"),
    ],
)
def test_who_is_asked_by_default_and_when_set(mode, value, expected, tmp_path):
    extra = {"WARDEN_SECOND_FACTOR_GROUPS": value}
    env = production_env(**extra) if mode == "production" else embedded_env(tmp_path, **extra)
    result = groups_setting(env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_off_among_group_names_is_refused_with_the_variables_name():
    result = groups_setting(production_env(WARDEN_SECOND_FACTOR_GROUPS="Reviewer,off"))
    assert result.returncode != 0
    assert "WARDEN_SECOND_FACTOR_GROUPS is either `off` alone" in result.stderr
