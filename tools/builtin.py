"""Built-in Python tools for the demo scenarios, each acting on real tables: the IT help desk's
tickets (a write tool and a read tool)."""

from tools.models import DemoTicket
from tools.registry import python_tool


@python_tool(
    name="create_ticket",
    description="Open an IT help-desk ticket for a problem the user reports.",
    parameters={
        "type": "object",
        "properties": {
            "title": {"type": "string", "description": "what is wrong, in a few words"},
            "priority": {"type": "string", "enum": ["low", "normal", "high"]},
        },
        "required": ["title"],
        "additionalProperties": False,
    },
    risk="write",
)
def create_ticket(arguments: dict, *, idempotency_key: str) -> dict:
    ticket = DemoTicket.objects.create(
        title=arguments["title"],
        priority=arguments.get("priority", "normal"),
        idempotency_key=idempotency_key,
    )
    return {"ticket": ticket.pk, "status": "open", "priority": ticket.priority}


@python_tool(
    name="get_ticket_status",
    description="Look up the status of an existing IT help-desk ticket by its number.",
    parameters={
        "type": "object",
        "properties": {"ticket": {"type": "integer", "description": "the ticket number"}},
        "required": ["ticket"],
        "additionalProperties": False,
    },
)
def get_ticket_status(arguments: dict, *, idempotency_key: str) -> dict:
    ticket = DemoTicket.objects.filter(pk=arguments["ticket"]).first()
    if ticket is None:
        return {"ticket": arguments["ticket"], "status": "not found"}
    return {"ticket": ticket.pk, "status": "open", "title": ticket.title}
