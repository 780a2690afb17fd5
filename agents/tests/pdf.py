"""Minimal PDF 1.4 files written by hand, for tests that need real PDFs without fixtures on disk.

Text is drawn in Helvetica with WinAnsi encoding, so it must be Latin-1.
"""

from __future__ import annotations


def pdf_with_text(pages: list[str], title: str | None = None) -> bytes:
    """A PDF with one page per string, each line of the string drawn on its own text line
    (an empty line as a blank one, which pypdf reads back as a paragraph break)."""
    return _pdf([_text_stream(page) for page in pages], title)


def pdf_without_text() -> bytes:
    """A one-page PDF that only draws a filled rectangle: what a scan without OCR looks like."""
    return _pdf([b"0 0 100 100 re f"], None)


def _text_stream(page: str) -> bytes:
    # An empty line is drawn as one space: pypdf then reads it back as a blank line.
    lines = "".join(f"({_escape(line) or ' '}) Tj T*\n" for line in page.split("\n"))
    return f"BT /F1 12 Tf 72 720 Td 14 TL\n{lines}ET".encode("latin-1")


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _pdf(streams: list[bytes], title: str | None) -> bytes:
    # Objects: 1 catalog, 2 page tree, 3 font, then a page and its content stream per page,
    # then the document information dictionary when there is a title.
    page_numbers = [4 + 2 * index for index in range(len(streams))]
    kids = " ".join(f"{number} 0 R" for number in page_numbers)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {len(streams)} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    for number, stream in zip(page_numbers, streams, strict=True):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> " + f"/Contents {number + 1} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    trailer = f"/Size {len(objects) + 1} /Root 1 0 R"
    if title is not None:
        objects.append(f"<< /Title ({_escape(title)}) >>".encode("latin-1"))
        trailer += f" /Info {len(objects)} 0 R"

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += f"trailer\n<< {trailer} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)
