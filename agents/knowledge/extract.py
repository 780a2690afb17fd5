"""Text out of uploaded documents: a title, and paragraph-sized blocks under their nearest heading.

Pure functions over bytes; ingestion (a Celery task) calls `extract` and shows an `ExtractError`'s
message to whoever uploaded the file, so every failure on bad input is one, worded for them.
"""

from __future__ import annotations

import codecs
import html
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bs4.element import Tag
# bs4 and pypdf are imported where a document is read (the worker), not by the web process that
# only queues documents: together they cost ~0.2 s of start-up.

SUPPORTED = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf")


class ExtractError(Exception):
    """The document cannot be read; the message is for the person who uploaded it (no traceback,
    no internals)."""


@dataclass(frozen=True)
class Block:
    """One paragraph (or list, code block, table) and the nearest heading above it ('' before any
    heading)."""

    heading: str
    text: str


@dataclass(frozen=True)
class Extracted:
    title: str
    blocks: list[Block]


def extract(name: str, data: bytes, *, max_bytes: int) -> Extracted:
    """The title and blocks of the document `data`, read according to the extension of `name`."""
    path = PurePosixPath(name.replace("\\", "/"))
    suffix = path.suffix.lower()
    reader = _READERS.get(suffix)
    if reader is None:
        kind = f"type {suffix}" if suffix else "type (the name has no extension)"
        readable = ", ".join(SUPPORTED[:-1]) + " and " + SUPPORTED[-1]
        raise ExtractError(f"unsupported file {kind}: Warden reads {readable}")
    if len(data) > max_bytes:
        raise ExtractError(too_big(len(data), max_bytes))
    if not data:
        raise ExtractError("the document is empty")
    stem = " ".join(re.sub(r"[_-]+", " ", path.stem).split()) or path.name
    extracted = reader(data, stem)
    if not extracted.blocks:
        raise ExtractError("the document is empty")
    return extracted


def too_big(size: int, limit: int) -> str:
    """ "The file is 31.2 MB; the limit is 20 MB", for the person who sent it."""
    shown, allowed = _human_size(size), _human_size(limit)
    if shown == allowed:  # just over the limit: rounding would show the same size twice
        shown, allowed = f"{size:,} bytes", f"{limit:,} bytes"
    return f"the file is {shown}; the limit is {allowed}"


def _human_size(size: int) -> str:
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} bytes"


# Text formats ----------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")  # C0 controls except \t \n \f \r, and DEL
_BINARY_SHARE = 0.05


def _decode(data: bytes) -> str:
    """`data` as text with \\n newlines: UTF-8 (an optional BOM), or UTF-16 with its BOM."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding, start = "utf-16", 0  # the codec reads the BOM for the byte order
    else:
        encoding, start = "utf-8", len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
        if _looks_binary(data.decode("latin-1")):  # before decoding: binary is rarely valid UTF-8
            raise ExtractError("the file looks like binary data, not text")
    try:
        text = data[start:].decode(encoding)
    except UnicodeDecodeError as error:
        offset = start + error.start
        raise ExtractError(
            f"the file is not {encoding.upper()} text "
            f"(invalid byte 0x{data[offset]:02x} at offset {offset})"
        ) from None
    if _looks_binary(text):
        raise ExtractError("the file looks like binary data, not text")
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text.replace("\f", "\n\n"))


def _looks_binary(text: str) -> bool:
    return "\x00" in text or len(_CONTROL.findall(text)) > _BINARY_SHARE * len(text)


def _squash(text: str) -> str:
    """`text` on one line, each run of whitespace one space."""
    return " ".join(text.split())


def _paragraphs(lines: Iterable[str]) -> Iterable[list[str]]:
    """Runs of non-blank lines."""
    run: list[str] = []
    for line in lines:
        if line.strip():
            run.append(line)
        elif run:
            yield run
            run = []
    if run:
        yield run


def _txt(data: bytes, stem: str) -> Extracted:
    blocks = [
        Block(heading="", text="\n".join(_squash(line) for line in paragraph))
        for paragraph in _paragraphs(_decode(data).split("\n"))
    ]
    return Extracted(title=stem, blocks=blocks)


# Markdown --------------------------------------------------------------------------------------

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n.*?\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*")
_SETEXT = re.compile(r" {0,3}(=+|-+)[ \t]*")
_BREAK = re.compile(r" {0,3}([-*_])[ \t]*(?:\1[ \t]*){2,}")
_QUOTE = re.compile(r"\A(?: {0,3}> ?)+")
_LINK_DEFINITION = re.compile(
    r""" {0,3}\[[^\]]+\]:[ \t]*\S+(?:[ \t]+(?:"[^"]*"|'[^']*'|\([^)]*\)))?[ \t]*"""
)
_LIST_ITEM = re.compile(r"(?:[-*+]|\d{1,9}[.)])(?:\s|$)")
_TABLE_RULE = re.compile(r"\|?\s*:?-+:?\s*(?:\|\s*:?-+:?\s*)*\|?")

_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_ESCAPED = re.compile(r"[\ue000-\ue07f]")  # escaped punctuation, parked in the private use area
_INLINE_MARKUP = [
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),  # image: its alt text
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),  # [text](url)
    (re.compile(r"\[([^\]]+)\]\[[^\]]*\]"), r"\1"),  # [text][reference]
    (re.compile(r"<((?:https?|mailto):[^>\s]+)>"), r"\1"),  # <autolink>
    (re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*"), r"\1"),
    (re.compile(r"(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)"), r"\1"),
    (re.compile(r"~~(?=\S)(.+?)(?<=\S)~~"), r"\1"),
    (re.compile(r"\*(?=\S)(.+?)(?<=\S)\*"), r"\1"),
    (re.compile(r"(?<!\w)_(?=\S)(.+?)(?<=\S)_(?!\w)"), r"\1"),
]


def _plain(text: str) -> str:
    """Markdown inline markup reduced to its text: emphasis, code spans, links and escapes."""
    pieces = _CODE_SPAN.split(text)  # prose, backticks, code, prose, ...
    for index in range(0, len(pieces), 3):
        prose = _ESCAPE.sub(lambda match: chr(0xE000 + ord(match[1])), pieces[index])
        for pattern, replacement in _INLINE_MARKUP:
            prose = pattern.sub(replacement, prose)
        prose = _ESCAPED.sub(lambda match: chr(ord(match[0]) - 0xE000), prose)
        pieces[index] = html.unescape(prose)
    for index in range(1, len(pieces), 3):
        pieces[index] = ""
        pieces[index + 1] = pieces[index + 1].strip()
    return _squash("".join(pieces))


def _markdown_paragraph(lines: list[str]) -> str:
    """A paragraph's lines joined with spaces, except that each list item and table row keeps its
    own line."""
    out: list[str] = []
    for line in lines:
        own_line = bool(_LIST_ITEM.match(line) or line.startswith("|"))
        if out and not own_line and not out[-1].startswith("|"):
            out[-1] += " " + line
        else:
            out.append(line)
    return "\n".join(out)


def _markdown(data: bytes, stem: str) -> Extracted:
    lines = _FRONT_MATTER.sub("", _decode(data)).split("\n")
    title = ""
    heading = ""
    blocks: list[Block] = []
    paragraph: list[str] = []

    def flush() -> None:
        text = _markdown_paragraph(paragraph)
        if text:
            blocks.append(Block(heading=heading, text=text))
        paragraph.clear()

    index = 0
    while index < len(lines):
        line = _QUOTE.sub("", lines[index])
        index += 1
        if fence := _FENCE.match(line):
            flush()
            marker = fence[1]
            code: list[str] = []
            while index < len(lines):
                closing = _FENCE.fullmatch(lines[index].rstrip())
                index += 1
                if closing and closing[1][0] == marker[0] and len(closing[1]) >= len(marker):
                    break
                code.append(lines[index - 1].rstrip())
            text = "\n".join(code).strip("\n")
            if text.strip():
                blocks.append(Block(heading=heading, text=text))
        elif atx := _ATX.fullmatch(line):
            flush()
            heading = _plain(atx[2] or "")
            if atx[1] == "#" and not title:
                title = heading
        elif (
            paragraph and (setext := _SETEXT.fullmatch(line)) and not _LIST_ITEM.match(paragraph[0])
        ):
            heading = _squash(" ".join(paragraph))  # its lines are plain already
            paragraph.clear()
            if setext[1][0] == "=" and not title:
                title = heading
        elif not line.strip() or _BREAK.fullmatch(line):
            flush()
        elif not _LINK_DEFINITION.fullmatch(line) and not _TABLE_RULE.fullmatch(line.strip()):
            paragraph.append(_plain(line))
    flush()
    return Extracted(title=title or stem, blocks=blocks)


# HTML ------------------------------------------------------------------------------------------

_DROPPED = (
    *("script", "style", "noscript", "template", "nav", "header", "footer"),
    *("aside", "form", "svg", "iframe"),
)
_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
# Everything else is a block: it ends the text before it and its own text becomes a block.
_INLINE = frozenset(
    {
        *("a", "abbr", "b", "bdi", "bdo", "cite", "code", "data", "del", "dfn", "em", "font"),
        *("i", "img", "ins", "kbd", "label", "mark", "q", "s", "samp", "small", "span"),
        *("strike", "strong", "sub", "sup", "time", "tt", "u", "var", "wbr"),
    }
)


def _html(data: bytes, stem: str) -> Extracted:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_decode(data), "html.parser")
    unwanted = [
        *soup.find_all(_DROPPED),
        *soup.find_all(hidden=True),
        *soup.find_all(None, {"aria-hidden": re.compile(r"\Atrue\Z", re.IGNORECASE)}),
    ]
    for tag in unwanted:
        if not tag.decomposed:  # already gone with an unwanted ancestor
            tag.decompose()
    for br in soup.find_all("br"):
        br.replace_with(" ")
    title_tag, first_h1 = soup.find("title"), soup.find("h1")
    root = (
        soup.find(lambda tag: tag.name in ("main", "article") or tag.get("role") == "main")
        or soup.body
        or soup
    )
    walker = _HtmlBlocks()
    walker.walk(root)
    title = _squash(title_tag.get_text()) if title_tag else ""
    title = title or (_squash(first_h1.get_text()) if first_h1 else "")
    return Extracted(title=title or stem, blocks=walker.blocks)


class _HtmlBlocks:
    """Walks an element tree in document order, collecting the text of each block element under
    the latest heading."""

    def __init__(self) -> None:
        self.heading = ""
        self.blocks: list[Block] = []
        self._inline: list[str] = []

    def walk(self, element: Tag) -> None:
        from bs4.element import NavigableString, PreformattedString, Tag

        for child in element.children:
            if isinstance(child, Tag):
                self._element(child)
            elif isinstance(child, NavigableString) and not isinstance(child, PreformattedString):
                self._inline.append(str(child))  # PreformattedString: comments, doctype, CDATA

    def _element(self, tag: Tag) -> None:
        if tag.name in _INLINE:
            self.walk(tag)
            return
        self._flush()
        if tag.name in ("head", "title"):
            return
        if tag.name in _HEADINGS:
            self.heading = _squash(tag.get_text())
        elif tag.name == "pre":
            self._add("\n".join(line.rstrip() for line in tag.get_text().split("\n")).strip("\n"))
        elif tag.name == "table":
            self._add("\n".join(_table_lines(tag)))
        else:
            self.walk(tag)
            self._flush()

    def _flush(self) -> None:
        self._add(_squash("".join(self._inline)))
        self._inline.clear()

    def _add(self, text: str) -> None:
        if text.strip():
            self.blocks.append(Block(heading=self.heading, text=text))


def _table_lines(table: Tag) -> Iterable[str]:
    """The caption, then one line per row of `table` (not of tables nested in it): its cells
    joined with ' | '."""
    if table.caption and (caption := _squash(table.caption.get_text())):
        yield caption
    for row in table.find_all("tr"):
        if row.find_parent("table") is table:
            cells = (
                _squash(cell.get_text(" ")) for cell in row.find_all(["td", "th"], recursive=False)
            )
            if line := " | ".join(cell for cell in cells if cell):
                yield line


# PDF -------------------------------------------------------------------------------------------


# How far a PDF may expand when read: each stream to this many times the file's size, and its
# text to this many characters per byte of the file (at least PDF_MIN_TEXT).
PDF_INFLATION = 20
PDF_TEXT_PER_BYTE = 10
PDF_MIN_TEXT = 2_000_000


def _pdf(data: bytes, stem: str) -> Extracted:
    from pypdf import PasswordType, PdfReader, apply_configuration

    # A PDF's streams are compressed: a small file can hold millions of characters (a 62 KB file
    # held 11.8 million, three minutes of a worker's time). Each stream may inflate to at most
    # PDF_INFLATION times the file (pypdf's own limits), and reading stops past a text budget.
    inflated = min(75_000_000, max(1_000_000, PDF_INFLATION * len(data)))
    budget = max(PDF_MIN_TEXT, PDF_TEXT_PER_BYTE * len(data))
    limits = {
        f"{kind}_maximum_output_length": inflated
        for kind in ("zlib", "lzw", "run_length", "brotli", "jbig2", "array_based_stream")
    }
    try:
        with apply_configuration(None, **limits):
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
                raise ExtractError("the PDF is password-protected")
            pages, read = [], 0
            for page in reader.pages:
                pages.append(page.extract_text() or "")
                read += len(pages[-1])
                if read > budget:
                    raise ExtractError(
                        f"the PDF holds more text than Warden reads from a file of its size "
                        f"(over {budget:,} characters)"
                    )
            metadata_title = reader.metadata.title if reader.metadata else None
    except ExtractError:
        raise
    except Exception as error:  # pypdf raises many types on damaged files, not only PyPdfError
        raise ExtractError(f"the PDF cannot be read ({_pdf_reason(error)})") from error
    if not pages:
        raise ExtractError("the document is empty")
    if not any(character.isalpha() for page in pages for character in page):
        raise ExtractError(
            "the PDF has no text layer (scanned or image-only); "
            "Warden does not read text from images"
        )
    blocks = [
        Block(heading="", text=_squash(" ".join(paragraph)))
        for page in pages
        for paragraph in _paragraphs(_CONTROL.sub("", page).replace("\r", "\n").split("\n"))
    ]
    title = _squash(metadata_title) if isinstance(metadata_title, str) else ""
    return Extracted(title=title or stem, blocks=blocks)


def _pdf_reason(error: Exception) -> str:
    """pypdf's own messages describe the damage ("EOF marker not found"); other exceptions from
    inside it (KeyError: '/Root') would only confuse the reader."""
    from pypdf.errors import PyPdfError

    lines = str(error).strip().splitlines()
    if isinstance(error, PyPdfError) and lines:
        return lines[0][:120]
    return "the file is damaged or not a PDF"


_READERS: dict[str, Callable[[bytes, str], Extracted]] = {
    ".txt": _txt,
    ".md": _markdown,
    ".markdown": _markdown,
    ".html": _html,
    ".htm": _html,
    ".pdf": _pdf,
}
