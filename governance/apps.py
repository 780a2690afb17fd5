from django.apps import AppConfig


class GovernanceConfig(AppConfig):
    name = "governance"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from governance.models import Budget, TeamPolicy

        # Field-level history of governance settings (grants and decisions have their own
        # audit events, written by their services).
        auditlog.register(Budget)
        auditlog.register(TeamPolicy)
