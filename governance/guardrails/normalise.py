"""Text as the injection detector reads it: folded, unmasked and decoded.

An attacker hides an order from pattern matching and from a classifier's vocabulary by writing
it in look-alike letters (a Cyrillic a for the Latin one, mathematical bold), by sprinkling
invisible characters through it, or by encoding it (base64, `%69%67`, hex). `fold` undoes the
first two: NFKC, every format character (category Cf: zero-width joiners, tags, bidi
controls) and variation selectors removed, control characters but newlines and tabs removed,
and each UTS #39 confusable mapped to the ASCII letter it imitates (the table in
data/confusables.json, generated from a packaged copy of Unicode's confusables.txt).
`decoded_runs` finds encoded runs (base64, base32, hex, URL-encoded; a line written backwards
or in ROT13) and returns what they decode to when that is text, and
`invisible_runs` text written in invisible characters (tag characters, variation selectors),
which folding would delete. `views` is every text the detector scores for one input: the folded
text (for a JSON document, its strings joined, so an order split across fields reads as one)
and each decoded run. A JSON
document's field names are its schema, not its text: a short identifier key (`result`,
`agent`, `temperature_c`) is left out of it and read with the document's other such names as
a view of their own, for orders only, and a longer one (`note_to_the_assistant`) is read as
its words.
"""

from __future__ import annotations

import base64
import binascii
import html
import itertools
import json
import re
import sys
import unicodedata
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data"
# What is read of one input: the head and the tail (a huge tool output is cut, not refused).
MAX_CHARS = 200_000
_HEAD = 150_000
_MAX_RUNS = 20
_MAX_INVISIBLE = 4

_BASE64 = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{20,}={0,2}(?![A-Za-z0-9+/=_-])")
_HEX = re.compile(r"(?:\\x|0x)?(?:[0-9a-fA-F]{2}(?:\s|\\x|:)?){10,}")
_URL = re.compile(r"(?:[^\s%]{0,40}%[0-9a-fA-F]{2}){4,}[^\s%]{0,40}")


@dataclass(frozen=True)
class View:
    text: str
    # "text", "json", "keys" (a JSON document's field names), "joined" (the text with its
    # joined-up phrases spaced out), "base64", "base32", "hex", "url", "tags", "selectors" (text
    # written in invisible characters), "reversed", "rot13" (a line turned), "html" (a markup
    # document's text as a reader gets it: `html_reading`), "entities" (a run of character
    # references)
    how: str

    @property
    def decoded(self) -> bool:
        """Whether this view is what an encoded or hidden part of the input decodes to."""
        return self.how not in ("text", "json", "keys", "joined", "html")


@cache
def _table() -> dict[int, str | None]:
    """One str.translate table: format characters, variation selectors and controls to
    nothing, confusables to their ASCII letter. Built on first use (~0.3 s)."""
    table: dict[int, str | None] = {}
    for code in range(sys.maxunicode + 1):
        category = unicodedata.category(chr(code))
        # Format characters, controls, and lone surrogates (which no encoder can encode).
        if category in ("Cf", "Cs") or (category == "Cc" and chr(code) not in "\n\t\r"):
            table[code] = None
    for code in [*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0), 0x180B, 0x180C, 0x180D]:
        table[code] = None
    table[0x00AD] = None  # soft hyphen (Cf already; explicit because it is the common one)
    for char, ascii_char in _confusables().items():
        table[ord(char)] = ascii_char
    return table


# Letters spaced out to slip past word matching ("i g n o r e  a l l"): single characters
# one space apart, the words two or more apart.
_SPACED = re.compile(r"(?<![^\s])(?:\S ){3,}\S(?![^\s])")


def fold(text: str) -> str:
    """NFKC, invisible characters out, confusables to ASCII, spaced-out letters joined, runs
    of spaces folded."""
    text = unicodedata.normalize("NFKC", text)
    if _maps_any(text, _table()):
        text = text.translate(_table())
    text = _SPACED.sub(lambda match: match.group(0).replace(" ", ""), text)
    return re.sub(r"[ \t\u00a0]+", " ", text)


@cache
def _deletions() -> dict[int, None]:
    return {code: None for code, value in _table().items() if value is None}


@cache
def _confusable_table() -> dict[int, str]:
    return {ord(char): ascii_char for char, ascii_char in _confusables().items()}


@cache
def _confusables() -> dict[str, str]:
    text = (DATA / "confusables.json").read_text(encoding="utf-8")
    table: dict[str, str] = json.loads(text)["map"]
    return table


def hidden_characters(text: str) -> int:
    """How many characters `fold` removes (format, control), plus one if a look-alike letter
    is present: either is a sign of masking."""
    deletions = _deletions()
    removed = sum(text.count(char) for char in set(text) if ord(char) in deletions)
    look_alike = not text.isascii() and _maps_any(text, _confusable_table())
    return removed + int(look_alike)


def _maps_any(text: str, table: dict[int, Any]) -> bool:
    """Whether `table` maps a character of `text`: asked of its distinct characters (a few
    dozen), not of each one as str.translate does."""
    return any(ord(char) in table for char in set(text))


def _printable(decoded: bytes) -> str | None:
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        return None
    letters = sum(char.isalpha() for char in text)
    if len(text) < 8 or letters < 0.6 * len(text.replace(" ", "")) or " " not in text.strip():
        return None  # binary, an identifier or a hash: nothing to read
    return text


# Text written in invisible characters ("ASCII smuggling"), which `fold` would delete with the
# order in them: Unicode tag characters, each an ASCII character plus U+E0000 (an emoji flag's
# few are a region code), and variation selectors, each a byte (VS1-16 the bytes 0-15, VS17-256
# 16-255) after any visible character.
_TAG_RUN = re.compile("[\U000e0000-\U000e007f]{8,}")
_SELECTOR_RUN = re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef]{8,}")
_ZERO_WIDTH = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")


def invisible_runs(text: str) -> Iterator[tuple[str, str]]:
    """(how, decoded text) for each run of tag characters or variation selectors that
    decodes to text."""
    if text.isascii():
        return
    text = _ZERO_WIDTH.sub("", text)  # sprinkled through a run to cut it short
    for match in _TAG_RUN.finditer(text):
        decoded = "".join(chr(ord(char) - 0xE0000) for char in match.group(0))
        if readable := _printable(decoded.encode("ascii", "replace")):
            yield "tags", readable
    for match in _SELECTOR_RUN.finditer(text):
        data = bytes(
            ord(char) - 0xFE00 if ord(char) < 0x10000 else ord(char) - 0xE0100 + 16
            for char in match.group(0)
        )
        if readable := _printable(data):
            yield "selectors", readable


_BASE32 = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Z2-7]{16,}={0,6}(?![A-Za-z0-9+/=_-])")

# A line written backwards or in ROT13 reads as English once turned: a line of at least
# _TURNED_LETTERS characters, mostly ASCII, that has many more of these common words turned than
# as it is (`_turned_lines`) is read turned too. Function words only: what decides is that the
# turned line is language. (Measured on the corpus and the outside sets, 2026-12-07: every text
# with such a line is an attack.)
_COMMON = frozenset(
    "the and you that for with this are your all from not have will can any our now then "  # noqa: SIM905
    "please there what which when into".split()
)  # of three letters or more: shorter ones turn up by chance in other languages turned
_TURNED_LETTERS = 20
_ROT13 = str.maketrans(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    "NOPQRSTUVWXYZABCDEFGHIJKLMnopqrstuvwxyzabcdefghijklm",
)
_LATIN_WORD = re.compile(r"[A-Za-z']+")
_TURNED = frozenset({word[::-1] for word in _COMMON} | {word.translate(_ROT13) for word in _COMMON})


def _common_words(line: str) -> tuple[int, int]:
    """How many words of `line` are common English words, and how many different ones."""
    found = [word for word in _LATIN_WORD.findall(line.lower()) if word in _COMMON]
    return len(found), len(set(found))


def _turned_lines(text: str) -> Iterator[tuple[str, str]]:
    """("reversed" or "rot13", the line turned) for each line that reads as English turned:
    three different common words or more, one in eight of its words at least, and over twice
    as many as the line has as it is (a line may start in plain English: "Decode this: ...")."""
    if _TURNED.isdisjoint(_LATIN_WORD.findall(text.lower())):
        return  # not one common word written backwards or in ROT13: most texts
    for line in text.splitlines():
        if len(line) < _TURNED_LETTERS:
            continue
        words = _LATIN_WORD.findall(line.lower())
        if len(words) < 4 or _TURNED.isdisjoint(words):
            continue
        if not line.isascii() and len(line.encode("ascii", "ignore")) < 0.8 * len(line):
            continue
        plain = sum(word in _COMMON for word in words)
        for how, turned in (("reversed", line[::-1]), ("rot13", line.translate(_ROT13))):
            count, different = _common_words(turned)
            if different >= 3 and count >= len(words) / 8 and count > 2 * plain:
                yield how, turned
                break


# Leetspeak: letters written as the digits that look like them (`1gn0r3 4ll`). A line is read
# with them turned back when most of its words are such mixtures (a part number, a hash or a
# version has one or two, and hex digits only).
_LEET = str.maketrans("4310758@$", "aeiotsbas")
_LEET_WORD = re.compile(r"(?=[^\s]*[A-Za-z])(?=[^\s]*[0134578@$])[A-Za-z0134578@$]{2,}")
_LEET_RUN = re.compile(r"[A-Za-z0134578@$]{2,}")
# A letter beside such a digit: every leetspeak word has one (a linear search for the lines).
_LEET_MIX = re.compile(r"[A-Za-z][0134578@$]|[0134578@$][A-Za-z]")
_HEX_WORD = re.compile(r"[0-9a-fA-F]+")


def _is_leet(word: str) -> bool:
    return bool(_LEET_WORD.fullmatch(word)) and not _HEX_WORD.fullmatch(word)


def _leet_lines(text: str) -> Iterator[str]:
    """Each line with five words or more written in leetspeak, over a third of its words,
    with those words turned back into letters."""
    if not _LEET_MIX.search(text):
        return
    for line in text.splitlines():
        words = [word.strip(".,:;!?\"'()[]") for word in line.split()]
        leet = [word for word in words if _is_leet(word)]
        if len(leet) >= 5 and len(leet) * 3 > len(words):
            yield _LEET_RUN.sub(
                lambda m: m.group(0).translate(_LEET) if _is_leet(m.group(0)) else m.group(0), line
            )


def decoded_runs(text: str) -> Iterator[tuple[str, str]]:
    """(how, decoded text) for each base64, base32, hex or URL-encoded run that decodes to
    text, and each line that reads as English written backwards or in ROT13."""
    found = 0
    for match in _BASE64.finditer(text):
        run = match.group(0)
        padded = run + "=" * (-len(run) % 4)
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                decoded = _printable(decode(padded))
            except (binascii.Error, ValueError):
                continue
            if decoded:
                yield "base64", decoded
                found += 1
                break
        if found >= _MAX_RUNS:
            return
    for match in _BASE32.finditer(text):
        run = match.group(0).rstrip("=")
        try:
            decoded = _printable(base64.b32decode(run + "=" * (-len(run) % 8)))
        except (binascii.Error, ValueError):
            continue
        if decoded:
            yield "base32", decoded
            found += 1
            if found >= _MAX_RUNS:
                return
    for how, line in _turned_lines(text):
        yield how, line
        found += 1
        if found >= _MAX_RUNS:
            return
    for line in _leet_lines(text):
        yield "leet", line
        found += 1
        if found >= _MAX_RUNS:
            return
    for match in _HEX.finditer(text):
        digits = re.sub(r"\\x|0x|[\s:]", "", match.group(0))
        if len(digits) % 2:
            digits = digits[:-1]
        try:
            decoded = _printable(bytes.fromhex(digits))
        except ValueError:
            continue
        if decoded:
            yield "hex", decoded
            found += 1
            if found >= _MAX_RUNS:
                return
    for match in _REFERENCES.finditer(text):
        decoded = html.unescape(match.group(0))
        if _printable(decoded.encode("utf-8", "replace")):
            yield "entities", decoded
            found += 1
            if found >= _MAX_RUNS:
                return
    for match in _URL.finditer(text):
        decoded = urllib.parse.unquote_plus(match.group(0))
        if decoded != match.group(0) and _printable(decoded.encode("utf-8", "replace")):
            yield "url", decoded
            found += 1
            if found >= _MAX_RUNS:
                return


# A field name written as an identifier: ASCII letters and digits in parts joined by _ - . or
# camelCase.
_IDENTIFIER = re.compile(r"[A-Za-z0-9]+(?:[_.-]+[A-Za-z0-9]+)*[_.-]*", re.A)
# The words of an ASCII identifier: snake_case, camelCase and ALLCAPS parts (digits are none).
_PART = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+", re.A)
_DIGITS = re.compile(r"[\d_]+")
_HEXLIKE = re.compile(r"[0-9a-fA-F]+")
# A field name is an identifier of two words and this many characters at most.
_FIELD_NAME_CHARS = 24


def run_words(run: str) -> int:
    """How many words a run of letters, marks and digits holds, a part of 20 letters or more
    counting one more per 20 (`ignoreallpreviousinstructions` is not a word): an ASCII
    identifier's parts (`ignore_all`, `ignoreAll`, `ignore1all`: two), one for a hash (hex
    digits and the letters a to f), and in other scripts the runs between digits (a word
    whose letters fold to look-alike ASCII ones, `ассистент`, stays one)."""
    if run.isascii():
        if _HEXLIKE.fullmatch(run) and not run.isalpha():
            return 1  # a hash, an id: hex digits and letters a to f
        parts = _PART.findall(run)
    else:
        parts = [part for part in _DIGITS.split(run) if part]
    return sum(1 + len(part) // 20 for part in parts)


def _key_text(key: str) -> str | None:
    """What a JSON key says: None for a field name of one or two words (`result`, `agent`,
    `temperature_c`, `userId`), the words of a longer identifier (`note_to_the_assistant`),
    and any other key (with spaces, in another script, encoded) as it is."""
    if not _IDENTIFIER.fullmatch(key) or any(decoded_runs(key)):
        return key  # words, another script, or an encoded run (decoded as a view of its own)
    if len(key) <= _FIELD_NAME_CHARS and run_words(key) <= 2:
        return None
    return " ".join(_PART.findall(key))


def json_reading(text: str) -> tuple[list[str], list[str]] | None:
    """A JSON document's strings, its keys as `_key_text` reads them, and the words of the
    field names it left out (each once, in document order); None when `text` is not one."""
    stripped = text.strip()
    if not stripped or stripped[0] not in '[{"':
        return None
    try:
        document = json.loads(stripped)
    except (ValueError, RecursionError):
        return None
    strings: list[str] = []
    names: dict[str, None] = {}
    stack: list[Any] = [document]
    while stack and len(strings) < 10_000:  # iterative: a deep document cannot recurse
        value = stack.pop()
        if isinstance(value, str):
            strings.append(value)
        elif isinstance(value, tuple):  # a field name left out, met in document order
            if words := " ".join(_PART.findall(value[0])):
                names[words] = None
        elif isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                stack.append(item)
                said = _key_text(key)
                stack.append(said if said is not None else (key,))  # JSON has no tuples
        elif isinstance(value, list):
            stack.extend(reversed(value))
    return strings, list(names)


# Four or more words joined by underscores, or in camelCase or PascalCase: a phrase. Each
# starts where a word does (after no letter or digit; underscores may lead): tried at every
# letter, a long word would cost its length squared.
_JOINED = re.compile(
    r"(?<![^\W_])[^\W\d_]+(?:_+[^\W\d_]+){3,}|(?<![A-Za-z0-9])[A-Za-z][a-z]+(?:[A-Z][a-z]+){3,}"
)
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def _spaced_out(joined: str) -> str:
    return re.sub("_+", " ", joined) if "_" in joined else _CAMEL.sub(" ", joined)


# Markup, in one pass of one pattern: a comment (one never closed runs to the end), or a start
# or end tag with a tag's name (`<p>`, `</div>`, `<img/alt="...">`) whose quoted attribute
# values may hold `<` and `>`, as a browser reads them; each part of bounded length, so that
# no input makes the search quadratic. An address in angle brackets (`<jane@example.com>`) is
# not a tag.
_MARKUP_TOKEN = re.compile(
    r"<!--(?:[\s\S]*?-->|[\s\S]*\Z)"
    r"|</?([A-Za-z][A-Za-z0-9._:-]{0,40})(?:[\s/](?:\"[^\"]{0,1000}\"|'[^']{0,1000}'|[^<>\"']){0,1000})?>"
)
# Browsers end a style sheet or script at `</style x>` too.
_CLOSING = {
    name: re.compile(rf"</{name}(?:[\s/][^<>]{{0,200}})?>", re.IGNORECASE)
    for name in ("script", "style")
}
# A Markdown code block: quoted markup, read as it is written.
_FENCE = re.compile(r"```[\s\S]*?```|~~~[\s\S]*?~~~")
# A page is text whose markup (tags, comments, style sheets and scripts) is this share of its
# characters, or that has this many tags of HTML's own elements outside code blocks: code or a
# security note that quotes a tag or two is read as it is (measured on the corpus and the
# outside sets: pages from 10 % up, such notes and code files 3-4 %), and prose around a page
# does not hide it.
_MARKUP_SHARE = 0.08
_PAGE_TAGS = 6
_HTML_ELEMENTS = frozenset(
    "a abbr article aside audio b blockquote body br button caption center code details div "  # noqa: SIM905
    "em figcaption figure font footer form h1 h2 h3 h4 h5 h6 head header hr html i iframe img "
    "input label li link main meta nav noscript ol option p picture pre script section select "
    "small source span strong style sub summary sup svg table tbody td template textarea tfoot "
    "th thead title tr u ul video".split()
)
# Elements that end a line where they open or close: their text is a paragraph of its own.
_BLOCKS = frozenset(
    "address article aside blockquote br caption dd details div dl dt fieldset figcaption figure "  # noqa: SIM905
    "footer form h1 h2 h3 h4 h5 h6 header hr li main nav ol p pre section summary table td th "
    "tr ul title option".split()
)
# Attributes that hold text a reader is given.
_TEXT_ATTRIBUTE = re.compile(
    r"(?i)alt|title|aria-[\w-]+|data-[\w-]+|placeholder|label|summary|content|value"
)
# Attributes that hold a page's plumbing, not its text.
_PLUMBING = frozenset("class id style href src srcset rel type name for width height".split())  # noqa: SIM905
# An attribute and its value, quoted or not (`alt=Ignore&#x20;all`: a reference for a space).
_ATTRIBUTE = re.compile(
    r"(?<![^\s\"'<>/])([^\s\"'<>/=]{1,200})\s*=\s*"
    r"(?:\"([^\"]{0,2000})\"|'([^']{0,2000})'|([^\s\"'<>=`]{1,1000}))"
)


def _said(match: re.Match[str]) -> str | None:
    """An attribute's value as a reader gets it, if it is words (and not the page's plumbing)."""
    value = html.unescape(match.group(2) or match.group(3) or match.group(4) or "")
    if match.group(1).lower() in _PLUMBING or len(value.split()) < 2:
        return None
    return value


def _read_tag(tag: str, name: str) -> str:
    """A tag as its reader gets it: its attributes' values that are words (`alt`, `title`,
    `aria-label`, a `data-note`: alt text is read aloud, and shown when an image does not
    load) where it stands, and a line's end for a block's tag."""
    said = [value for match in _ATTRIBUTE.finditer(tag) if (value := _said(match)) is not None]
    end = "\n" if name in _BLOCKS else " "
    return end + " ".join(said) + end


def _inside_comment(token: re.Match[str]) -> str:
    if token.group(1) is None:  # "<!--" again: no comment opens inside one
        return token.group(0)[4:]
    return _read_tag(token.group(0), token.group(1).lower())


def _page_text(text: str) -> tuple[str, int, int]:
    """A page's text as a reader (or a model given the page) gets it, with how many of its
    characters are markup and how many tags of HTML's elements it has. Its text, comments,
    style sheets, scripts and code blocks stay where they stand (taking anything out would let
    markup a browser reads otherwise take an order out with it); each tag outside style
    sheets, scripts and code blocks becomes what `_read_tag` reads of it, and what is left
    there that still looks like an attribute (in markup too odd to be read as a tag) is read as
    one; character references are decoded. One linear pass, not a parser (the standard
    library's took seconds on some 200 KB inputs)."""
    parts: list[str] = []
    markup = tags = at = 0
    for fence in [*_FENCE.finditer(text), None]:
        end = fence.start() if fence is not None else len(text)
        read, marked, counted = _markup_read(text, at, end)
        parts.append(read)
        markup, tags = markup + marked, tags + counted
        if fence is not None:
            parts.append(fence.group(0))
            at = fence.end()
    return html.unescape("".join(parts)), markup, tags


def _markup_read(text: str, start: int, end: int) -> tuple[str, int, int]:
    """`_page_text` of text[start:end], outside code blocks."""
    parts: list[str] = []
    markup = tags = 0
    position = start
    unclosed: set[str] = set()
    while (token := _MARKUP_TOKEN.search(text, position, end)) is not None:
        parts.append(_loose_attributes(text[position : token.start()]))
        position = token.end()
        markup += position - token.start()
        found = token.group(0)
        if found.startswith("<!--"):  # its text in place, and the tags in it read as tags
            inside = _MARKUP_TOKEN.sub(_inside_comment, found[4:].removesuffix("-->"))
            parts.append(" " + _loose_attributes(inside))
            continue
        name = token.group(1).lower()
        tags += name in _HTML_ELEMENTS
        parts.append(_read_tag(found, name))
        if name in _CLOSING and found[1] != "/" and name not in unclosed:
            closing = _CLOSING[name].search(text, position, end)
            if closing is None:
                unclosed.add(name)
            else:  # its content as it is, counted as markup; only what names text is read
                parts.append(_loose_attributes(text[position : closing.start()], text_only=True))
                markup += closing.start() - position
                position = closing.start()
    parts.append(_loose_attributes(text[position:end]))
    return "".join(parts), markup, tags


def _loose_attributes(text: str, *, text_only: bool = False) -> str:
    """What still looks like an attribute with words for its value, read as one; `text_only`:
    only an attribute that names text (in a style sheet or script, where a browser may not have
    ended it where `_CLOSING` did, and where code's own `x = "..."` is not text)."""
    if "=" not in text:
        return text

    def read(match: re.Match[str]) -> str:
        value = _said(match)
        if value is None or (text_only and not _TEXT_ATTRIBUTE.fullmatch(match.group(1))):
            return match.group(0)
        return f" {value} "

    return _ATTRIBUTE.sub(read, text)


def html_reading(text: str) -> str | None:
    """The text of `text` if it is a page (HTML, XML: _MARKUP_SHARE of it markup, or
    _PAGE_TAGS tags of HTML's elements outside code blocks), as `_page_text` reads it, its
    blank lines folded; None when it is not, or reads the same."""
    if "<" not in text:
        return None
    page, markup, tags = _page_text(text)
    if markup < _MARKUP_SHARE * len(text) and tags < _PAGE_TAGS:
        return None
    lines = (re.sub(r"[ \t]+", " ", line).strip() for line in page.split("\n"))
    reading = "\n".join(line for line in lines if line)
    return reading if reading and reading != text.strip() else None


# Character references spelling text out (`&#65;&#73;&#32;...`, `&#00073`, the `;` optional as
# browsers read them): eight or more in a row.
_REFERENCES = re.compile(r"(?:&#(?:[0-9]{1,10}|[xX][0-9a-fA-F]{1,8});?\s?){8,}")


def views(text: str) -> list[View]:
    """Every text to score for `text`: folded (a JSON document as its strings, and its short
    field names apart when they make a few words), its phrases joined into identifiers spaced
    out, and each decoded run (folded too, and decoded once more: base64 inside base64)."""
    if len(text) > MAX_CHARS:
        text = text[:_HEAD] + "\n" + text[-(MAX_CHARS - _HEAD) :]
    reading = json_reading(text)
    # A page, or a JSON document with one in its strings (a tool returning a fetched page).
    page = html_reading(text if reading is None else "\n".join(reading[0]))
    if reading is not None:
        main = View(fold("\n".join(reading[0])), "json")
    else:
        main = View(fold(text), "text")
    result = [main]
    # The field names left out of a JSON document's text, read on their own (for orders only:
    # injection._scan) when they make a few words: an order written as field names
    # ({"ignoreAll": 1, "previousInstructions": 1}) is still read, and a schema is not mixed
    # into its values.
    if reading is not None and len((names := " ".join(reading[1])).split()) >= 3:
        result.append(View(names, "keys"))
    # Phrases joined into identifiers (ignore_all_previous_instructions, ignoreAllPrevious...):
    # the signal patterns see one long word. Spaced out, one a line, read for orders only
    # (injection.modelled): code is full of such names, which the models misread as orders.
    joined = [_spaced_out(match) for match in _JOINED.findall(main.text)]
    if joined:
        result.append(View("\n".join(dict.fromkeys(joined)), "joined"))
    seen = {main.text}
    pending = [(main.text, 0)]
    # A page's text as its reader gets it (alt texts and comments included), beside the
    # markup as it is: an order in an attribute or a comment is not diluted by the tags.
    if page is not None:
        folded = fold(page)
        if folded not in seen:
            seen.add(folded)
            result.append(View(folded, "html"))
            pending.insert(0, (folded, 0))
    # Text in invisible characters, in the input and (escaped there: "\udb40\udc41") in a JSON
    # document's strings: a few views at most, decoded after the main text's runs (pop() takes
    # the last first).
    hidden = text if reading is None else text + "\n" + "\n".join(reading[0])
    for how, decoded in itertools.islice(invisible_runs(hidden), _MAX_INVISIBLE):
        folded = fold(decoded)
        if folded not in seen:
            seen.add(folded)
            result.append(View(folded, how))
            pending.insert(0, (folded, 1))  # what it says, and its own encoded runs once
    while pending and len(result) < _MAX_RUNS:
        source, depth = pending.pop()
        for how, decoded in decoded_runs(source):
            folded = fold(decoded)
            if folded in seen:
                continue
            seen.add(folded)
            result.append(View(folded, how))
            if depth < 1:
                pending.append((folded, depth + 1))
    return result
