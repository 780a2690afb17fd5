"""The Access pages: who may use a governed object and why (always the rule's own answer), a
preview of a change that changes nothing, a confirmation before a lockout, each change audited,
and the reverse view of a user or a group."""

import json
import random
import re
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.urls import reverse

from agents.models import Deployment, KnowledgeBase, ModelRoute
from audit.models import AuditEvent
from audit.services import SYSTEM
from governance import audience, roles
from governance.access import codename, may
from governance.models import AccessDenial, Action
from governance.services import access_deny, access_grant
from tests.personas import _user

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, people):
    client.force_login(people.admin)
    return client


def page_of(obj) -> str:
    meta = obj._meta
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_access", args=[obj.pk])


def section(html: str, id_: str) -> str:
    return html.split(f'id="{id_}"', 1)[1].split('<div class="module"', 1)[0]


def access_events(obj):
    return list(
        AuditEvent.objects.filter(target_id=str(obj.pk), action__startswith="access.").order_by(
            "sequence"
        )
    )


# --- the explanation agrees with the rule ---------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_who_may_and_why_is_the_rules_own_answer_for_every_user(seed, role_groups):
    """Random grants, denials, model-wide permissions, superusers and an owner: for every user,
    the page's yes or no is `may`, a yes has a reason and no denial, a no has a denial or no
    reason, and nobody left off the page may."""
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:6]
    teams = [Group.objects.create(name=f"team-{tag}-{n}") for n in range(3)]
    groups = [*teams, role_groups[roles.MEMBER], role_groups[roles.REVIEWER]]
    users = [
        _user(f"u{n}", *rng.sample(groups, rng.randint(0, 3)), is_superuser=rng.random() < 0.15)
        for n in range(12)
    ]
    get_user_model().objects.filter(pk=users[0].pk).update(is_active=False)
    base = KnowledgeBase.objects.create(name="B", slug=f"b-{tag}", owner=rng.choice(users))
    others = [
        KnowledgeBase.objects.create(name=f"O{n}", slug=f"o{n}-{tag}", owner=rng.choice(users))
        for n in range(2)
    ]
    for obj in [base, *others]:
        for holder in rng.sample(users + groups, 5):
            access_grant(obj=obj, holder=holder, action=Action.READ, actor=SYSTEM)
        for holder in rng.sample(users + groups, 2):
            access_deny(obj=obj, holder=holder, action=Action.READ, actor=SYSTEM)
    everything = Permission.objects.get(codename=codename(KnowledgeBase, Action.READ))
    if seed % 2:
        rng.choice(teams).permissions.add(everything)
    else:
        rng.choice(users).user_permissions.add(everything)

    shown = {p.id: p for p in audience.explain(base, Action.READ).people}

    for user in get_user_model().objects.filter(pk__in=[u.pk for u in users]):
        person = shown.get(user.pk)
        assert (person is not None and person.allowed) == may(user, base, Action.READ)
        if person is not None and person.allowed:
            assert person.grants
            assert not person.denials
        elif person is not None:
            assert person.denials or not person.grants
        held = {h.obj.pk: h for h in audience.holdings(user, KnowledgeBase.objects.all(), "read")}
        for obj in [base, *others]:
            holding = held.get(obj.pk)
            assert (holding is not None and holding.allowed) == may(user, obj, Action.READ)


# --- the object's page ----------------------------------------------------------------------


def test_the_page_lists_denials_first_and_says_why_each_person_may(
    admin_client, people, governed, team
):
    html = admin_client.get(page_of(governed.agent)).content.decode()

    assert html.index('id="denials"') < html.index('id="grants"') < html.index('id="people"')
    assert people.denied.username in section(html, "denials")
    assert f"<td>{team.name}</td><td>team</td>" in section(html, "grants")
    rows = dict(re.findall(r'<tr class="\w+"><td>([^<]+)</td>.*?<td>([^<]*)</td></tr>', html, re.S))
    assert rows[people.member.username] == f"team {team.name}"
    assert rows[people.integration.username] == "granted to them"
    assert rows[people.admin.username] == "superuser"
    assert rows[people.denied.username] == f"denied: granted to them; overrides team {team.name}"
    assert people.outsider.username not in section(html, "people")
    # denied people come first in the table
    people_html = section(html, "people")
    assert people_html.index(people.denied.username) < people_html.index(people.member.username)
    assert "3 people may use it now." in html  # the member, the integration account, the admin


def test_a_preview_changes_nothing_and_a_lockout_needs_confirming(admin_client, people, team):
    """Denying the Member group on the only model route: the page names the group it locks
    out and who loses access; nothing changes until the admin confirms; then it is audited."""
    member_group = Group.objects.get(name=roles.MEMBER)
    route = ModelRoute.objects.create(name=f"only-{uuid.uuid4().hex[:6]}")
    Deployment.objects.create(route=route, position=1, model="warden-local/demo")
    access_grant(obj=route, holder=member_group, action=Action.USE, actor=SYSTEM)
    url = page_of(route)
    change = {"holder": f"group:{member_group.pk}", "operation": "deny"}
    events_before = len(access_events(route))

    previewed = admin_client.post(url, {**change, "preview": "1"}).content.decode()
    fingerprint = re.search(r'name="fingerprint" value="(\w+)"', previewed)[1]
    unconfirmed = admin_client.post(url, {**change, "fingerprint": fingerprint, "apply": "1"})

    assert "Locks out every member of:" in previewed
    assert f"role <strong>{roles.MEMBER}</strong>" in previewed
    assert "Nobody would be able to" not in previewed  # the superuser keeps it
    lost = section(previewed, "access-preview").split('id="preview-lost"', 1)[1]
    for person in (people.member, people.outsider, people.denied):
        assert person.username in lost.split("</p>", 1)[0]
    assert unconfirmed.status_code == 200
    assert "Confirm that you mean to lock them out." in unconfirmed.content.decode()
    assert not AccessDenial.objects.filter(object_id=route.pk, group=member_group).exists()
    assert may(people.member, route, Action.USE)
    assert len(access_events(route)) == events_before

    applied = admin_client.post(
        url, {**change, "fingerprint": fingerprint, "apply": "1", "confirm": "on"}
    )

    assert applied.status_code == 302
    assert not may(people.member, route, Action.USE)
    assert AccessDenial.objects.filter(object_id=route.pk, group=member_group).exists()
    [event] = access_events(route)[events_before:]
    assert event.action == "access.denied"
    assert event.actor_id == str(people.admin.pk)
    assert json.loads(event.data)["holder_name"] == roles.MEMBER
    page = admin_client.get(url).content.decode()
    assert f"Role {roles.MEMBER}: denied. 0 gained access, 3 lost it." in page


def test_a_grant_needs_no_confirmation_and_says_who_gains(admin_client, people, governed):
    url = page_of(governed.tool)
    change = {"holder": f"user:{people.outsider.pk}", "operation": "grant"}

    previewed = admin_client.post(url, {**change, "preview": "1"}).content.decode()
    fingerprint = re.search(r'name="fingerprint" value="(\w+)"', previewed)[1]
    gained = previewed.split('id="preview-gained"', 1)[1].split("</p>", 1)[0]
    applied = admin_client.post(url, {**change, "fingerprint": fingerprint, "apply": "1"})

    assert people.outsider.username in gained
    assert 'name="confirm"' not in previewed
    assert applied.status_code == 302
    assert may(people.outsider, governed.tool, Action.USE)
    assert access_events(governed.tool)[-1].action == "access.granted"


def test_a_change_made_since_the_preview_is_shown_again_not_applied(
    admin_client, people, governed, team
):
    url = page_of(governed.agent)
    change = {"holder": f"group:{team.pk}", "operation": "revoke"}
    previewed = admin_client.post(url, {**change, "preview": "1"}).content.decode()
    fingerprint = re.search(r'name="fingerprint" value="(\w+)"', previewed)[1]
    access_grant(obj=governed.agent, holder=people.outsider, action=Action.USE, actor=SYSTEM)

    stale = admin_client.post(url, {**change, "fingerprint": fingerprint, "apply": "1"})

    assert stale.status_code == 200
    assert "Access changed since this preview" in stale.content.decode()
    assert people.outsider.username in section(stale.content.decode(), "people")
    assert may(people.member, governed.agent, Action.USE)  # the team's grant is still there


@pytest.mark.parametrize(
    ("operation", "holder", "error"),
    [
        ("grant", "team", "already has a grant on it"),
        ("deny", "denied", "is already denied"),
        ("undeny", "member", "is not denied"),
        ("revoke", "outsider", "has no grant on it to revoke"),
        ("grant", "nobody", "No such user or group"),
        ("bogus", "member", "Select a valid choice"),
    ],
)
def test_a_change_that_would_do_nothing_says_so_and_saves_nothing(
    admin_client, people, governed, team, operation, holder, error
):
    token = {
        "team": f"group:{team.pk}",
        "nobody": "user:999999999",
    }.get(holder) or f"user:{people.named(holder).pk}"
    events = len(access_events(governed.agent))
    denials = AccessDenial.objects.count()

    response = admin_client.post(
        page_of(governed.agent), {"holder": token, "operation": operation, "apply": "1"}
    )

    assert response.status_code == 200
    assert error in response.content.decode()
    assert len(access_events(governed.agent)) == events
    assert AccessDenial.objects.count() == denials


def test_lifting_a_denial_from_the_page(admin_client, people, governed):
    url = page_of(governed.knowledge_base)
    change = {"holder": f"user:{people.denied.pk}", "operation": "undeny"}
    previewed = admin_client.post(url, {**change, "preview": "1"}).content.decode()
    fingerprint = re.search(r'name="fingerprint" value="(\w+)"', previewed)[1]

    admin_client.post(url, {**change, "fingerprint": fingerprint, "apply": "1"})

    assert people.denied.username in previewed.split('id="preview-gained"')[1].split("</p>")[0]
    assert may(people.denied, governed.knowledge_base, Action.READ)
    assert access_events(governed.knowledge_base)[-1].action == "access.undenied"


def test_only_who_may_change_the_object_reaches_its_page(client, people, governed):
    client.force_login(people.reviewer)  # not staff
    url = page_of(governed.agent)

    got = client.get(url)
    posted = client.post(url, {"holder": f"user:{people.reviewer.pk}", "operation": "grant"})

    assert got.status_code == posted.status_code == 302
    assert got.url.startswith("/admin/login/")
    assert not may(people.reviewer, governed.agent, Action.USE)


# --- the pickers' search ---------------------------------------------------------------------


def test_the_picker_finds_users_teams_and_groups_by_what_is_typed(admin_client, people, team):
    url = reverse("admin:governance_accessdenial_holders")

    found = admin_client.get(url, {"term": team.name[:8]}).json()["results"]
    by_user = admin_client.get(url, {"term": people.outsider.username}).json()["results"]
    roles_found = admin_client.get(url, {"term": "Review"}).json()["results"]

    assert {
        "text": "Teams",
        "children": [{"id": f"group:{team.pk}", "text": f"{team.name} (team)"}],
    } in found
    assert [c["id"] for r in by_user for c in r["children"]] == [f"user:{people.outsider.pk}"]
    assert {
        "id": f"group:{Group.objects.get(name=roles.REVIEWER).pk}",
        "text": "Reviewer (role)",
    } in [c for r in roles_found for c in r["children"]]


def test_the_picker_is_for_the_console_only(client, people):
    client.force_login(people.member)

    response = client.get(reverse("admin:governance_accessdenial_holders"), {"term": "a"})

    assert response.status_code == 302
    assert response.url.startswith("/admin/login/")


# --- the reverse view -------------------------------------------------------------------------


def test_a_users_page_lists_everything_they_may_use_and_why(admin_client, people, governed, team):
    html = admin_client.get(
        reverse("admin:auth_user_access", args=[people.member.pk])
    ).content.decode()
    denied_html = admin_client.get(
        reverse("admin:auth_user_access", args=[people.denied.pk])
    ).content.decode()

    for obj in governed.each().values():
        assert f'href="{page_of(obj)}">{obj}</a>' in html
        assert f'href="{page_of(obj)}">{obj}</a>' in denied_html
    assert f"<td>yes</td>\n<td>team {team.name}</td>" in html
    assert f"<td>denied: granted to them; overrides team {team.name}</td>" in denied_html


def test_a_groups_page_lists_what_is_set_on_the_group(admin_client, governed, team):
    html = admin_client.get(reverse("admin:auth_group_access", args=[team.pk])).content.decode()

    for obj in governed.each().values():
        assert f">{obj}</a>" in html
    assert f"team {team.name}" in html


def test_the_explanation_costs_the_same_queries_for_ten_people_or_sixty(
    people, governed, team, django_assert_max_num_queries
):
    """A fixed number of statements whatever the numbers of people and groups it reaches."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def count() -> int:
        with CaptureQueriesContext(connection) as seen:
            audience.explain(governed.agent, Action.USE)
        return len(seen)

    few = count()
    for n in range(50):
        extra = Group.objects.create(name=f"extra-{uuid.uuid4().hex[:6]}-{n}")
        extra.user_set.add(_user(f"many{n}", team))
        access_grant(obj=governed.agent, holder=extra, action=Action.USE, actor=SYSTEM)
        gone = _user(f"gone{n}", is_active=False)  # named by a grant, reached by none
        access_grant(obj=governed.agent, holder=gone, action=Action.USE, actor=SYSTEM)
    many = count()

    assert len(audience.explain(governed.agent, Action.USE).allowed) > 50
    assert many == few
    with django_assert_max_num_queries(12):
        audience.explain(governed.agent, Action.USE)


def test_a_users_page_lists_only_what_the_viewing_admin_may_see(client, people, governed):
    """A staff account that may view users but not agents, tools, routes or bases sees the
    page with none of them on it."""
    viewer = _user("helpdesk-staff", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_user"))
    client.force_login(viewer)

    page = client.get(reverse("admin:auth_user_access", args=[people.member.pk]))

    assert page.status_code == 200
    for obj in governed.each().values():
        assert str(obj) not in page.content.decode()
    assert "Knowledge bases" not in page.content.decode()
