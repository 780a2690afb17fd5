from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agents"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from agents.knowledge import tools  # noqa: F401 - registers knowledge_search
        from agents.models import Agent, Deployment, KnowledgeBase, ModelRoute
        from agents.services import run_approval_decided, run_escalation_decided
        from governance import hooks

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
