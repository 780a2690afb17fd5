from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.services import SYSTEM
from tools.mcp_servers import MCPUnavailable, mcp_server_sync
from tools.models import MCPServer


class Command(BaseCommand):
    help = (
        "List the tools of MCP servers (all, or those named) and create or update their Tool "
        "rows: new tools arrive disabled, tools gone from a server are disabled."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("names", nargs="*", help="MCP server names (default: all)")

    def handle(self, *args: Any, names: list[str], **options: Any) -> None:
        servers = MCPServer.objects.all()
        if names:
            servers = servers.filter(name__in=names)
            missing = sorted(set(names) - set(servers.values_list("name", flat=True)))
            if missing:
                raise CommandError(f"no MCP server named {', '.join(missing)}")
        failed = 0
        for server in servers:
            try:
                report = mcp_server_sync(server=server, actor=SYSTEM)
            except MCPUnavailable as error:
                failed += 1
                self.stderr.write(f"{server.name}: {error}")
                continue
            self.stdout.write(f"{server.name}: {report}")
        if failed:
            raise CommandError(f"{failed} server(s) could not be synced")
