from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ToolsConfig(AppConfig):
    """The one place tools connects to what the apps below it send (their signals.py)."""

    name = "tools"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from governance import signals
        from governance.models import ApprovalRequest
        from tools import builtin  # noqa: F401 - registers the built-in Python tools
        from tools.models import MCPServer, Tool
        from tools.registry import python_tools_sync
        from tools.services import tool_argument_problem

        # A reviewer's edit of a call's arguments is checked against the tool's schema.
        signals.arguments_edited.connect(
            tool_argument_problem, sender=ApprovalRequest, dispatch_uid="tools.arguments_edited"
        )

        # Field-level history of the registry (secrets are audited by secret_set, by name only).
        auditlog.register(Tool)
        auditlog.register(MCPServer)

        # Every app is ready (so every app's tools are registered) before any migrate runs.
        post_migrate.connect(python_tools_sync, sender=self, dispatch_uid="tools.python_sync")
