from django.apps import AppConfig


class AgentsConfig(AppConfig):
    """The one place agents connects to what the apps below it send (their signals.py)."""

    name = "agents"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from agents.knowledge import tools  # noqa: F401 - registers knowledge_search
        from agents.models import (
            Agent,
            Deployment,
            EvaluationCase,
            EvaluationSet,
            KnowledgeBase,
            ModelRoute,
        )
        from agents.services import run_approval_decided, run_escalation_decided
        from governance import signals
        from governance.models import ApprovalRequest, Escalation

        self._connect_revocation()
        self._connect_warm_up()
        self._connect_answer_cache()

        # A decision in governance continues (or ends) the run it parked, in its transaction.
        signals.approval_decided.connect(
            run_approval_decided, sender=ApprovalRequest, dispatch_uid="agents.approval_decided"
        )
        signals.escalation_decided.connect(
            run_escalation_decided, sender=Escalation, dispatch_uid="agents.escalation_decided"
        )

        # Field-level history of the configuration (the key is a reference, never a secret);
        # which tools and knowledge bases an agent has, and whom it asks, are configuration too.
        auditlog.register(
            Agent, m2m_fields={"tools", "knowledge_bases", "delegates", "approver_groups"}
        )
        auditlog.register(ModelRoute)
        auditlog.register(Deployment)
        auditlog.register(KnowledgeBase, exclude_fields=["embedded_with"])
        # Evaluation sets and their cases, as the console edits them (agents.evaluation.console).
        auditlog.register(EvaluationSet)
        auditlog.register(EvaluationCase)

    def _connect_answer_cache(self) -> None:
        """A document deleted however (removed from a chat, in the admin, with its knowledge
        base) drops the kept answers that could read its base (agents.answer_cache)."""
        from django.db.models.signals import post_delete

        from agents.answer_cache import document_deleted
        from agents.models import Document

        post_delete.connect(document_deleted, sender=Document, dispatch_uid="answer_cache.document")

    def _connect_warm_up(self) -> None:
        """A worker loads its models at boot, before it answers a ping (agents.warm)."""
        from celery.signals import worker_init

        from agents.warm import warm_worker

        worker_init.connect(warm_worker, weak=False, dispatch_uid="agents.warm")

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
