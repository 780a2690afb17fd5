from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agents"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from agents.models import Agent, Deployment, ModelRoute

        # Field-level history of the configuration (the key is a reference, never a secret).
        auditlog.register(Agent)
        auditlog.register(ModelRoute)
        auditlog.register(Deployment)
