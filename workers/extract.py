"""Text out of documents: plain text, Markdown, HTML, CSV, JSON, PDF and DOCX.

:func:`kind_of` names what a file is (from its first bytes, then its name and
declared content type); :func:`extract` returns its title and text, at most
``max_chars`` of it. Every reader streams or stops at ``max_chars`` where its
format allows; PDF and DOCX need the whole file (a local path).

A file that claims a kind it is not (a PNG named ``.pdf``, a truncated DOCX)
raises ``InvalidInput`` with the reason.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import IO, Any

from fileproc import InvalidInput

KINDS = ("text", "markdown", "html", "csv", "json", "pdf", "docx")

_BY_SUFFIX = {
    ".txt": "text", ".text": "text", ".log": "text", ".md": "markdown", ".markdown": "markdown",
    ".html": "html", ".htm": "html", ".xhtml": "html", ".csv": "csv", ".tsv": "csv", ".json": "json",
    ".pdf": "pdf", ".docx": "docx",
}
_BY_TYPE = {
    "text/plain": "text", "text/markdown": "markdown", "text/html": "html", "application/xhtml+xml": "html",
    "text/csv": "csv", "text/tab-separated-values": "csv", "application/json": "json", "application/pdf": "pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
}
_BINARY_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"\x1f\x8b", b"7z\xbc\xaf", b"\x00\x00\x00")

READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Extracted:
    kind: str
    title: str
    text: str
    truncated: bool


def kind_of(head: bytes, key: str, content_type: str) -> str:
    """The document kind, from the bytes first: a name or a declared type can lie."""
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        return "docx"  # checked to be one when opened
    suffix = Path(key).suffix.lower()
    claimed = _BY_SUFFIX.get(suffix) or _BY_TYPE.get(content_type.split(";")[0].strip().lower())
    if claimed in ("pdf", "docx"):
        raise InvalidInput(f"{key} is named or typed as {claimed.upper()} but its bytes are not one "
                           f"(starts with {head[:8]!r})")
    if head.startswith(_BINARY_MAGIC) or b"\x00" in head[:4096]:
        raise InvalidInput(f"{key} is binary, not a text document (starts with {head[:8]!r})")
    if claimed:
        return claimed
    stripped = head.lstrip()[:200].lower()
    if stripped.startswith((b"<!doctype html", b"<html")):
        return "html"
    if stripped.startswith((b"{", b"[")):
        return "json"
    return "text"


def extract(kind: str, open_stream: Any, path: Any, max_chars: int) -> Extracted:
    """Title and text of a document of ``kind``.

    ``open_stream()`` gives a fresh binary stream; ``path()`` a local file
    (called only for PDF and DOCX, which need random access).
    """
    if kind == "pdf":
        return _pdf(path(), max_chars)
    if kind == "docx":
        return _docx(path(), max_chars)
    with open_stream() as raw:
        if kind == "html":
            return _html(raw, max_chars)
        if kind == "csv":
            return _csv(raw, max_chars)
        if kind == "json":
            return _json(raw, max_chars)
        return _plain(raw, max_chars, markdown=kind == "markdown")


class _Text:
    """Collects text up to a limit, then says it is full."""

    def __init__(self, max_chars: int) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.max_chars = max_chars
        self.truncated = False

    def add(self, text: str) -> bool:
        if not text or self.truncated:
            return not self.truncated
        room = self.max_chars - self.size
        if len(text) > room:
            text, self.truncated = text[:room], True
        self.parts.append(text)
        self.size += len(text)
        return not self.truncated

    def value(self) -> str:
        return "".join(self.parts)


def _decoded(raw: IO[bytes]) -> Iterator[str]:
    """UTF-8 (a BOM dropped), bad bytes replaced, chunk by chunk."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
    while chunk := raw.read(READ_CHUNK):
        yield decoder.decode(chunk)
    yield decoder.decode(b"", final=True)


def _plain(raw: IO[bytes], max_chars: int, *, markdown: bool) -> Extracted:
    out = _Text(max_chars)
    for piece in _decoded(raw):
        if not out.add(piece):
            break
    text = out.value()
    title = ""
    for line in text.splitlines()[:50]:
        line = line.strip()
        if markdown and line.startswith("#"):
            title = line.lstrip("#").strip()
            break
        if not markdown and line:
            title = line[:200]
            break
    return Extracted("markdown" if markdown else "text", title, text, out.truncated)


class _HtmlText(HTMLParser):
    """Visible text: no scripts, styles or templates; block elements end a line."""

    SKIP = frozenset({"script", "style", "noscript", "template", "svg", "head"})
    BLOCK = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article",
                       "pre", "blockquote", "td", "th", "title"})

    def __init__(self, out: _Text) -> None:
        super().__init__(convert_charrefs=True)
        self.out = out
        self.skipping = 0
        self.in_title = False
        self.title: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "title":
            self.in_title = True
        elif tag in self.SKIP:
            self.skipping += 1
        if tag in self.BLOCK:
            self.out.add("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        elif tag in self.SKIP and self.skipping:
            self.skipping -= 1
        if tag in self.BLOCK:
            self.out.add("\n")

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.append(data)
        elif not self.skipping:
            self.out.add(data)


def _html(raw: IO[bytes], max_chars: int) -> Extracted:
    out = _Text(max_chars)
    parser = _HtmlText(out)
    for piece in _decoded(raw):
        parser.feed(piece)
        if out.truncated:
            break
    parser.close()
    lines = (" ".join(line.split()) for line in out.value().splitlines())
    return Extracted("html", " ".join("".join(parser.title).split()), "\n".join(x for x in lines if x),
                     out.truncated)


def _csv(raw: IO[bytes], max_chars: int) -> Extracted:
    out = _Text(max_chars)
    reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline=""))
    title = ""
    try:
        for number, row in enumerate(reader):
            line = " ".join(cell.strip() for cell in row if cell.strip())
            if number == 0:
                title = line[:200]
            if not out.add(line + "\n"):
                break
    except csv.Error as exc:
        raise InvalidInput(f"not a readable CSV file: {exc}") from exc
    return Extracted("csv", title, out.value(), out.truncated)


def _json(raw: IO[bytes], max_chars: int) -> Extracted:
    try:
        data = json.load(io.TextIOWrapper(raw, encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"not valid JSON: {exc}") from exc
    out = _Text(max_chars)
    title = str(data.get("title") or data.get("name") or "")[:200] if isinstance(data, dict) else ""
    stack: list[Any] = [data]
    while stack and not out.truncated:  # keys and values, depth first, in document order
        value = stack.pop()
        if isinstance(value, dict):
            for name, item in reversed(list(value.items())):
                stack.extend([item, f"{name}:"])
        elif isinstance(value, list):
            stack.extend(reversed(value))
        elif value is not None:
            out.add(f"{value}\n" if not str(value).endswith(":") else f"{value} ")
    return Extracted("json", title, out.value(), out.truncated)


def _pdf(path: Path, max_chars: int) -> Extracted:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    out = _Text(max_chars)
    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise InvalidInput("the PDF is encrypted with a password")
        meta = reader.metadata
        title = str(meta.title or "") if meta else ""
        for page in reader.pages:
            if not out.add((page.extract_text() or "") + "\n"):
                break
    except InvalidInput:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError, AssertionError) as exc:
        raise InvalidInput(f"not a readable PDF: {exc}") from exc
    return Extracted("pdf", title, out.value().strip(), out.truncated)


def _docx(path: Path, max_chars: int) -> Extracted:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise InvalidInput(f"not a readable DOCX document: {exc}") from exc
    out = _Text(max_chars)
    for paragraph in document.paragraphs:
        if not out.add(paragraph.text + "\n"):
            break
    for table in document.tables:
        for row in table.rows:
            if not out.add(" ".join(cell.text for cell in row.cells) + "\n"):
                break
    title = document.core_properties.title or ""
    if not title:
        title = next((p.text for p in document.paragraphs if p.text.strip()), "")[:200]
    return Extracted("docx", title, out.value().strip(), out.truncated)


__all__ = ["KINDS", "Extracted", "extract", "kind_of"]
