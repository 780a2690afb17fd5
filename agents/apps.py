from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agents"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from agents.knowledge import tools  # noqa: F401 - registers knowledge_search
        from agents.models import Agent, Deployment, KnowledgeBase, ModelRoute
        from agents.services import run_approval_decided, run_escalation_decided
        from governance import hooks

        self._connect_revocation()

        # A decision in governance continues (or ends) the run it parked.
        if run_approval_decided not in hooks.approval_decided:
            hooks.approval_decided.append(run_approval_decided)
            hooks.escalation_decided.append(run_escalation_decided)
        hooks.approver_relations.add("approvable_agents")  # Agent.approver_groups

        # Field-level history of the configuration (the key is a reference, never a secret).
        auditlog.register(Agent)
        auditlog.register(ModelRoute)
        auditlog.register(Deployment)
        auditlog.register(KnowledgeBase, exclude_fields=["embedded_with"])

    def _connect_revocation(self) -> None:
        """A user's open websockets and event streams check their access again as soon as it
        may have ended (agents.revocation)."""
        from django.conf import settings
        from django.contrib.auth import get_user_model
        from django.contrib.auth.signals import user_logged_out
        from django.db.models.signals import m2m_changed, post_delete, post_save

        from agents import revocation

        user = settings.AUTH_USER_MODEL
        post_save.connect(revocation.user_saved, sender=user, dispatch_uid="revocation.saved")
        post_delete.connect(revocation.user_deleted, sender=user, dispatch_uid="revocation.deleted")
        user_logged_out.connect(revocation.user_signed_out, dispatch_uid="revocation.signed_out")
        m2m_changed.connect(
            revocation.groups_changed,
            sender=get_user_model().groups.through,
            dispatch_uid="revocation.groups",
        )
