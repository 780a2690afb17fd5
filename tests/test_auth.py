import re
from urllib.parse import unquote

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from governance import roles

pytestmark = pytest.mark.django_db
User = get_user_model()
PASSWORD = "correct horse battery staple"


@pytest.fixture
def member():
    user = User.objects.create_user("mia", password=PASSWORD)
    user.groups.add(Group.objects.create(name=roles.MEMBER))
    return user


@pytest.fixture
def governance_admin():
    return User.objects.create_user("gail", password=PASSWORD, is_staff=True, is_superuser=True)


def test_anonymous_visitor_is_sent_to_login(client):
    response = client.get("/")

    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/"


def test_login_page_renders_a_form_with_csrf(client):
    response = client.get("/login/")

    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="csrfmiddlewaretoken"' in html
    assert re.search(r'<link rel="stylesheet" href="/static/portal/warden\.css">', html)


def test_member_signs_in_sees_their_role_and_signs_out(client, member):
    client.handler.enforce_csrf_checks = True
    client.get("/login/")
    token = client.cookies["csrftoken"].value

    response = client.post(
        "/login/", {"username": "mia", "password": PASSWORD, "csrfmiddlewaretoken": token}
    )
    assert response.status_code == 302
    assert response["Location"] == "/"

    home = client.get("/").content.decode()
    assert "Welcome, mia" in home
    assert "Your roles: Member." in home
    assert "Administration" not in home

    response = client.post("/logout/", {"csrfmiddlewaretoken": client.cookies["csrftoken"].value})
    assert response.status_code == 302
    assert client.get("/").status_code == 302


def test_wrong_password_is_refused_with_a_readable_message(client, member):
    response = client.post("/login/", {"username": "mia", "password": "nope"})

    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_member_cannot_open_the_admin_and_is_told_so_without_a_redirect_loop(client, member):
    client.force_login(member)

    response = client.get("/admin/", follow=True)

    assert response.status_code == 403
    assert [url for url, _ in response.redirect_chain] == ["/admin/login/?next=/admin/"]
    page = response.content.decode()
    assert "The admin console is for governance staff" in page
    assert "mia" in page


def test_a_reviewer_reaching_an_admin_page_gets_the_same_403(client):
    reviewer = User.objects.create_user("rey", password=PASSWORD)
    reviewer.groups.add(Group.objects.create(name=roles.REVIEWER))
    client.force_login(reviewer)

    response = client.get("/admin/agents/run/", follow=True)

    assert response.status_code == 403
    assert len(response.redirect_chain) == 1


def test_a_signed_out_visitor_to_the_admin_is_sent_to_sign_in_with_next_kept(client):
    response = client.get("/admin/", follow=True)

    assert response.status_code == 200
    assert unquote(response.redirect_chain[-1][0]) == "/login/?next=/admin/"
    assert 'name="password"' in response.content.decode()


def test_governance_admin_opens_the_admin(client, governance_admin):
    client.force_login(governance_admin)

    response = client.get("/admin/")

    assert response.status_code == 200
    assert "Warden administration" in response.content.decode()


def test_unknown_page_is_a_plain_404(client, member):
    client.force_login(member)

    response = client.get("/no-such-page/")

    assert response.status_code == 404
    assert "There is nothing at this address" in response.content.decode()


def test_sign_in_sign_out_and_failures_are_audited_without_the_password(client, member):
    from audit.models import AuditEvent

    client.post("/login/", {"username": "mia", "password": "wrong-horse"})
    client.post("/login/", {"username": "mia", "password": PASSWORD})
    client.post("/logout/")

    events = list(
        AuditEvent.objects.order_by("sequence").values_list("action", "actor_label", "target_label")
    )
    assert events == [
        ("auth.sign_in_failed", "warden", "mia"),
        ("auth.signed_in", "mia", "mia"),
        ("auth.signed_out", "mia", "mia"),
    ]
    assert not AuditEvent.objects.filter(data__contains="horse").exists()


def test_failed_sign_in_as_an_unknown_user_keeps_a_digest_not_the_text(client, member):
    from audit.models import AuditEvent

    response = client.post("/login/", {"username": "Hunter2!Secret", "password": "x"})
    nul = client.post("/login/", {"username": "mia\x00", "password": "x"})

    assert response.status_code == 200
    assert nul.status_code == 200
    labels = list(AuditEvent.objects.order_by("sequence").values_list("target_label", flat=True))
    assert len(labels) == 2
    assert labels[0].startswith("unknown user ")
    assert not AuditEvent.objects.filter(target_label__contains="Hunter2").exists()
    assert not AuditEvent.objects.filter(data__contains="Hunter2").exists()


def test_a_staff_user_without_a_models_permission_gets_the_generic_403(client):
    client.force_login(User.objects.create_user("stan", password=PASSWORD, is_staff=True))

    response = client.get("/admin/agents/run/")

    assert response.status_code == 403
    page = response.content.decode()
    assert "You may not open this page." in page
    assert "is for governance staff" not in page
