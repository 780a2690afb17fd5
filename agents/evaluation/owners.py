"""Who may see and start evaluations: the agent's owners, as the console's feedback rule has
them (agents.feedback): those who may change the agent (the model-wide `agents.change_agent`
permission, or guardian's object permission on that agent, directly or through a group), and
who may also use it, since every case is a real run as the person who starts the evaluation
(a denial on the agent shuts them out here too). One rule for the console and the API; a set,
an evaluation or a version outside it is answered as missing (NoAccess)."""

from __future__ import annotations

from django.db.models import QuerySet

from agents.models import Agent, AgentVersion, EvaluationRun, EvaluationSet
from governance.access import NoAccess, is_active, restrict
from governance.models import Action


def evaluation_agents(user) -> QuerySet[Agent]:
    """The agents whose evaluations `user` may see and start."""
    from guardian.shortcuts import get_objects_for_user

    if not is_active(user):
        return Agent.objects.none()
    owned = get_objects_for_user(user, "agents.change_agent", klass=Agent, accept_global_perms=True)
    return restrict(owned, user, Action.USE)


def evaluation_sets_of(user) -> QuerySet[EvaluationSet]:
    return EvaluationSet.objects.filter(agent__in=evaluation_agents(user))


def evaluations_of(user) -> QuerySet[EvaluationRun]:
    return EvaluationRun.objects.filter(set__agent__in=evaluation_agents(user))


def _number(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise NoAccess("no such thing")
    text = str(value)
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise NoAccess("no such thing")
    return int(text)


def access_evaluation_set(user, set_id: object) -> EvaluationSet:
    """The evaluation set `user` may evaluate, with its agent; NoAccess otherwise."""
    try:
        found = evaluation_sets_of(user).select_related("agent").get(pk=_number(set_id))
    except (EvaluationSet.DoesNotExist, NoAccess):
        raise NoAccess("no such evaluation set") from None
    return found


def access_evaluation(user, evaluation_id: object) -> EvaluationRun:
    """The evaluation `user` may see, with its set, agent and version; NoAccess otherwise."""
    try:
        found = (
            evaluations_of(user)
            .select_related("set__agent", "version", "started_by")
            .get(pk=_number(evaluation_id))
        )
    except (EvaluationRun.DoesNotExist, NoAccess):
        raise NoAccess("no such evaluation") from None
    return found


def version_of(evaluation_set: EvaluationSet, version_id: object | None) -> AgentVersion | None:
    """The version `version_id` of the set's agent, its live version when None, or None when it
    is not one of that agent's (or the agent has none yet)."""
    agent = evaluation_set.agent
    if version_id is None:
        return agent.live_version
    try:
        number = _number(version_id)
    except NoAccess:
        return None
    return AgentVersion.objects.filter(agent=agent, pk=number).first()
