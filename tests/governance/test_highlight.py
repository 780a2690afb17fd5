"""Code blocks in model output: highlighted, and still nothing but sanitised markup whatever the
model wrote in them or in their language name; their colours readable (WCAG AA)."""

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governance.guardrails.highlight import CLASSES, MAX_HIGHLIGHTED
from governance.guardrails.output import render_markdown

CODE_CSS = Path(__file__).resolve().parents[2] / "static" / "portal" / "code.css"


class Page(HTMLParser):
    """The tags and attributes of a rendered answer, and the text of its code blocks as a
    browser's `textContent` gives it (what Copy puts on the clipboard)."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.code: list[str] = []
        self._in_code = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "code" and self.tags[-2][0] == "pre":
            self._in_code = True
            self.code.append("")

    def handle_endtag(self, tag):
        if tag == "code":
            self._in_code = False

    def handle_data(self, data):
        if self._in_code:
            self.code[-1] += data


def block(info: str, code: str) -> str:
    return f"```{info}\n{code}\n```\n"


def test_a_fenced_block_is_highlighted_by_its_language():
    html = render_markdown("Try this:\n\n" + block("python", 'print("hi")  # greet'))

    assert html == (
        "<p>Try this:</p>\n"
        '<div class="code-block"><div class="code-head"><span class="code-lang">Python</span>'
        '</div><pre><code class="language-python"><span class="nb">print</span>'
        '<span class="p">(</span><span class="s2">"hi"</span><span class="p">)</span>  '
        '<span class="c1"># greet</span>\n</code></pre></div>\n'
    )


def test_a_block_without_a_language_or_with_one_unknown_is_plain_text():
    plain = render_markdown(block("", "a <b> c") + "\n    indented & more\n")
    unknown = render_markdown(block("no-such-language", "x = 1"))

    assert plain == (
        '<div class="code-block"><div class="code-head"><span class="code-lang">Code</span>'
        "</div><pre><code>a &lt;b&gt; c\n</code></pre></div>\n"
        '<div class="code-block"><div class="code-head"><span class="code-lang">Code</span>'
        "</div><pre><code>indented &amp; more\n</code></pre></div>\n"
    )
    assert unknown == (
        '<div class="code-block"><div class="code-head">'
        '<span class="code-lang">no-such-language</span></div>'
        '<pre><code class="language-no-such-language">x = 1\n</code></pre></div>\n'
    )


HOSTILE = [
    "</code></pre></div><script>alert(1)</script>",
    '<img src=x onerror="alert(2)">',
    "<span class=\"k\" onclick='alert(3)'>k</span>",
    "&lt;script&gt; already escaped &amp;",
    "]]><!-- --><svg onload=alert(4)>",
]


@pytest.mark.parametrize("language", ["python", "html", "javascript", "", "text"])
def test_a_hostile_code_block_comes_out_as_its_text(language):
    code = "\n".join(HOSTILE)

    html = render_markdown(block(language, code))
    page = Page(html)

    assert "<script" not in html
    assert "<img" not in html
    assert "<svg" not in html
    assert {tag for tag, _ in page.tags} <= {"div", "span", "pre", "code"}
    assert all(set(attributes) <= {"class"} for _, attributes in page.tags)
    assert page.code == [code + "\n"]  # Copy gives back exactly what the model wrote


@pytest.mark.parametrize(
    "info",
    [
        "<script>alert(1)</script>",
        '"><img src=x onerror=alert(1)>',
        'python" onmouseover="alert(1)',
        "python<b>",
        "javascript:alert(1)",
        "a" * 41,
    ],
)
def test_a_language_name_with_markup_is_not_used(info):
    html = render_markdown(block(info, "x = 1"))

    assert html == (
        '<div class="code-block"><div class="code-head"><span class="code-lang">Code</span>'
        "</div><pre><code>x = 1\n</code></pre></div>\n"
    )


def test_only_the_first_word_of_an_info_string_names_the_language():
    html = render_markdown(block('py title="x" onclick="alert(1)"', "pass"))

    assert "onclick" not in html
    assert '<span class="code-lang">Python</span>' in html
    assert '<code class="language-py"><span class="k">pass</span>' in html


def test_citation_markers_inside_code_are_not_links():
    html = render_markdown(
        "See [1].\n\n" + block("python", "items[1] = 2  # [1]") + "\nAnd `a[1]`.",
        cite=lambda n: f"#cite-{n}",
    )

    assert html.count("<a ") == 1  # the one in the text
    assert '<p>See <a href="#cite-1" rel="noopener noreferrer nofollow">[1]</a>.</p>' in html
    assert '<span class="c1"># [1]</span>' in html
    assert "<code>a[1]</code>" in html


def test_a_very_long_block_is_escaped_without_highlighting():
    code = "x = 1\n" * (MAX_HIGHLIGHTED // 6 + 1)

    html = render_markdown(block("python", code.rstrip("\n")))

    assert '<span class="' not in html.split("<pre>", 1)[1]
    assert Page(html).code == [code]


def test_a_model_cannot_use_the_code_classes_outside_a_block():
    html = render_markdown('<div class="code-block"><span class="k">x</span></div>')

    assert html == (
        '<p>&lt;div class="code-block"&gt;&lt;span class="k"&gt;x&lt;/span&gt;&lt;/div&gt;</p>\n'
    )


@settings(max_examples=150, deadline=None)
@given(
    language=st.sampled_from(["python", "bash", "json", "html", "sql", "", "diff", "yaml"]),
    code=st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")) | st.just("\n")),
)
def test_any_code_round_trips_as_text_in_allowed_markup(language, code):
    code = code.replace("```", "'''").strip("\n")  # a fence inside would end the block

    html = render_markdown(block(language, code))
    page = Page(html)

    assert [normalise(c) for c in page.code] == [normalise(code + "\n")]
    for tag, attributes in page.tags:
        assert tag in ("div", "span", "pre", "code"), html
        assert set(attributes) <= {"class"}, html
        if tag in CLASSES:
            assert set((attributes.get("class") or "").split()) <= CLASSES[tag], html


def normalise(text: str) -> str:
    """What CommonMark itself changes in a block (NUL), not what highlighting does."""
    return text.replace("\x00", "\ufffd")


# The colours -------------------------------------------------------------------------------


def luminance(colour: str) -> float:
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    light, dark = sorted([luminance(a), luminance(b)], reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_every_code_colour_meets_wcag_aa_on_the_block_and_the_hovered_button():
    css = CODE_CSS.read_text()
    background = re.search(r"\.code-block \{[^}]*background: (#[0-9a-f]{6})", css).group(1)
    hovered = re.search(r"\.code-copy:hover \{[^}]*background: (#[0-9a-f]{6})", css).group(1)
    colours = set(re.findall(r"(?<![-\w])color: (#[0-9a-f]{6})", css))

    assert len(colours) >= 8  # the rules were read
    for colour in colours:
        assert contrast(colour, background) >= 4.5, colour
        assert contrast(colour, hovered) >= 4.5, colour


def test_every_token_class_pygments_emits_for_common_languages_is_coloured_or_plain():
    """A class missing from code.css shows in the text's own colour (readable, not wrong); the
    ones listed here must not be forgotten."""
    css = CODE_CSS.read_text()
    styled = set(re.findall(r"\.code-block \.([a-z0-9]+)", css))

    assert {"k", "s", "s1", "s2", "c", "c1", "m", "mi", "nf", "nc", "nb", "nt", "gd", "gi"} <= (
        styled
    )
