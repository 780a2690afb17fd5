import io

import pytest
from pypdf import PdfReader, PdfWriter

from agents.knowledge.extract import Block, Extracted, ExtractError, extract
from agents.tests.pdf import pdf_with_text, pdf_without_text

MB = 1024 * 1024


def read(name: str, data: bytes | str, max_bytes: int = MB) -> Extracted:
    return extract(name, data.encode() if isinstance(data, str) else data, max_bytes=max_bytes)


def refusal(name: str, data: bytes | str, max_bytes: int = MB) -> str:
    with pytest.raises(ExtractError) as error:
        read(name, data, max_bytes)
    return str(error.value)


def encrypted(pdf: bytes, *, user_password: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# Plain text


def test_plain_text_is_split_into_paragraphs_at_blank_lines():
    text = "First  paragraph,\tline one\nline two\n\n\n   \nSecond paragraph.\n"

    extracted = read("release_notes-2024.txt", text)

    assert extracted == Extracted(
        title="release notes 2024",
        blocks=[
            Block(heading="", text="First paragraph, line one\nline two"),
            Block(heading="", text="Second paragraph."),
        ],
    )


def test_text_newlines_form_feeds_and_a_utf8_bom_are_normalised():
    data = b"\xef\xbb\xbfone\r\ntwo\r\rthree\x0cfour\x07"

    extracted = read("notes.TXT", data)

    assert extracted.blocks == [
        Block(heading="", text="one\ntwo"),
        Block(heading="", text="three"),
        Block(heading="", text="four"),
    ]


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_text_with_a_byte_order_mark_is_read(encoding):
    data = "\ufeffGrüße aus Köln\n\nzweiter Absatz".encode(encoding)

    extracted = read("greeting.txt", data)

    assert extracted.blocks == [
        Block(heading="", text="Grüße aus Köln"),
        Block(heading="", text="zweiter Absatz"),
    ]


# Markdown


MARKDOWN = """\
---
title: front matter is not text
---
# The **Warden** guide

Warden governs *agents* and
their `tools` — see [the docs](https://example.com/docs) and \\*this\\*.

## Install

- download it
  from the site
- run `make up`

```sh
make   up
  echo "done"  # indented
```

### Nested ##

A paragraph under a nested heading.

Configure
---------

| key | value |
|-----|-------|
| a   | 1     |

[docs]: https://example.com "Docs"
"""


def test_markdown_headings_set_the_heading_of_the_blocks_below_them():
    extracted = read("guide.md", MARKDOWN)

    assert extracted == Extracted(
        title="The Warden guide",
        blocks=[
            Block(
                heading="The Warden guide",
                text="Warden governs agents and their tools — see the docs and *this*.",
            ),
            Block(heading="Install", text="- download it from the site\n- run make up"),
            Block(heading="Install", text='make   up\n  echo "done"  # indented'),
            Block(heading="Nested", text="A paragraph under a nested heading."),
            Block(heading="Configure", text="| key | value |\n| a | 1 |"),
        ],
    )


def test_markdown_without_a_level_one_heading_is_titled_by_the_file_name():
    extracted = read("Team_Handbook.markdown", "## Holidays\n\nAsk __early__.\n")

    assert extracted == Extracted(
        title="Team Handbook", blocks=[Block(heading="Holidays", text="Ask early.")]
    )


def test_a_hash_without_a_space_is_text_not_a_heading():
    extracted = read("tags.md", "#hashtag and C# stay\n")

    assert extracted.blocks == [Block(heading="", text="#hashtag and C# stay")]


# HTML


PAGE = """\
<!doctype html>
<html>
<head><title> Warden &amp; you </title><style>body { color: red }</style></head>
<body>
  <nav><a href="/">Home</a> <a href="/about">About us</a></nav>
  <header><h1>Site banner</h1></header>
  <div class="sidebar">Outside main</div>
  <main>
    <h1>Getting started</h1>
    <p>Install <b>Warden</b>&nbsp;in   five
       minutes.<br>Really.</p>
    <!-- a comment -->
    <div>Direct text <p>inner paragraph</p> tail text</div>
    <p hidden>Hidden paragraph</p>
    <span aria-hidden="true">decorative</span>
    <h2>Details</h2>
    <ul><li>first item</li><li>second <em>item</em><ul><li>nested item</li></ul></li></ul>
    <pre>  indented
    code</pre>
    <table><caption>Limits</caption>
      <tr><th>Name</th><th>Value</th></tr>
      <tr><td>size</td><td>20 MB</td></tr>
    </table>
    <dl><dt>Term</dt><dd>Definition</dd></dl>
    <script>var tracking = "script text";</script>
    <form><label>Search <input name="q"></label></form>
  </main>
  <footer>Copyright footer</footer>
</body>
</html>
"""


def test_html_keeps_the_main_text_and_drops_navigation_and_scripts():
    extracted = read("start.html", PAGE)

    assert extracted == Extracted(
        title="Warden & you",
        blocks=[
            Block(heading="Getting started", text="Install Warden in five minutes. Really."),
            Block(heading="Getting started", text="Direct text"),
            Block(heading="Getting started", text="inner paragraph"),
            Block(heading="Getting started", text="tail text"),
            Block(heading="Details", text="first item"),
            Block(heading="Details", text="second item"),
            Block(heading="Details", text="nested item"),
            Block(heading="Details", text="  indented\n    code"),
            Block(heading="Details", text="Limits\nName | Value\nsize | 20 MB"),
            Block(heading="Details", text="Term"),
            Block(heading="Details", text="Definition"),
        ],
    )


def test_html_without_main_reads_the_body_and_is_titled_by_its_first_h1():
    page = """<body><nav>Menu</nav><h1>Policy</h1><p>Be kind.</p>
    <article-like>x</article-like><footer>Footer</footer></body>"""

    extracted = read("policy.htm", page)

    assert extracted == Extracted(
        title="Policy",
        blocks=[Block(heading="Policy", text="Be kind."), Block(heading="Policy", text="x")],
    )


def test_html_prefers_an_element_with_the_main_role():
    page = '<body><p>Chrome</p><div role="main"><p>Content</p></div></body>'

    extracted = read("role.html", page)

    assert extracted == Extracted(title="role", blocks=[Block(heading="", text="Content")])


# PDF


def test_pdf_paragraphs_join_wrapped_lines_and_the_title_comes_from_metadata():
    pdf = pdf_with_text(
        ["First paragraph that\nwraps onto a second line.\n\nSecond (short) paragraph.", "Two."],
        title="Annual Report",
    )

    extracted = read("report.pdf", pdf)

    assert extracted == Extracted(
        title="Annual Report",
        blocks=[
            Block(heading="", text="First paragraph that wraps onto a second line."),
            Block(heading="", text="Second (short) paragraph."),
            Block(heading="", text="Two."),
        ],
    )


def test_pdf_without_a_title_is_titled_by_the_file_name():
    extracted = read("scan_2024.PDF", pdf_with_text(["Text"]))

    assert extracted == Extracted(title="scan 2024", blocks=[Block(heading="", text="Text")])


def test_a_pdf_encrypted_with_an_empty_user_password_is_read():
    extracted = read("open.pdf", encrypted(pdf_with_text(["Open text"]), user_password=""))

    assert extracted.blocks == [Block(heading="", text="Open text")]


def test_the_pdf_helper_writes_files_pypdf_reads_strictly():
    reader = PdfReader(io.BytesIO(pdf_with_text(["a (b) \\ c", "d"], title="T (1)")), strict=True)

    assert [page.extract_text() for page in reader.pages] == ["a (b) \\ c\n", "d\n"]
    assert reader.metadata.title == "T (1)"
    assert PdfReader(io.BytesIO(pdf_without_text()), strict=True).pages[0].extract_text() == ""


# Refusals


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("report.docx", "unsupported file type .docx"),
        ("archive.tar.gz", "unsupported file type .gz"),
        ("README", "unsupported file type (the name has no extension)"),
    ],
)
def test_an_unsupported_type_is_refused_naming_the_supported_ones(name, message):
    assert refusal(name, "text") == (
        f"{message}: Warden reads .txt, .md, .markdown, .html, .htm and .pdf"
    )


def test_a_file_over_the_limit_is_refused_with_human_sizes():
    assert refusal("big.txt", b"a" * int(31.2 * MB), max_bytes=20 * MB) == (
        "the file is 31.2 MB; the limit is 20 MB"
    )


def test_a_file_just_over_the_limit_shows_exact_sizes():
    assert refusal("big.txt", b"a" * (20 * MB + 1), max_bytes=20 * MB) == (
        "the file is 20,971,521 bytes; the limit is 20,971,520 bytes"
    )


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("empty.txt", b""),
        ("blank.txt", b" \n\r\n\t\n"),
        ("bom.txt", b"\xef\xbb\xbf"),
        ("blank.md", b"# Heading only\n\n---\n"),
        ("blank.html", b"<html><body><script>x()</script><nav>menu</nav></body></html>"),
    ],
)
def test_a_document_without_text_is_empty(name, data):
    assert refusal(name, data) == "the document is empty"


@pytest.mark.parametrize(
    "data",
    [
        b"PK\x03\x04\x14\x00\x06\x00",  # a zip (docx) renamed
        b"text with one NUL\x00 byte",
        b"mostly text \x01\x02\x03 but too many controls",
        "\ufeffno BOM then".encode("utf-16-le")[2:],  # UTF-16 without its BOM
    ],
)
def test_binary_data_posing_as_text_is_refused(data):
    assert refusal("data.txt", data) == "the file looks like binary data, not text"


def test_a_few_control_characters_are_not_binary():
    extracted = read("log.txt", "bell\x07 " + "x" * 40)

    assert extracted.blocks == [Block(heading="", text="bell " + "x" * 40)]


def test_text_that_is_not_utf8_is_refused_with_the_offset_of_the_bad_byte():
    data = "café ".encode() + "naïve".encode("latin-1")

    assert refusal("latin1.md", data) == (
        "the file is not UTF-8 text (invalid byte 0xef at offset 8)"
    )


def test_utf16_with_a_broken_surrogate_is_refused_with_the_offset():
    data = "\ufeffok".encode("utf-16-le") + b"\x00\xdc"

    assert refusal("broken.txt", data) == (
        "the file is not UTF-16 text (invalid byte 0x00 at offset 6)"
    )


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.4\nnot really a pdf",
        b"\x89PNG\r\n\x1a\n",
        pdf_with_text(["Hello"])[:150],
    ],
)
def test_malformed_pdf_bytes_are_refused(data):
    assert refusal("broken.pdf", data).startswith("the PDF cannot be read (")


def test_an_image_only_pdf_has_no_text_layer():
    assert refusal("scan.pdf", pdf_without_text()) == (
        "the PDF has no text layer (scanned or image-only); Warden does not read text from images"
    )


def test_a_password_protected_pdf_is_refused():
    pdf = encrypted(pdf_with_text(["Secret"]), user_password="s3cret")

    assert refusal("secret.pdf", pdf) == "the PDF is password-protected"


def _compressed_pdf(content: bytes) -> bytes:
    """A one-page PDF whose page draws `content` (a content stream), stored deflated."""
    import zlib

    stream = zlib.compress(content, 9)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % n + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(objects) + 1))
    out.write(b"startxref\n%d\n%%%%EOF\n" % xref)
    return out.getvalue()


LINE = b"BT /F1 12 Tf 72 712 Td (the quick brown fox jumps over the lazy dog) Tj ET\n"


def test_a_compressed_pdf_is_read_within_its_inflation_limit():
    small = _compressed_pdf(LINE * 500)

    assert "quick brown fox" in read("notes.pdf", small).blocks[0].text


def test_a_pdf_that_inflates_far_beyond_its_size_is_refused_not_read_for_minutes():
    # 62 KB that hold 11.8 million characters: read whole, it took a worker three minutes.
    bomb = _compressed_pdf(LINE * 200_000)
    assert len(bomb) < 100_000

    assert refusal("bomb.pdf", bomb, max_bytes=5 * MB).startswith("the PDF cannot be read (")


def test_a_pdf_with_more_text_than_its_budget_stops_being_read(monkeypatch):
    from agents.knowledge import extract as module

    monkeypatch.setattr(module, "PDF_MIN_TEXT", 1_000)
    monkeypatch.setattr(module, "PDF_TEXT_PER_BYTE", 0)

    assert refusal("long.pdf", _compressed_pdf(LINE * 500)) == (
        "the PDF holds more text than Warden reads from a file of its size (over 1,000 characters)"
    )
