"""Approvals of tool calls and escalations of low-confidence answers (DESIGN.md §6).

A request is created by the run that needs it (inside the step's transaction), decided once by
a reviewer who is not the requester, and its decision reaches the parked run through
`governance.signals`, in the same transaction. Two reviewers deciding at once: the row lock lets
one in; the other finds the request decided and is told by whom.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from audit.pii import UnknownPseudonym, unpseudonymise
from audit.services import Target, audit_record
from governance import roles, signals
from governance.models import (
    ApprovalRequest,
    ApprovalStatus,
    Escalation,
    EscalationStatus,
)
from governance.notify import reviewers_notify
from telemetry import metrics

if TYPE_CHECKING:
    from decimal import Decimal

    from django.contrib.auth.models import AnonymousUser, User

    from governance.access import AnyUser

_Held = TypeVar("_Held", ApprovalRequest, Escalation)
_Edited = TypeVar("_Edited")


class ApprovalError(Exception):
    """The decision cannot be taken; the message says why, for the reviewer."""


def arguments_hash(arguments: dict[str, Any]) -> str:
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def approval_expiry() -> timedelta:
    return timedelta(seconds=settings.WARDEN_APPROVAL_EXPIRY_SECONDS)


def approval_request_create(
    *,
    key: str,
    run_id: int,
    agent: Any,  # an Agent (None: an MCP client's own call) and a Tool: models of the apps
    # above, which governance never names
    tool: Any,
    requested_by: AnyUser,
    arguments: dict[str, Any],
    reasons: list[str],
) -> ApprovalRequest:
    """The pending request for the call `key` (the existing one if the step is retried).
    Call it inside the transaction that parks the run."""
    request, created = ApprovalRequest.objects.get_or_create(
        key=key,
        defaults={
            "run_id": run_id,
            "agent_id": agent.pk if agent is not None else None,
            "tool_id": tool.pk,
            "tool_name": tool.name,
            "tool_version": tool.version,
            "requested_by": requested_by,
            "arguments": arguments,
            "arguments_hash": arguments_hash(arguments),
            "reasons": reasons,
            "expires_at": timezone.now() + approval_expiry(),
        },
    )
    if created:
        by_agent = agent.approver_groups.all() if agent is not None else ()
        groups = {*by_agent, *tool.approver_groups.all()}
        request.approver_groups.set(groups)
        audit_record(
            actor=requested_by,
            action="approval.requested",
            target=Target.of(request),
            run=run_id,
            data={
                "tool": tool.name,
                "arguments_hash": request.arguments_hash,
                "reasons": reasons,
                "approver_groups": sorted(g.name for g in groups),
                "expires_at": request.expires_at.isoformat(),
            },
        )
        # Best effort: a broker that is down must not undo or fail the parked run.
        transaction.on_commit(lambda: _notify_requested(request.pk), robust=True)
    return request


def _notify_requested(approval_id: int) -> None:
    from governance.tasks import approval_notify_task

    request = ApprovalRequest.objects.get(pk=approval_id)
    groups = list(request.approver_groups.values_list("pk", flat=True))
    reviewers_notify(
        groups,
        {
            "type": "approval.requested",
            "approval": request.pk,
            "run": request.run_id,
            "tool": request.tool_name,
        },
    )
    approval_notify_task.delay(approval_id)


def deciders(group_ids: list[int]) -> Q:
    """Users who may decide for these approver groups (the reviewer roles when none)."""
    if group_ids:
        return Q(groups__in=group_ids)
    return Q(groups__name__in=[roles.REVIEWER, roles.GOVERNANCE_ADMIN])


def may_decide(user: AnyUser, *, requested_by_id: int, group_ids: list[int]) -> bool:
    """Four-eyes and the approver groups: one condition per line."""
    if user is None or not user.is_active or not user.pk:
        return False
    if user.pk == requested_by_id:
        return False  # never one's own request, whatever one's roles
    return get_user_model().objects.filter(deciders(group_ids), pk=user.pk).exists()


def _check_decider(item: _Held | None, decided_by: AnyUser, noun: str, own: str) -> _Held:
    """`decided_by` may decide the locked, still pending `item` (a request or an escalation),
    or ApprovalError says why: missing and forbidden alike, one's own, already decided."""
    if item is None:
        raise ApprovalError(f"no such {noun}")
    group_ids = list(item.approver_groups.values_list("pk", flat=True))
    if not may_decide(decided_by, requested_by_id=item.requested_by_id, group_ids=group_ids):
        if decided_by is not None and decided_by.pk == item.requested_by_id:
            raise ApprovalError(f"{own}: another reviewer must decide it")
        raise ApprovalError(f"no such {noun}")
    if item.status == "withdrawn":
        raise ApprovalError("the run was cancelled: there is nothing to decide")
    if item.status != "pending":
        who = item.decided_by.get_username() if item.decided_by else "Warden"
        raise ApprovalError(f"already {item.status} by {who}")
    return item


def approvals_for(user: AnyUser) -> QuerySet[ApprovalRequest]:
    """The pending requests `user` may decide (the inbox)."""
    return reviewable(ApprovalRequest, user).filter(status="pending")


def escalations_for(user: AnyUser) -> QuerySet[Escalation]:
    """The held answers `user` may release or reject (the inbox)."""
    return reviewable(Escalation, user).filter(status="pending")


def reviewable(model: type[_Held], user: AnyUser) -> QuerySet[_Held]:
    """Items of `model` (requests or escalations, in any state) that name one of `user`'s
    groups as approvers, or name none and `user` is a reviewer; never `user`'s own (the rule
    of `may_decide`). The one access check of the inbox's pages."""
    if user is None or not user.is_active or not user.pk:
        return model.objects.none()
    through = model.approver_groups.through
    owner = f"{model._meta.model_name}_id"
    in_groups = Exists(through.objects.filter(**{owner: OuterRef("pk")}, group__user=user.pk))
    any_group = Exists(through.objects.filter(**{owner: OuterRef("pk")}))
    reviewer = user.groups.filter(name__in=[roles.REVIEWER, roles.GOVERNANCE_ADMIN]).exists()
    mine = Q(in_groups) | (Q(~any_group) if reviewer else Q(pk__in=[]))
    return model.objects.exclude(requested_by=user.pk).filter(mine).order_by("created_at")


def reviewer_listens_on(user: AnyUser) -> list[str]:
    """The channel groups `user`'s inbox listens on (governance.notify): every reviewer's if
    `user` has a reviewer role, and each of `user`'s groups if one of them approves something
    (named on an agent or a tool, or on a request). Empty: `user` reviews nothing."""
    if user is None or not user.is_active or not user.pk:
        return []
    from governance.notify import ALL_REVIEWERS

    groups = list(user.groups.values_list("pk", "name"))
    if not groups:
        return []
    reviewer = any(name in (roles.REVIEWER, roles.GOVERNANCE_ADMIN) for _, name in groups)
    if not reviewer and not _approves(user):
        return []
    return ([ALL_REVIEWERS] if reviewer else []) + [f"reviewers.{pk}" for pk, _ in groups]


def _approves(user: User | AnonymousUser) -> bool:
    named = Q()
    for relation in _approver_relations():
        named |= Q(**{f"{relation}__isnull": False})
    for model in (ApprovalRequest, Escalation):
        named |= Q(pk__in=model.approver_groups.through.objects.values("group_id"))
    return user.groups.filter(named).exists()


def _approver_relations() -> list[str]:
    """Group's reverse relations to the objects of the apps above that name approver groups
    (an agent's, a tool's): their many-to-many field to Group is called `approver_groups`, as
    a request's own is (whose relation is hidden: "+")."""
    return [
        relation.field.related_query_name()
        for relation in Group._meta.related_objects
        if relation.many_to_many
        and relation.field.name == "approver_groups"
        and not relation.hidden
    ]


def _argument_problem(request: ApprovalRequest, arguments: dict[str, Any] | None) -> str | None:
    """What tools (signals.arguments_edited) finds wrong with edited `arguments`, or None."""
    answers = signals.arguments_edited.send(
        sender=ApprovalRequest, tool_id=request.tool_id, arguments=arguments
    )
    if not answers:
        raise RuntimeError("no argument checker connected (is the tools app installed?)")
    return next((problem for _, problem in answers if problem is not None), None)


def _notify_decided(item: ApprovalRequest | Escalation, noun: str) -> None:
    """After commit, best effort: other reviewers' inboxes drop the item."""
    groups = list(item.approver_groups.values_list("pk", flat=True))
    event = {"type": f"{noun}.decided", noun: item.pk, "run": item.run_id, "status": item.status}
    transaction.on_commit(lambda: reviewers_notify(groups, event), robust=True)


def approval_decide(
    *,
    approval_id: int,
    decided_by: AnyUser,
    approve: bool,
    arguments: dict[str, Any] | None = None,
    comment: str = "",
    bulk: bool = False,
) -> ApprovalRequest:
    """Approve (with `arguments` replacing the requested ones, if given) or reject the request.
    The run it parked continues in the same transaction's wake; raises ApprovalError.
    `bulk`: one of several decided at once (`reviews_decide`): an approval must be one the
    policy lets through unopened (`bulk_refusal`), and can carry no edit."""
    with transaction.atomic():
        request = ApprovalRequest.objects.select_for_update().filter(pk=approval_id).first()
        request = _check_decider(request, decided_by, "approval request", "you asked for this call")
        if bulk and approve:
            if arguments is not None:
                raise ApprovalError("an edited call is approved on its own page, never in bulk")
            risk = (
                ApprovalRequest.objects.filter(pk=request.pk)
                .values_list("tool__risk", flat=True)
                .first()
            )
            if why := bulk_refusal(reasons=request.reasons, risk=risk):
                raise ApprovalError(why)
        if request.expires_at <= timezone.now():
            _expire(request)
        else:
            _decide(request, decided_by, approve, arguments, comment, bulk=bulk)
    if request.status == ApprovalStatus.EXPIRED:
        raise ApprovalError("this request expired before the decision; the run was told")
    return request


def _decide(
    request: ApprovalRequest,
    decided_by: AnyUser,
    approve: bool,
    arguments: dict[str, Any] | None,
    comment: str,
    *,
    bulk: bool = False,
) -> None:
    if approve and arguments is not None:
        arguments = _unhashed(arguments, original=request.arguments, what="edited arguments")
    edited = (
        approve and arguments is not None and arguments_hash(arguments) != (request.arguments_hash)
    )
    if edited:
        problem = _argument_problem(request, arguments)
        if problem is not None:
            raise ApprovalError(f"the edited arguments do not fit the tool: {problem}")
    final = (arguments if edited else request.arguments) if approve else None
    request.status = ApprovalStatus.APPROVED if approve else ApprovalStatus.REJECTED
    request.approved_arguments = final
    request.approved_hash = arguments_hash(final) if final is not None else ""
    # _check_decider let only an active user through, never an anonymous one.
    request.decided_by, request.decided_at = cast("User", decided_by), timezone.now()
    request.comment = comment
    request.save(
        update_fields=[
            "status",
            "approved_arguments",
            "approved_hash",
            "decided_by",
            "decided_at",
            "comment",
        ]
    )
    data: dict[str, Any] = {"tool": request.tool_name, "comment": comment, "edited": edited}
    if bulk:
        data["bulk"] = True
    if edited:
        data.update(requested=request.arguments, approved=final)
    audit_record(
        actor=decided_by,
        action=f"approval.{request.status}",
        target=Target.of(request),
        run=request.run_id,
        data=data,
    )
    _decided_in(request, "tool_call")
    signals.approval_decided.send(sender=ApprovalRequest, request=request)
    _notify_decided(request, "approval")


def _decided_in(item: ApprovalRequest | Escalation, kind: str) -> None:
    """How long the review took, counted once the decision commits."""
    waited = (item.decided_at - item.created_at).total_seconds() if item.decided_at else 0.0
    status = str(item.status)
    transaction.on_commit(
        lambda: metrics.APPROVAL_DECISIONS.labels(kind=kind, status=status).observe(waited)
    )


def _unhashed(edited: _Edited, *, original: object, what: str) -> _Edited:
    """A reviewer's edit with the personal values they were shown as keyed hashes put back
    (`pii.unpseudonymise`); a hash that stands for nothing at its place is refused, saying so,
    rather than sent on as if it were the value."""
    try:
        return cast(_Edited, unpseudonymise(edited, original=original))
    except UnknownPseudonym as exc:
        where = f" (at {exc.where})" if exc.where else ""
        raise ApprovalError(
            f"{exc.pseudonym} in the {what}{where} stands for a hidden personal value that "
            "was not there in what was asked: leave each hidden value where it was, or type "
            "the value itself"
        ) from None


def _expire(request: ApprovalRequest) -> None:
    request.status = ApprovalStatus.EXPIRED
    request.decided_at = timezone.now()
    request.save(update_fields=["status", "decided_at"])
    audit_record(
        actor=None,
        action="approval.expired",
        target=Target.of(request),
        run=request.run_id,
        data={"tool": request.tool_name, "expires_at": request.expires_at.isoformat()},
    )
    _decided_in(request, "tool_call")
    signals.approval_decided.send(sender=ApprovalRequest, request=request)
    _notify_decided(request, "approval")


def approvals_expire() -> int:
    """Expire every pending request past its time (the beat job); returns how many."""
    expired = 0
    due = ApprovalRequest.objects.filter(
        status=ApprovalStatus.PENDING, expires_at__lte=timezone.now()
    ).values_list("pk", flat=True)
    for pk in list(due[:500]):
        with transaction.atomic():
            request = (
                ApprovalRequest.objects.select_for_update(skip_locked=True)
                .filter(pk=pk, status=ApprovalStatus.PENDING)
                .first()
            )
            if request is not None:
                _expire(request)
                expired += 1
    return expired


def reviews_withdraw(*, run_id: int, actor: AnyUser) -> int:
    """The run was cancelled: its pending approval requests and held answer leave the inbox
    (in the caller's transaction). Returns how many."""
    withdrawn = 0
    for model, noun in ((ApprovalRequest, "approval"), (Escalation, "escalation")):
        for item in model.objects.select_for_update().filter(run_id=run_id, status="pending"):
            item.status = "withdrawn"
            item.decided_at = timezone.now()
            item.save(update_fields=["status", "decided_at"])
            audit_record(
                actor=actor,
                action=f"{noun}.withdrawn",
                target=Target.of(item),
                run=run_id,
            )
            _notify_decided(item, noun)
            withdrawn += 1
    return withdrawn


def escalation_create(
    *,
    run: Any,  # a Run and its Agent: models of the apps above (see approval_request_create)
    answer: str,
    citations: list[Any],
    confidence: Decimal | float | None,
    threshold: Decimal | float,
    agent: Any,
) -> Escalation:
    """Hold the run's final answer for review (inside the transaction that parks the run)."""
    escalation, created = Escalation.objects.get_or_create(
        run_id=run.pk,
        defaults={
            "agent_id": agent.pk if agent is not None else None,
            "requested_by_id": run.actor_id,
            "question": run.input,
            "answer": answer,
            "citations": citations,
            "confidence": confidence,
            "threshold": threshold,
        },
    )
    if created:
        escalation.approver_groups.set(agent.approver_groups.all())
        audit_record(
            actor=None,
            action="escalation.held",
            target=Target.of(escalation),
            run=run.pk,
            data={"confidence": str(confidence), "threshold": str(threshold)},
        )
        groups = list(escalation.approver_groups.values_list("pk", flat=True))
        transaction.on_commit(
            lambda: reviewers_notify(
                groups,
                {"type": "escalation.held", "escalation": escalation.pk, "run": run.pk},
            ),
            robust=True,
        )
    return escalation


def escalation_decide(
    *,
    escalation_id: int,
    decided_by: AnyUser,
    release: bool,
    answer: str | None = None,
    comment: str = "",
    bulk: bool = False,
) -> Escalation:
    """Release the held answer (or `answer`, an edit of it) to the user, or reject it.
    `bulk`: one of several decided at once (`reviews_decide`): only a rejection."""
    with transaction.atomic():
        escalation = Escalation.objects.select_for_update().filter(pk=escalation_id).first()
        escalation = _check_decider(escalation, decided_by, "escalation", "you asked the question")
        if bulk and release:
            raise ApprovalError(HELD_ANSWER_SINGLY)
        if release and answer is not None:
            # The reviewer read the question and the answer hashed; the user gets the values.
            answer = _unhashed(
                answer, original=[escalation.answer, escalation.question], what="answer"
            )
        edited = release and answer is not None and answer.strip() != escalation.answer.strip()
        if release and answer is not None and not answer.strip():
            raise ApprovalError("the released answer is empty")
        escalation.status = EscalationStatus.RELEASED if release else EscalationStatus.REJECTED
        escalation.released_answer = (
            (answer if edited and answer is not None else escalation.answer) if release else ""
        )
        escalation.decided_by = cast("User", decided_by)  # as in _decide
        escalation.decided_at = timezone.now()
        escalation.comment = comment
        escalation.save(
            update_fields=["status", "released_answer", "decided_by", "decided_at", "comment"]
        )
        audit_record(
            actor=decided_by,
            action=f"escalation.{escalation.status}",
            target=Target.of(escalation),
            run=escalation.run_id,
            data={"edited": edited, "comment": comment} | ({"bulk": True} if bulk else {}),
        )
        _decided_in(escalation, "answer")
        signals.escalation_decided.send(sender=Escalation, escalation=escalation)
        _notify_decided(escalation, "escalation")
    return escalation


# Bulk decisions: several items of the inbox decided at once, each through the single
# decision's service (its access check, four-eyes, expiry, audit event and resumed run), each in
# its own transaction: one refused item leaves the others decided.

BULK_LIMIT = 50

# The reasons a call may be approved for unopened: only the tool's own setting asked (its risk
# tier, "always"), or a note that asks nothing. Any other reason, a critical tool, untrusted
# content read before the call (an injected order may be in it), a guardrail, or a reason this
# list does not know yet, needs the call's own page.
_BULK_APPROVABLE = frozenset(
    {
        "tool.risk_write",
        "tool.risk_read",
        "tool.approval_always",
        "tool.approval_never",
        "budget.soft_limit",
    }
)
HELD_ANSWER_SINGLY = "a held answer is released only from its own page, once read"


def bulk_refusal(*, reasons: Iterable[str], risk: str | None) -> str | None:
    """Why a pending call (its policy `reasons`, its tool's `risk` tier now, None: the tool is
    gone) may not be approved in bulk, or None when it may. Rejecting in bulk is always allowed:
    nothing runs."""
    reasons = list(reasons)
    if risk is None:
        return "its tool no longer exists"
    if risk == "critical" or "tool.risk_critical" in reasons:
        return "a critical tool: approve it from its own page"
    if any(r.startswith("provenance.") for r in reasons):
        return "it follows untrusted content: read where it came from on its own page"
    if any(r.startswith("guardrail.") for r in reasons):
        return "a guardrail asked for a reviewer: decide it on its own page"
    if unknown := [r for r in reasons if r not in _BULK_APPROVABLE]:
        return f"its policy asks for a look on its own page ({', '.join(unknown)})"
    return None


@dataclass
class BulkOutcome:
    """What `reviews_decide` did: the items decided, and those refused with why (each still
    pending, or decided by someone else before)."""

    decided: list[ApprovalRequest | Escalation] = field(default_factory=list)
    refused: list[tuple[str, int, str]] = field(default_factory=list)  # (kind, id, why)


def reviews_decide(
    *,
    approvals: Iterable[int] = (),
    escalations: Iterable[int] = (),
    decided_by: AnyUser,
    approve: bool,
    comment: str = "",
) -> BulkOutcome:
    """Approve (release) or reject several pending items at once, each as `approval_decide` or
    `escalation_decide` would with `bulk=True`. Refuses the whole batch only when it is empty or
    larger than BULK_LIMIT."""
    approval_ids = list(dict.fromkeys(approvals))
    escalation_ids = list(dict.fromkeys(escalations))
    count = len(approval_ids) + len(escalation_ids)
    if not count:
        raise ApprovalError("select at least one item")
    if count > BULK_LIMIT:
        raise ApprovalError(f"select at most {BULK_LIMIT} items at once (you chose {count})")
    outcome = BulkOutcome()
    for approval_id in approval_ids:
        try:
            outcome.decided.append(
                approval_decide(
                    approval_id=approval_id,
                    decided_by=decided_by,
                    approve=approve,
                    comment=comment,
                    bulk=True,
                )
            )
        except ApprovalError as exc:
            outcome.refused.append(("approval", approval_id, str(exc)))
    for escalation_id in escalation_ids:
        try:
            outcome.decided.append(
                escalation_decide(
                    escalation_id=escalation_id,
                    decided_by=decided_by,
                    release=approve,
                    comment=comment,
                    bulk=True,
                )
            )
        except ApprovalError as exc:
            outcome.refused.append(("escalation", escalation_id, str(exc)))
    return outcome
