"""`warden-local`: the offline model, a litellm custom provider, deterministic and CPU-only.

What it is, honestly: not a language model. It routes a request to one of the tools it is
offered and fills the call's arguments from the request, and it answers by stating tool results
or by quoting the passages in its prompt. It says "I don't know" when nothing supports an
answer.

- Tool routing scores each offered tool by the cosine similarity of the request to the tool's
  name and description (all-MiniLM-L6-v2), plus whether the request's action verb matches the
  tool's, minus a penalty when the request lacks what the tool's required arguments need. The
  best tool above ROUTE_THRESHOLD is called; only offered tools are ever called.
- Arguments come from the JSON Schema: enums by the value named in the text, numbers, dates,
  emails, quoted strings, and free text (the request itself) for the remaining strings.
- Answers: after a tool result, a sentence stating it; otherwise the passage sentences most
  similar to the question (above ANSWER_THRESHOLD) with their citation markers. Of a line
  Warden marked as data, only the data counts; a line saying a passage was withheld is never
  quoted (and the withheld passage never reached the model).
- Confidence is the winning similarity, mapped to 0..1, and is returned with every answer
  (`_hidden_params["warden_confidence"]`) for the platform's escalation.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import uuid

ROUTE_THRESHOLD = 0.30
ANSWER_THRESHOLD = 0.45
# How much the question's own words found in the answer's sentence add to its support: a
# sentence that names what was asked about ("badge", "collect") supports the answer more than
# its meaning's similarity alone says (tuned on tests/data/handbook_questions.json's `tune`).
WORDS_WEIGHT = 0.25
_STOP_WORDS = """a about an and are as at be by can could do does for from get got have how i if
    in is it its me much my of on or our should so than that the their there this to was we what
    when where which who why will with would you your"""
_STOP = frozenset(_STOP_WORDS.split())
PROVIDER = "warden-local"
# What it says when nothing it was given supports an answer (agents.drift counts it a refusal).
NO_ANSWER = "I don't know: nothing I was given answers that."

_VERBS = {
    "create": "create",
    "open": "create",
    "raise": "create",
    "report": "create",
    "log": "create",
    "file": "create",
    "new": "create",
    "add": "create",
    "make": "create",
    "submit": "create",
    "claim": "create",
    "reimburse": "create",
    "register": "create",
    "get": "read",
    "check": "read",
    "look": "read",
    "lookup": "read",
    "show": "read",
    "find": "read",
    "status": "read",
    "update": "read",
    "list": "read",
    "how": "read",
    "what": "read",
    "is": "read",
    "any": "read",
    "tell": "read",
    "book": "reserve",
    "reserve": "reserve",
    "schedule": "reserve",
    "send": "send",
    "email": "send",
    "mail": "send",
    "write": "send",
    "message": "send",
    "cancel": "delete",
    "delete": "delete",
    "remove": "delete",
}
_WORD = re.compile(r"[a-z]+")
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?![\w.])")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
_QUOTED = re.compile(r"[\"“']([^\"”']{2,})[\"”']")
_PASSAGE = re.compile(r"^\s*\[(\d+)\]\s*(.+)$", re.MULTILINE)
# Data Warden marked as such (agents.provenance): the text between a run's markers.
_DATA = re.compile(r"\u27e6data ([a-z]+)\u27e7(.*?)\u27e6/data \1\u27e7", re.DOTALL)


def register() -> None:
    """Make `warden-local/<anything>` a litellm model (called by the gateway at import)."""
    import litellm
    from litellm.types.llms.custom_llm import CustomLLMItem

    handler: CustomLLMItem = {"provider": PROVIDER, "custom_handler": _handler()}
    litellm.custom_provider_map = [
        *[p for p in (litellm.custom_provider_map or []) if p.get("provider") != PROVIDER],
        handler,
    ]


def _handler():
    import litellm
    from litellm.types.utils import GenericStreamingChunk

    class WardenLocal(litellm.CustomLLM):
        def completion(self, model, messages, *args, optional_params=None, **kwargs):
            return _response(model, messages, (optional_params or {}).get("tools") or [])

        async def acompletion(self, *args, **kwargs):
            return self.completion(*args, **kwargs)

        def streaming(self, model, messages, *args, optional_params=None, **kwargs):
            decision = decide(messages, (optional_params or {}).get("tools") or [])
            usage = _usage(messages, decision)
            if decision.tool is not None:
                yield GenericStreamingChunk(
                    text="",
                    is_finished=True,
                    finish_reason="tool_calls",
                    usage=usage,
                    index=0,
                    tool_use={
                        "id": decision.call_id,
                        "type": "function",
                        "index": 0,
                        "function": {"name": decision.tool, "arguments": decision.arguments},
                    },
                )
                return
            words = decision.text.split(" ")
            for i, word in enumerate(words):
                last = i == len(words) - 1
                yield GenericStreamingChunk(
                    text=word if i == 0 else " " + word,
                    tool_use=None,
                    is_finished=last,
                    finish_reason="stop" if last else "",
                    usage=usage if last else None,
                    index=0,
                )

        async def astreaming(self, *args, **kwargs):
            for chunk in self.streaming(*args, **kwargs):
                yield chunk

    return WardenLocal()


class Decision:
    def __init__(
        self,
        *,
        text: str = "",
        tool: str | None = None,
        arguments: str = "",
        confidence: float = 0.0,
    ):
        self.text, self.tool, self.arguments, self.confidence = text, tool, arguments, confidence
        self.call_id = (
            f"call_{uuid.uuid5(uuid.NAMESPACE_URL, tool + arguments).hex[:12]}" if tool else ""
        )


def decide(messages: list[dict], tools: list[dict]) -> Decision:
    """The model: what to say or which tool to call, given the conversation so far."""
    last = messages[-1] if messages else {"role": "user", "content": ""}
    if last.get("role") == "tool":
        return _state_tool_results(messages)
    # The request is the user's latest message (passages may come after it, as a system one).
    request = next((_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
    if tools:
        routed = route(request, tools)
        if routed is not None:
            return routed
    return answer(request, _passages(messages))


def route(request: str, tools: list[dict]) -> Decision | None:
    from agents.embedding import embed

    specs = [t["function"] for t in tools if t.get("type") == "function"]
    if not specs or not request.strip():
        return None
    texts = [f"{s['name'].replace('_', ' ')}: {s.get('description', '')}" for s in specs]
    vectors = embed([request, *texts, *(s["name"].replace("_", " ") for s in specs)])
    req, described, named = vectors[0], vectors[1 : 1 + len(specs)], vectors[1 + len(specs) :]
    verbs = {_VERBS[w] for w in _WORD.findall(request.lower()) if w in _VERBS}
    best: tuple[float, dict, dict | None] | None = None
    for i, spec in enumerate(specs):
        score = 0.7 * float(req @ described[i]) + 0.3 * float(req @ named[i])
        tool_verb = _VERBS.get(_WORD.findall(spec["name"].lower())[0]) if spec["name"] else None
        if tool_verb and tool_verb in verbs:
            score += 0.12
        arguments, missing = fill_arguments(request, spec.get("parameters") or {})
        score -= 0.15 * len(missing)
        if best is None or score > best[0]:
            best = (score, spec, arguments if not missing else None)
    if best is None:  # there were specs: not reached
        return None
    score, spec, chosen = best
    if score < ROUTE_THRESHOLD or chosen is None:
        return None
    return Decision(tool=spec["name"], arguments=json.dumps(chosen), confidence=_confidence(score))


def fill_arguments(request: str, schema: dict) -> tuple[dict, list[str]]:
    """Arguments for `schema` read off `request`; and the required ones it could not fill."""
    properties = schema.get("properties") or {}
    required = list(schema.get("required") or [])
    numbers = _NUMBER.findall(_DATE.sub(" ", request))  # a date's digits are not numbers
    emails = _EMAIL.findall(request)
    quoted = _QUOTED.findall(request)
    lowered = request.lower()
    arguments: dict = {}
    for name, prop in properties.items():
        kind = prop.get("type")
        value = None
        if "enum" in prop:
            named = [v for v in prop["enum"] if str(v).lower() in lowered]
            value = named[0] if named else prop.get("default")
        elif kind in ("integer", "number"):
            # A number next to the property's name ("ticket 42", "6 people") before any other.
            label = re.escape(name.replace("_", " "))
            undated = _DATE.sub(" ", lowered)
            near = re.search(rf"{label}\D{{0,12}}?(\d+(?:\.\d+)?)", undated) or re.search(
                rf"(\d+(?:\.\d+)?)\s+{label}", undated
            )
            raw = near.group(1) if near else (numbers.pop(0) if numbers else None)
            if raw is not None:
                if near and raw in numbers:
                    numbers.remove(raw)
                value = int(float(raw)) if kind == "integer" else float(raw)
        elif kind == "string" and prop.get("format") == "email":
            value = emails.pop(0) if emails else None
        elif kind == "string" and prop.get("format") == "date":
            value = _date(lowered)
        elif kind == "string":
            value = quoted.pop(0) if quoted else None
            if value is None and name in required:
                value = " ".join(_EMAIL.sub("", request).split()).strip(" .?!:")[:200] or None
        elif kind == "boolean" and "default" in prop:
            value = prop["default"]
        if value is not None:
            arguments[name] = value
    return arguments, [name for name in required if name not in arguments]


def _date(lowered: str) -> str | None:
    found = _DATE.search(lowered)
    if found:
        return found.group(0)
    today = dt.date.today()
    if "tomorrow" in lowered:
        return (today + dt.timedelta(days=1)).isoformat()
    if "today" in lowered:
        return today.isoformat()
    for offset, day in enumerate(
        ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    ):
        if day in lowered:
            return (today + dt.timedelta(days=(offset - today.weekday()) % 7 or 7)).isoformat()
    return None


def answer(question: str, passages: list[tuple[str, str]]) -> Decision:
    from agents.embedding import embed

    if not passages or not question.strip():
        return Decision(text=NO_ANSWER, confidence=0.0)
    sentences = [
        (marker, s.strip())
        for marker, text in passages
        for s in re.split(r"(?<=[.!?])\s+", text)
        if len(s.strip()) > 3
    ]
    vectors = embed([question, *(s for _, s in sentences)])
    scores = vectors[1:] @ vectors[0]
    ranked = sorted(zip(scores, sentences, strict=True), key=lambda x: -x[0])
    top = [
        (float(score), marker, s) for score, (marker, s) in ranked[:2] if score >= ANSWER_THRESHOLD
    ]
    if not top:
        return Decision(
            text=NO_ANSWER,
            confidence=_confidence(float(ranked[0][0])) if ranked else 0.0,
        )
    text = " ".join(f"{s} [{marker}]" for _, marker, s in top)
    support = top[0][0] + WORDS_WEIGHT * _words_found(question, top[0][2])
    return Decision(text=text, confidence=_confidence(support))


def _words(text: str) -> set[str]:
    """The content words of `text`, lower-case, with a plural's or a tense's ending cut."""
    words = set()
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        if word in _STOP or len(word) < 3:
            continue
        words.add(re.sub(r"(?:ies|es|s|ed|ing)$", "", word) if len(word) > 4 else word)
    return words


def _words_found(question: str, sentence: str) -> float:
    """The share of the question's content words that the sentence has (0 to 1)."""
    asked = _words(question)
    return len(asked & _words(sentence)) / len(asked) if asked else 0.0


def _state_tool_results(messages: list[dict]) -> Decision:
    results = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        results.append(_describe(_text(message)))
    text = "Done. " + " ".join(reversed(results)) if results else "Done."
    return Decision(text=text, confidence=0.9)


def _describe(content: str) -> str:
    content = _unmarked(content)
    try:
        value = json.loads(content)
    except ValueError:
        return content.strip()[:300]
    if isinstance(value, dict):
        if "error" in value:
            return f"The tool reported an error: {_said(value['error'])}."
        return ", ".join(f"{k.replace('_', ' ')}: {_said(v)}" for k, v in value.items()) + "."
    return f"{_said(value)}."


def _said(value: object) -> str:
    """A JSON value as a sentence says it: yes/no, none, lists joined; never Python's repr."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "none"
    if isinstance(value, list):
        return ", ".join(_said(item) for item in value) if value else "none"
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _passages(messages: list[dict]) -> list[tuple[str, str]]:
    found = []
    for message in messages:
        if message.get("role") == "system":
            for number, line in _PASSAGE.findall(_text(message)):
                data = _DATA.search(line)
                if data is not None:
                    found.append((number, data.group(2)))
                elif not line.startswith("(withheld by Warden"):  # a prompt not Warden's
                    found.append((number, line))
    return found


def _unmarked(content: str) -> str:
    """Content Warden marked as data, without its markers (as it is, if not marked)."""
    data = _DATA.fullmatch(content.strip())
    return data.group(2) if data is not None else content


def _text(message: dict) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):  # content parts
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def _confidence(support: float) -> float:
    """0 to 0.99: matching sentences is never certain, so an agent's threshold of 1 holds
    every answer of the offline model for a reviewer."""
    return round(max(0.0, min(0.99, (support - 0.1) / 0.6)), 3)


def _usage(messages: list[dict], decision: Decision) -> dict:
    prompt = sum(len(_text(m).split()) for m in messages)
    completion = len(decision.text.split()) + len(decision.arguments.split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _response(model: str, messages: list[dict], tools: list[dict]):
    from litellm import ModelResponse, Usage

    decision = decide(messages, tools)
    message: dict = {"role": "assistant", "content": decision.text or None}
    if decision.tool:
        message["tool_calls"] = [
            {
                "id": decision.call_id,
                "type": "function",
                "function": {"name": decision.tool, "arguments": decision.arguments},
            }
        ]
    response = ModelResponse(
        model=model,
        created=int(time.time()),
        choices=[
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if decision.tool else "stop",
            }
        ],
        usage=Usage(**_usage(messages, decision)),
    )
    response._hidden_params["warden_confidence"] = decision.confidence
    return response
