"""JSON Schema checks shared by tool contracts and executor configurations (Draft 2020-12)."""

from __future__ import annotations

from typing import Any

import jsonschema

Validator = jsonschema.Draft202012Validator


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


def instance_problem(validator: Validator, instance: Any, *, what: str = "arguments") -> str | None:
    """The most relevant way `instance` breaks `validator`'s schema, with its path, or None."""
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is None:
        return None
    return f"invalid {what} at {_path(error.absolute_path)}: {error.message}"


def _path(path) -> str:
    return "/" + "/".join(str(p) for p in path) if path else "the top level"
