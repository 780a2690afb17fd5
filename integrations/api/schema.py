"""The schema's account of errors: every operation may answer a problem document (RFC 9457),
described once as a component."""

from __future__ import annotations

PROBLEM = {
    "type": "object",
    "description": "An RFC 9457 problem document; `type` is a stable URI that describes itself.",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {"type": "object", "description": "Per field, what is wrong."},
    },
    "required": ["type", "title", "status", "detail"],
}


def problem_responses(result, generator, request, public):
    """drf-spectacular POSTPROCESSING_HOOKS: a `default` problem response on each operation."""
    result.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM
    answer = {
        "description": "An error, as a problem document.",
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict) and "responses" in operation:
                operation["responses"].setdefault("default", answer)
    return result
