"""Document files written by the libraries that make them (fpdf2, python-docx; HTML by hand), from real abstracts:
the fixtures of test_documents and benchmarks/documents.py."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

BOILERPLATE_NAV = "Home | Products | Pricing | Careers | Contact us | Sign in"
BOILERPLATE_FOOTER = "Copyright 2026 Example Corp. All rights reserved. Privacy policy. Cookie settings."


def _latin1(text: str) -> str:
    """fpdf2's core fonts are Latin-1: other characters become '?'."""
    return text.encode("latin-1", "replace").decode("latin-1")


def write_pdf(path: Path, title: str, pages: Sequence[Sequence[tuple[str, str]]]) -> None:
    """A PDF with a title and, on each page, sections of (heading, text)."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_title(_latin1(title))
    pdf.set_auto_page_break(auto=False)
    for sections in pages:
        pdf.add_page()
        for heading, text in sections:
            pdf.set_font("Helvetica", style="B", size=12)
            pdf.multi_cell(0, 6, _latin1(heading), new_x="LMARGIN", new_y="NEXT")
            pdf.set_font("Helvetica", size=7)
            pdf.multi_cell(0, 3.5, _latin1(text), new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(path))


def write_docx(path: Path, title: str, sections: Sequence[tuple[str, str]], table: Sequence[Sequence[str]] = ()) -> None:
    """A Word file: a Title paragraph, then each section as a Heading 1 and its paragraphs; a table at the end."""
    import docx

    document = docx.Document()
    document.core_properties.title = title
    document.add_paragraph(title, style="Title")
    for heading, text in sections:
        document.add_heading(heading, level=1)
        for paragraph in text.split("\n\n"):
            document.add_paragraph(paragraph)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for row, cells in zip(grid.rows, table):
            for cell, value in zip(row.cells, cells):
                cell.text = value
    document.save(str(path))


def write_html(path: Path, title: str, sections: Sequence[tuple[str, str]]) -> None:
    """A web page: navigation, a header and a footer around an article of <h2> sections."""
    body = "".join(f"<h2>{heading}</h2>" + "".join(f"<p>{p}</p>" for p in text.split("\n\n")) for heading, text in sections)
    path.write_text(
        f"<!DOCTYPE html><html><head><title>{title}</title></head><body>"
        f"<nav><ul>{''.join(f'<li><a href=/{w}>{w}</a></li>' for w in BOILERPLATE_NAV.split(' | '))}</ul></nav>"
        f"<header><p>Subscribe to our newsletter for weekly updates</p></header>"
        f"<main><article><h1>{title}</h1>{body}</article></main>"
        f"<footer><p>{BOILERPLATE_FOOTER}</p></footer></body></html>",
        encoding="utf-8",
    )


def write_markdown(path: Path, title: str, sections: Sequence[tuple[str, str]]) -> None:
    path.write_text(f"# {title}\n\n" + "".join(f"## {heading}\n\n{text}\n\n" for heading, text in sections), encoding="utf-8")


def mixed_folder(folder: Path, docs: Sequence[dict[str, str]], copies: int = 1) -> Path:
    """``copies`` of each format (PDF, Word, HTML, Markdown), each made of several real documents as its sections."""
    (folder / "web").mkdir(parents=True, exist_ok=True)
    sections = [(doc["title"] or doc["_id"], doc["text"]) for doc in docs]
    for n in range(copies):
        part = sections[n * 3 % len(sections):] + sections[: n * 3 % len(sections)]
        write_pdf(folder / f"report-{n}.pdf", f"Report {n}", [part[0:2], part[2:4], part[4:6]])
        write_docx(folder / f"guide-{n}.docx", f"Guide {n}", part[6:9], table=[["dose", "effect"], ["10 mg", "none"], ["20 mg", "mild"]])
        write_html(folder / "web" / f"page-{n}.html", f"Page {n}", part[9:12])
        write_markdown(folder / f"notes-{n}.md", f"Notes {n}", part[12:14])
    return folder
