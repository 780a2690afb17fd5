"""Code blocks in model output, highlighted on the server with Pygments.

What a model writes is untrusted: the block's text reaches the page only as Pygments' escaped
token spans (or escaped plain text), and its language name only if it looks like one (letters,
digits, `+#._-`); anything else in a fence's info string is ignored. render_markdown then
sanitises the whole answer with nh3, which keeps only the classes listed in CLASSES: the page
gets no markup from the model, only Pygments' token classes (static/portal/code.css colours
them) and the block's frame (static/portal/code.js adds its Copy button).
"""

from __future__ import annotations

import re
from html import escape

from pygments.token import STANDARD_TYPES

# Highlighting a longer block costs more than it helps (and bounds a lexer's regexes' work).
MAX_HIGHLIGHTED = 20_000
_LANGUAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+#.-]{0,39}")

CLASSES: dict[str, set[str]] = {
    "div": {"code-block", "code-head"},
    "span": {"code-lang", *(name for name in STANDARD_TYPES.values() if name)},
}


def language_of(info: str) -> str:
    """The language a fence's info string names (its first word), or '' if it names none or
    is not a plain name."""
    words = info.split(maxsplit=1)
    return words[0] if words and _LANGUAGE.fullmatch(words[0]) else ""


def code_block_html(code: str, info: str = "") -> str:
    """A code block as HTML: a header naming its language, then the code, highlighted when
    Pygments knows the language (by its name; never guessed from the code)."""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import get_lexer_by_name
    from pygments.util import ClassNotFound

    language = language_of(info)
    label = language
    body = escape(code, quote=False)
    if language and len(code) <= MAX_HIGHLIGHTED:
        try:
            lexer = get_lexer_by_name(language.lower(), stripnl=False, ensurenl=False)
        except ClassNotFound:
            pass
        else:
            label = lexer.name
            body = highlight(code, lexer, HtmlFormatter(nowrap=True))
    attribute = f' class="language-{escape(language.lower())}"' if language else ""
    return (
        '<div class="code-block"><div class="code-head">'
        f'<span class="code-lang">{escape(label or "Code")}</span></div>'
        f"<pre><code{attribute}>{body}</code></pre></div>\n"
    )
