from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agents"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from agents.knowledge import tools  # noqa: F401 - registers knowledge_search
        from agents.models import Agent, Deployment, KnowledgeBase, ModelRoute

        # Field-level history of the configuration (the key is a reference, never a secret).
        auditlog.register(Agent)
        auditlog.register(ModelRoute)
        auditlog.register(Deployment)
        auditlog.register(KnowledgeBase, exclude_fields=["embedded_with"])
