"""A scripted OpenAI-compatible server for tests: real HTTP, so litellm, its retries, timeouts
and streaming are exercised as they are against a provider.

Each deployment is a path prefix (`/primary/v1/chat/completions`) with a queue of scripted
replies; when its queue is empty it answers with its default. Every request body is recorded.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    text: str = ""
    tool_calls: list[tuple[str, str]] = field(default_factory=list)  # (name, raw JSON args)
    delay: float = 0.0
    pace: float = 0.0  # seconds between streamed chunks
    gate: threading.Event | None = None  # streaming waits for it after `gate_after` chunks
    gate_after: int = 0
    prompt_tokens: int = 11
    completion_tokens: int = 7

    @classmethod
    def say(cls, text: str, **kwargs) -> Reply:
        return cls(text=text, **kwargs)

    @classmethod
    def call(cls, name: str, arguments: dict | str, **kwargs) -> Reply:
        raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
        return cls(tool_calls=[(name, raw)], **kwargs)

    @classmethod
    def fail(cls, status: int) -> Reply:
        return cls(status=status)

    @classmethod
    def hang(cls, seconds: float) -> Reply:
        return cls(delay=seconds, text="too late")


class ScriptedModelServer:
    def __init__(self) -> None:
        self.queues: dict[str, deque[Reply]] = defaultdict(deque)
        self.defaults: dict[str, Reply] = {}
        self.requests: dict[str, list[dict]] = defaultdict(list)
        self.embedding_dimensions = 384
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                name = self.path.strip("/").split("/", 1)[0]
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if self.path.rstrip("/").endswith("/embeddings"):
                    server.requests[f"{name}:embeddings"].append(body)
                    payload = json.dumps(_embeddings(body, server.embedding_dimensions)).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                reply = server._next(name, body)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.status != 200:
                    payload = json.dumps(
                        {"error": {"message": f"scripted {reply.status}", "type": "server_error"}}
                    ).encode()
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if body.get("stream"):
                    self._stream(body, reply)
                else:
                    payload = json.dumps(_completion(body, reply)).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)

            def _stream(self, body: dict, reply: Reply) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for n, chunk in enumerate(_chunks(body, reply), start=1):
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                    if reply.gate is not None and n == reply.gate_after:
                        reply.gate.wait(60)
                    if reply.pace:
                        time.sleep(reply.pace)
                self.wfile.write(b"data: [DONE]\n\n")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def base(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}/v1"

    def script(self, name: str, *replies: Reply) -> None:
        with self._lock:
            self.queues[name].extend(replies)

    def default(self, name: str, reply: Reply) -> None:
        self.defaults[name] = reply

    def count(self, name: str) -> int:
        return len(self.requests[name])

    def _next(self, name: str, body: dict) -> Reply:
        with self._lock:
            self.requests[name].append(body)
            if self.queues[name]:
                return self.queues[name].popleft()
        return self.defaults.get(name, Reply.say(f"{name} says hello"))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _embeddings(body: dict, dimensions: int) -> dict:
    """Deterministic unit vectors, one per input text (the same text, the same vector)."""
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = []
    for index, text in enumerate(texts):
        seed = hashlib.sha256(str(text).encode()).digest()
        raw = [(seed[i % 32] - 127.5) / 127.5 + (i % 7) / 50 for i in range(dimensions)]
        norm = sum(x * x for x in raw) ** 0.5
        data.append({"object": "embedding", "index": index, "embedding": [x / norm for x in raw]})
    return {
        "object": "list",
        "data": data,
        "model": body.get("model", "scripted"),
        "usage": {"prompt_tokens": len(texts), "total_tokens": len(texts)},
    }


def _message(reply: Reply) -> dict:
    message: dict = {"role": "assistant", "content": reply.text or None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
            for i, (n, a) in enumerate(reply.tool_calls)
        ]
    return message


def _usage(reply: Reply) -> dict:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def _completion(body: dict, reply: Reply) -> dict:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "scripted"),
        "choices": [
            {
                "index": 0,
                "message": _message(reply),
                "finish_reason": "tool_calls" if reply.tool_calls else "stop",
            }
        ],
        "usage": _usage(reply),
    }


def _chunks(body: dict, reply: Reply):
    base = {
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model", "scripted"),
    }
    if reply.tool_calls:
        calls = [
            {
                "index": i,
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": n, "arguments": a},
            }
            for i, (n, a) in enumerate(reply.tool_calls)
        ]
        yield {
            **base,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "tool_calls": calls},
                    "finish_reason": None,
                }
            ],
        }
        finish = "tool_calls"
    else:
        words = reply.text.split(" ")
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            yield {
                **base,
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
            }
        finish = "stop"
    yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
    if (body.get("stream_options") or {}).get("include_usage"):
        yield {**base, "choices": [], "usage": _usage(reply)}
