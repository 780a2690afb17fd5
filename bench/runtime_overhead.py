"""Per-step platform overhead of a scripted tool loop: Warden, LangGraph, and the floor.

    make bench-runtime        (installs requirements-bench.txt, then runs this)
    .venv/bin/python bench/runtime_overhead.py --rounds 5 --runs 10

Starts its own embedded PostgreSQL and Redis. The model is a litellm custom provider that
answers in 0 ms: five turns that each call one read tool, then an answer, so one run is 11 steps
(6 model, 5 tool). The three contenders, interleaved round by round:

- warden: the real orchestrator (`run_execute`), each step committed with its messages, totals,
  lease renewal and audit event, and published to the run's channel group; the run does not
  stream tokens, like the other two (warden-stream, reported apart, does);
- langgraph: the same loop as a LangGraph StateGraph (model node, tool node) with
  `PostgresSaver` on the same PostgreSQL, invoked with durability="sync";
- floor: bare `litellm.completion` calls and the tool, plus one INSERT (autocommit) per step.

warden-traced is warden with OpenTelemetry tracing on (telemetry/tracing.py), its spans exported
over OTLP/HTTP to a receiver in this process that reads and drops them; warden has it off.

Prints the median milliseconds per step of each, and the ratios.
"""

import argparse
import os
import statistics
import time

from _env import embedded

TOOL_TURNS = 5
STEPS = 2 * TOOL_TURNS + 1
# What LangGraph and the floor offer the model (Warden offers the registered tool's own).
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_ticket_status",
            "description": "d",
            "parameters": {"type": "object"},
        },
    }
]


def mock_provider():
    """A 0 ms model: calls get_ticket_status until it has TOOL_TURNS results, then answers."""
    import litellm
    from litellm import ModelResponse, Usage
    from litellm.types.utils import GenericStreamingChunk

    def decide(messages):
        results = sum(1 for m in messages if m.get("role") == "tool")
        return results >= TOOL_TURNS, results

    class Mock(litellm.CustomLLM):
        def completion(self, model, messages, *args, **kwargs):
            done, n = decide(messages)
            message = {"role": "assistant", "content": "All checked." if done else None}
            if not done:
                message["tool_calls"] = [
                    {
                        "id": f"c{n}",
                        "type": "function",
                        "function": {
                            "name": "get_ticket_status",
                            "arguments": f'{{"ticket": {n + 1}}}',
                        },
                    }
                ]
            return ModelResponse(
                model=model,
                choices=[
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": "stop" if done else "tool_calls",
                    }
                ],
                usage=Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15),
            )

        async def acompletion(self, *args, **kwargs):
            return self.completion(*args, **kwargs)

        async def astreaming(self, *args, **kwargs):
            for chunk in self.streaming(*args, **kwargs):
                yield chunk

        def streaming(self, model, messages, *args, **kwargs):
            done, n = decide(messages)
            usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
            if done:
                yield GenericStreamingChunk(
                    text="All checked.",
                    tool_use=None,
                    is_finished=True,
                    finish_reason="stop",
                    usage=usage,
                    index=0,
                )
            else:
                yield GenericStreamingChunk(
                    text="",
                    is_finished=True,
                    finish_reason="tool_calls",
                    usage=usage,
                    index=0,
                    tool_use={
                        "id": f"c{n}",
                        "type": "function",
                        "index": 0,
                        "function": {
                            "name": "get_ticket_status",
                            "arguments": f'{{"ticket": {n + 1}}}',
                        },
                    },
                )

    litellm.custom_provider_map = [
        *[p for p in (litellm.custom_provider_map or []) if p["provider"] != "bench-mock"],
        {"provider": "bench-mock", "custom_handler": Mock()},
    ]


def warden_setup():
    from django.contrib.auth import get_user_model

    from agents.models import Agent, Deployment, ModelRoute
    from audit.services import SYSTEM
    from governance.models import Action
    from governance.services import access_grant
    from tools.models import Tool

    route = ModelRoute.objects.create(name="bench", num_retries=0)
    Deployment.objects.create(route=route, position=1, model="bench-mock/zero")
    agent = Agent.objects.create(
        name="Bench",
        slug="bench",
        route=route,
        max_steps=50,
        max_tokens_per_run=10**6,
    )
    Tool.objects.filter(name="get_ticket_status").update(enabled=True)
    agent.tools.set(Tool.objects.filter(name="get_ticket_status"))
    user = get_user_model().objects.create_user("bench")
    # Governed as in production: the user is granted the agent, its route and its tool (and
    # the route is external by default, so personal data is redacted before each call).
    for obj in (agent, route, *agent.tools.all()):
        access_grant(obj=obj, holder=user, action=Action.USE, actor=SYSTEM)
    return agent, user


def warden_run(agent, user, stream: bool = False) -> None:
    from django.db import transaction

    from agents.models import Conversation, Message, Run, RunState
    from agents.orchestrator import run_execute
    from agents.versions import version_serving

    with transaction.atomic():  # as run_start writes them (less its audit event and enqueue)
        conversation = Conversation.objects.create(owner=user, agent=agent)
        run = Run.objects.create(
            agent=agent,
            conversation=conversation,
            actor=user,
            input="check",
            stream=stream,
            version=version_serving(agent=agent, conversation=conversation),
        )
        Message.objects.create(conversation=conversation, run=run, role="user", content="check")
    run_execute(run_id=run.pk, holder="bench")
    state = Run.objects.values_list("state", flat=True).get(pk=run.pk)
    assert state == RunState.SUCCEEDED, state


def langgraph_setup(conninfo: str):
    from typing import Annotated, TypedDict

    import litellm
    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.graph import END, START, StateGraph
    from langgraph.graph.message import add_messages
    from psycopg import Connection

    from tools.builtin import get_ticket_status

    class State(TypedDict):
        messages: Annotated[list, add_messages]

    def to_dicts(messages):
        out = []
        for m in messages:
            role = {"human": "user", "ai": "assistant", "tool": "tool"}[m.type]
            entry = {"role": role, "content": m.content or None}
            if m.type == "ai" and m.tool_calls:
                entry["tool_calls"] = [
                    {
                        "id": c["id"],
                        "type": "function",
                        "function": {
                            "name": c["name"],
                            "arguments": __import__("json").dumps(c["args"]),
                        },
                    }
                    for c in m.tool_calls
                ]
            if m.type == "tool":
                entry["tool_call_id"] = m.tool_call_id
            out.append(entry)
        return out

    def model(state):
        response = litellm.completion(
            model="bench-mock/zero",
            messages=to_dicts(state["messages"]),
            tools=TOOLS,
            _skip_mcp_handler=True,
        )
        message = response.choices[0].message
        calls = [
            {
                "id": c.id,
                "name": c.function.name,
                "args": __import__("json").loads(c.function.arguments),
            }
            for c in message.tool_calls or []
        ]
        return {
            "messages": [
                {"role": "assistant", "content": message.content or "", "tool_calls": calls}
            ]
        }

    def tool(state):
        call = state["messages"][-1].tool_calls[0]
        result = get_ticket_status(call["args"], idempotency_key="")
        return {"messages": [{"role": "tool", "content": str(result), "tool_call_id": call["id"]}]}

    graph = StateGraph(State)
    graph.add_node("model", model)
    graph.add_node("tool", tool)
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", lambda s: "tool" if s["messages"][-1].tool_calls else END)
    graph.add_edge("tool", "model")
    connection = Connection.connect(conninfo, autocommit=True, prepare_threshold=0)
    saver = PostgresSaver(connection)
    saver.setup()
    return graph.compile(checkpointer=saver)


def langgraph_run(app, n: int) -> None:
    result = app.invoke(
        {"messages": [{"role": "user", "content": "check"}]},
        config={"configurable": {"thread_id": f"t{n}"}},
        durability="sync",
    )
    assert result["messages"][-1].content == "All checked."


def floor_run(connection) -> None:
    import litellm

    from tools.builtin import get_ticket_status

    messages = [{"role": "user", "content": "check"}]
    step = 0
    while True:
        response = litellm.completion(
            model="bench-mock/zero", messages=messages, tools=TOOLS, _skip_mcp_handler=True
        )
        message = response.choices[0].message
        connection.execute("INSERT INTO bench_steps (step, body) VALUES (%s, %s)", [step, "model"])
        step += 1
        if not message.tool_calls:
            return
        call = message.tool_calls[0]
        messages.append({"role": "assistant", "content": None, "tool_calls": [call.model_dump()]})
        result = get_ticket_status(
            __import__("json").loads(call.function.arguments), idempotency_key=""
        )
        messages.append({"role": "tool", "tool_call_id": call.id, "content": str(result)})
        connection.execute("INSERT INTO bench_steps (step, body) VALUES (%s, %s)", [step, "tool"])
        step += 1


def otlp_sink() -> str:
    """An OTLP/HTTP endpoint on loopback that takes every export and keeps nothing."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=10, help="runs per contender per round")
    args = parser.parse_args()

    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_sink()
    with embedded(redis=True) as servers:
        from django.core.management import call_command
        from psycopg import Connection

        from telemetry import tracing

        tracing.configure()  # on for warden-traced only (its flag, switched per contender)
        tracing.ENABLED = False

        call_command("migrate", verbosity=0)
        import agents.gateway.client  # noqa: F401 - registers warden-local first

        mock_provider()
        conninfo = servers[0].conninfo()
        floor = Connection.connect(conninfo, autocommit=True)
        floor.execute("CREATE TABLE bench_steps (id bigserial PRIMARY KEY, step int, body text)")
        agent, user = warden_setup()
        graph = langgraph_setup(conninfo)
        warden_run(agent, user)  # warm every path once
        tracing.ENABLED = True
        warden_run(agent, user)
        tracing.ENABLED = False
        langgraph_run(graph, -1)
        floor_run(floor)

        per_step: dict[str, list[float]] = {
            "warden": [],
            "langgraph": [],
            "floor": [],
            "warden-stream": [],
            "warden-traced": [],
        }
        counter = 0
        for _ in range(args.rounds):
            for name in per_step:
                tracing.ENABLED = name == "warden-traced"
                began = time.perf_counter()
                for _ in range(args.runs):
                    counter += 1
                    if name.startswith("warden"):
                        warden_run(agent, user, stream=name == "warden-stream")
                    elif name == "langgraph":
                        langgraph_run(graph, counter)
                    else:
                        floor_run(floor)
                if tracing.ENABLED:
                    tracing.flush()  # its spans' export is part of its time, not the next one's
                    tracing.ENABLED = False
                per_step[name].append((time.perf_counter() - began) * 1000 / (args.runs * STEPS))
        medians = {name: statistics.median(values) for name, values in per_step.items()}
        print(
            f"{STEPS}-step tool loop, 0 ms model, {args.rounds} interleaved rounds of "
            f"{args.runs} runs each, {os.cpu_count()} CPUs"
        )
        print(f"{'':>10} {'ms/step (median)':>17} {'overhead over floor':>20}")
        for name, value in medians.items():
            overhead = value - medians["floor"]
            print(f"{name:>10} {value:>17.2f} {overhead:>17.2f} ms")
        w, lg = medians["warden"] - medians["floor"], medians["langgraph"] - medians["floor"]
        print(
            f"warden/langgraph per-step time: {medians['warden'] / medians['langgraph']:.2f}; "
            f"overhead ratio (each minus the floor): {w / lg:.2f}"
        )
        traced = medians["warden-traced"] - medians["floor"]
        print(f"tracing on/off, Warden's overhead: {traced / w:.2f} ({traced - w:+.2f} ms/step)")


if __name__ == "__main__":
    main()
