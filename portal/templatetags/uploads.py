"""What the chat's "Attach a file" control says it accepts: the settings' types and size."""

from __future__ import annotations

from django import template
from django.template.defaultfilters import filesizeformat

from agents.knowledge.services import upload_limit, upload_types

register = template.Library()


@register.simple_tag
def upload_accept() -> str:
    """The file input's `accept`: the extensions the chat takes."""
    return ",".join(upload_types())


@register.simple_tag
def upload_rule() -> str:
    """The control's help: which files, how large, and who reads them."""
    types = upload_types()
    kinds = ", ".join(types[:-1]) + f" or {types[-1]}" if len(types) > 1 else "".join(types)
    return (
        f"{kinds}, up to {filesizeformat(upload_limit())}. Private to you: only this "
        "conversation's answers read it."
    )
