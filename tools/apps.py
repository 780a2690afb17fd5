from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ToolsConfig(AppConfig):
    name = "tools"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from tools import builtin  # noqa: F401 - registers the built-in Python tools
        from tools.models import MCPServer, Tool
        from tools.registry import python_tools_sync

        # Field-level history of the registry (secrets are audited by secret_set, by name only).
        auditlog.register(Tool)
        auditlog.register(MCPServer)

        # Every app is ready (so every app's tools are registered) before any migrate runs.
        post_migrate.connect(python_tools_sync, sender=self, dispatch_uid="tools.python_sync")
