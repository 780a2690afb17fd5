from django.apps import AppConfig


class ToolsConfig(AppConfig):
    name = "tools"

    def ready(self) -> None:
        from tools import demo  # noqa: F401 - registers the demo Python tools
