"""`knowledge_search`: the agent looks something up in its knowledge bases, as the user."""

from __future__ import annotations

from tools.registry import ToolContext, python_tool


@python_tool(
    name="knowledge_search",
    description="Search the agent's knowledge bases (policies, handbooks, documentation) "
    "for passages about a question.",
    parameters={
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 1, "description": "what to look up"},
            "limit": {"type": "integer", "minimum": 1, "maximum": 10},
        },
        "required": ["query"],
        "additionalProperties": False,
    },
)
def knowledge_search_tool(arguments: dict, *, idempotency_key: str, context: ToolContext) -> dict:
    from agents.knowledge.retrieval import knowledge_search
    from agents.knowledge.selectors import conversation_base_ids
    from agents.models import KnowledgeBase, Run
    from agents.versions import served_ids

    # An MCP client's own call (no agent): every knowledge base the user may read, but no
    # conversation's files. An agent's run: its agent's and its conversation's files.
    agent = context.agent
    bases = None
    if agent is not None:
        runs = Run.objects.filter(pk=context.run_id or 0)
        own = KnowledgeBase.objects.filter(
            pk__in=served_ids(agent, "knowledge_bases"), conversation__isnull=True
        )
        bases = list(own.values_list("pk", flat=True))
        bases += conversation_base_ids(runs.values_list("conversation_id", flat=True).first())
    passages = knowledge_search(
        actor=context.actor,
        query=arguments["query"],
        knowledge_bases=bases,  # and, inside, only those the user may read
        k=arguments.get("limit", 4),
    )
    return {
        "passages": [
            {
                "text": p.text,
                "title": p.title,
                "heading": p.heading,
                "document": p.document,
                "position": p.position,
            }
            for p in passages
        ]
    }
