"""Model output is only ever rendered as sanitised markdown: markdown-it (CommonMark, raw HTML
off) to HTML, then nh3 keeps a small set of tags and safe link schemes."""

from __future__ import annotations

import re
from collections.abc import Callable

import nh3
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt
from markdown_it.token import Token

_TAGS = {
    *("p", "br", "strong", "em", "code", "pre", "blockquote", "hr"),
    *("ul", "ol", "li", "a", "h1", "h2", "h3", "h4", "h5", "h6"),
    *("table", "thead", "tbody", "tr", "th", "td", "del"),
}
_ATTRIBUTES = {"a": {"href", "title"}, "code": {"class"}, "th": {"align"}, "td": {"align"}}
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


def render_markdown(text: str, *, cite: Callable[[int], str | None] | None = None) -> SafeString:
    """HTML safe to put in a page, whatever the model wrote. With `cite`, each citation marker
    `[n]` in the text (not in code, not in a link) links to `cite(n)`, if that is not None."""
    tokens = _markdown.parse(text or "")
    if cite is not None:
        for block in tokens:
            if block.type == "inline" and block.children:
                block.children = _linked(block.children, cite)
    html = _markdown.renderer.render(tokens, _markdown.options, {})
    clean = nh3.clean(
        html,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
    return mark_safe(clean)  # noqa: S308 - nh3 has just sanitised it


_MARKER = re.compile(r"\[(\d{1,3})\]")


def _linked(children: list[Token], cite: Callable[[int], str | None]) -> list[Token]:
    out: list[Token] = []
    in_link = 0
    for token in children:
        in_link += {"link_open": 1, "link_close": -1}.get(token.type, 0)
        if token.type != "text" or in_link:
            out.append(token)
            continue
        position = 0
        for match in _MARKER.finditer(token.content):
            href = cite(int(match.group(1)))
            if href is None:
                continue
            out.append(Token("text", "", 0, content=token.content[position : match.start()]))
            out.append(Token("link_open", "a", 1, attrs={"href": href}))
            out.append(Token("text", "", 0, content=match.group(0)))
            out.append(Token("link_close", "a", -1))
            position = match.end()
        out.append(Token("text", "", 0, content=token.content[position:]))
    return out
