"""Document files read as text: PDF, Word (.docx), HTML, Markdown and plain text.

A file's format is found from its content (a PDF's ``%PDF-`` header, a Word file's zip holding ``word/document.xml``,
an HTML page's tags) as well as its suffix; a file whose content contradicts its suffix (a binary named ``.pdf``) is a
bad file. The text keeps what the chunker needs to say where a passage comes from: a PDF's pages are separated by form
feeds (``\\f``), and the headings of Word, HTML and Markdown files are Markdown ``#`` lines.

PDF, Word and HTML are read by pypdf, python-docx and trafilatura, the ``documents`` extra; a file that needs one of
them when it is not installed stops with a line naming the extra.
"""

from __future__ import annotations

import logging
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from specialize.errors import SpecializeError

DOCUMENT_SUFFIXES = (".pdf", ".docx", ".html", ".htm", ".md", ".markdown", ".txt")
FORMATS = ("pdf", "docx", "html", "markdown", "text")
PAGE_BREAK = "\f"
EXTRA = "pip install 'specialize[documents]'"

_SUFFIX_FORMAT = {".pdf": "pdf", ".docx": "docx", ".html": "html", ".htm": "html", ".md": "markdown", ".markdown": "markdown", ".txt": "text"}
_HTML_START = re.compile(rb"^\s*(<!--.*?-->\s*)*<(!doctype\s+html|html|head|body)[\s>]", re.IGNORECASE | re.DOTALL)
_HEADING_STYLE = re.compile(r"^Heading (\d)$")
_SNIFF_BYTES = 2048


class BadDocument(Exception):
    """A file that cannot give a text: a short reason key (``pdf_encrypted``, ``docx_corrupt``...) and a message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Document:
    """A file's text: ``title`` (its own, else its first heading, else the file name), ``text`` and how many pages."""

    format: str
    title: str
    text: str
    pages: int = 1


def detect_format(path: Path) -> str:
    """The file's format, from its first bytes, its suffix deciding between text formats; a contradiction is a :class:`BadDocument`."""
    with open(path, "rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    claimed = _SUFFIX_FORMAT.get(path.suffix.lower(), "text")
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        if _is_docx(path):
            return "docx"
        if claimed == "docx":
            raise BadDocument("docx_corrupt", "not a readable Word file (a damaged zip archive)")
    if claimed in ("pdf", "docx"):
        start = head[:16].decode("latin-1").encode("unicode_escape").decode()
        raise BadDocument(f"{claimed}_corrupt", f"not a {'PDF' if claimed == 'pdf' else 'Word'} file: it starts with {start!r}")
    if claimed == "html" or _HTML_START.match(head.lstrip(b"\xef\xbb\xbf")):
        return "html"
    return claimed


def _is_docx(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as bundle:
            return "word/document.xml" in bundle.namelist()
    except zipfile.BadZipFile:
        return False


def read_document(path: Path, text_format: str) -> Document:
    """Read a PDF, Word or HTML file (``text_format`` from :func:`detect_format`); a bad one is a :class:`BadDocument`."""
    readers = {"pdf": _read_pdf, "docx": _read_docx, "html": _read_html}
    return readers[text_format](path)


def _missing(path: Path, package: str, kind: str) -> SpecializeError:
    return SpecializeError(f"{path}: reading {kind} files needs {package}: {EXTRA}")


def _read_pdf(path: Path) -> Document:
    try:
        from pypdf import PdfReader
    except ImportError:
        raise _missing(path, "pypdf", "PDF") from None
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings on sloppy files are not the user's business
    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise BadDocument("pdf_encrypted", "encrypted PDF: it needs a password (decrypt it first)")
        pages = [page.extract_text() or "" for page in reader.pages]
        title = (reader.metadata.title if reader.metadata else None) or ""
    except BadDocument:
        raise
    except Exception as exc:  # noqa: BLE001 (a damaged PDF fails anywhere inside pypdf, with any error)
        raise BadDocument("pdf_corrupt", f"not a readable PDF ({type(exc).__name__}: {exc})") from None
    text = PAGE_BREAK.join(page.strip() for page in pages)
    if not text.replace(PAGE_BREAK, "").strip():
        raise BadDocument("pdf_no_text", f"no text layer in {len(pages)} pages (a scanned PDF? run OCR on it first)")
    return Document("pdf", str(title).strip() or path.stem, text, len(pages))


def _read_docx(path: Path) -> Document:
    try:
        import docx
        from docx.table import Table
    except ImportError:
        raise _missing(path, "python-docx", "Word") from None
    try:
        document = docx.Document(str(path))
        lines: list[str] = []
        for block in document.iter_inner_content():
            if isinstance(block, Table):
                lines.extend(" | ".join(cell.text.strip() for cell in row.cells) for row in block.rows)
                continue
            text = block.text.strip()
            style = block.style.name if block.style is not None else ""
            heading = _HEADING_STYLE.match(style or "")
            if text:
                lines.append(f"{'#' * int(heading.group(1))} {text}" if heading else f"# {text}" if style == "Title" else text)
        title = document.core_properties.title or ""
    except Exception as exc:  # noqa: BLE001 (a damaged package fails anywhere inside python-docx, with any error)
        raise BadDocument("docx_corrupt", f"not a readable Word file ({type(exc).__name__}: {exc})") from None
    text = "\n\n".join(lines)
    if not text.strip():
        raise BadDocument("docx_no_text", "no text in the Word file")
    return Document("docx", title.strip() or _first_heading(text) or path.stem, text)


def _read_html(path: Path) -> Document:
    try:
        import trafilatura
        from trafilatura.utils import load_html
    except ImportError:
        raise _missing(path, "trafilatura", "HTML") from None
    logging.getLogger("trafilatura").setLevel(logging.CRITICAL)
    tree = load_html(path.read_bytes())  # parsed once: the title read from it, then the main text
    title = (tree.findtext(".//title") or "").strip() if tree is not None else ""
    text = trafilatura.extract(tree, output_format="markdown", include_comments=False, include_tables=True, favor_recall=True) if tree is not None else None
    if not text or not text.strip():
        raise BadDocument("html_no_text", "no main text found in the HTML page (empty, or filled by scripts?)")
    return Document("html", title or _first_heading(text) or path.stem, text)


def _first_heading(text: str) -> str:
    match = re.search(r"^#{1,6} (.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else ""
