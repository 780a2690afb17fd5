"""JSON Schema checks shared by tool contracts and executor configurations (Draft 2020-12)."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import Any

import jsonschema

Validator = jsonschema.Draft202012Validator


def validator_for(schema: Any) -> Any:
    """A Validator of `schema`, built once per distinct schema: a tool's arguments are checked
    at each call, and building one (its reference registry) cost more than the check.
    Validators do not change once built, so one may serve every call."""
    return _validator_of(json.dumps(schema, sort_keys=True))


@functools.lru_cache(maxsize=512)
def _validator_of(text: str) -> Any:
    return Validator(json.loads(text))


def parameters_problem(schema: Any) -> str | None:
    """Why `schema` cannot describe a tool's arguments, with the path of the error, or None.
    Function calling takes an object of named arguments, so the top level must be one."""
    if not isinstance(schema, dict):
        return 'The parameters must be a JSON Schema object, such as {"type": "object"}.'
    try:
        Validator.check_schema(schema)
    except jsonschema.SchemaError as error:
        return f"Not a valid JSON Schema at {_path(error.absolute_path)}: {error.message}"
    if schema.get("type") != "object":
        return 'The top level must be {"type": "object", ...}: tools take named arguments.'
    return None


def instance_problem(validator: Any, instance: Any, *, what: str = "arguments") -> str | None:
    """The most relevant way `instance` breaks `validator`'s schema, with its path, or None.
    Text no table can keep (a NUL, an unpaired surrogate: valid JSON escapes both) breaks
    every schema: the ledger, the audit trail and the approval inbox store the arguments."""
    if found := unstorable_at(instance):
        where, problem = found
        return f"invalid {what} at {where}: {problem}"
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is None:
        return None
    return f"invalid {what} at {_path(error.absolute_path)}: {error.message}"


def _path(path: Iterable[str | int]) -> str:
    return "/" + "/".join(str(p) for p in path) if path else "the top level"


def unstorable_at(value: Any, where: str = "") -> tuple[str, str] | None:
    """The first place in parsed JSON `value` holding text PostgreSQL cannot keep, as
    (path such as `messages[0].content`, what is wrong with it), or None. Keys count as well
    as values. Iterative: the parser's own depth limit is the only one."""
    stack = [(where, value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if problem := text_problem(item):
                return path or "body", problem
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                here = f"{path}.{_printable(key)}" if path else _printable(key)
                if isinstance(key, str) and (problem := text_problem(key)):
                    return here, f"is a key that {problem}"
                children.append((here, child))
            stack.extend(reversed(children))
        elif isinstance(item, list):
            stack.extend(reversed([(f"{path}[{n}]", child) for n, child in enumerate(item)]))
    return None


def text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character, which cannot be kept"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "contains an unpaired surrogate, which is not text"
    return None


def _printable(key: object) -> str:
    """A key as it can appear in an error message (which must itself be encodable)."""
    key = str(key)
    if text_problem(key):
        key = json.dumps(key)[1:-1]  # escaped: \u0000, \ud800
    return key[:100]
