"""Document files as a corpus: PDF, Word, HTML and Markdown read by their libraries, cut into passages of the
student's tokens that say where they come from; bad files stop with one line or are skipped and counted."""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
from document_folder import BOILERPLATE_FOOTER, BOILERPLATE_NAV, mixed_folder, write_html
from test_cli import assert_one_line_error, cli

from specialize.artifacts import read_jsonl
from specialize.chunking import Chunker, chunk_documents
from specialize.config import load_config
from specialize.datasets import load_corpus
from specialize.documents import PAGE_BREAK
from specialize.errors import SpecializeError
from specialize.pipeline import run_stage

MAXIMUM = 128  # small passages: more of them from few documents


@pytest.fixture(scope="module")
def abstracts(scifact_slice):
    return list(load_corpus(scifact_slice))


@pytest.fixture(scope="module")
def folder(tmp_path_factory, abstracts):
    return mixed_folder(tmp_path_factory.mktemp("documents"), abstracts)


@pytest.fixture(scope="module")
def chunker():
    return Chunker("bundled:minilm", 96, MAXIMUM, 16)


def test_each_format_is_read_by_its_library(folder, abstracts):
    docs = {doc["source"]: doc for doc in load_corpus(folder)}
    assert {source: doc["format"] for source, doc in docs.items()} == {
        "report-0.pdf": "pdf", "guide-0.docx": "docx", "web/page-0.html": "html", "notes-0.md": "markdown",
    }
    assert [doc["_id"] for doc in docs.values()] == ["guide-0", "notes-0", "report-0", "web/page-0"]
    pdf = docs["report-0.pdf"]
    assert pdf["title"] == "Report 0" and pdf["text"].count(PAGE_BREAK) == 2  # three pages
    assert "diffusion tensor" in pdf["text"].split(PAGE_BREAK)[0].replace("\n", " ")  # the first abstract, on page 1
    word = docs["guide-0.docx"]["text"]
    assert f"# {abstracts[6]['title']}" in word and "10 mg | none" in word  # headings as Markdown, tables as rows
    page = docs["web/page-0.html"]
    assert page["title"] == "Page 0" and abstracts[9]["text"][:60] in page["text"]
    for boilerplate in (BOILERPLATE_NAV.split(" | ")[2], BOILERPLATE_FOOTER[:20], "newsletter"):
        assert boilerplate not in page["text"]


def test_passages_fit_the_student_and_say_where_they_come_from(folder, chunker):
    docs = list(load_corpus(folder))
    passages = list(chunk_documents(docs, chunker, whole_files=True))
    texts = {doc["_id"]: doc["text"] for doc in docs}
    assert max(chunker.tokens(p["title"], p["text"]) for p in passages) <= MAXIMUM
    for doc in docs:
        mine = [p for p in passages if p["source"] == doc["source"]]
        assert [p["_id"] for p in mine] == [f"{doc['_id']}#{n}" for n in range(1, len(mine) + 1)]
        for passage in mine:  # the span points at the passage's text in the document's
            start, end = passage["span"]
            assert texts[doc["_id"]][start:end].replace(PAGE_BREAK, "\n") == passage["text"]
    pdf = [p for p in passages if p["source"] == "report-0.pdf"]
    assert [p["page"] for p in pdf] == sorted(p["page"] for p in pdf) and {p["page"] for p in pdf} == {1, 2, 3}
    word = [p for p in passages if p["source"] == "guide-0.docx"]
    assert all(p["section"] and p["title"] == f"Guide 0: {p['section']}" for p in word)
    assert all(not p["text"].startswith("#") for p in passages)  # a heading goes with its section, into the title
    assert list(chunk_documents(load_corpus(folder), chunker, whole_files=True)) == passages  # the same ids again


def test_long_records_are_cut_and_short_ones_kept(tmp_path, abstracts, chunker):
    long = {"_id": "long", "title": "All abstracts", "text": "\n\n".join(doc["text"] for doc in abstracts[:4])}
    short = {"_id": "short", "title": "A title", "text": abstracts[0]["text"][:200]}
    kept = list(chunk_documents([short, long], chunker, whole_files=False))
    assert kept[0] == short  # as it was: its id is still the one qrels may name
    cut = kept[1:]
    assert len(cut) >= 4 and cut[0]["_id"] == "long#1" and all(chunker.tokens(p["title"], p["text"]) <= MAXIMUM for p in cut)


def test_a_run_on_a_folder_of_documents(tmp_path, folder, abstracts):
    """`specialize run` from the files to a published model, with the user's queries (no LLM here)."""
    queries = tmp_path / "queries.tsv"
    queries.write_text("id\ttext\n" + "".join(f"q{i}\t{doc['title']}\n" for i, doc in enumerate(abstracts[:14])))
    work = tmp_path / "work"
    sets = ["mine.retrievers=[bm25,bundled:minilm]", "mine.backend=torch", "label.teacher=bm25", "label.min_list_size=4",
            "label.list_size=4", "label.dev_fraction=0.3", "train.passages_per_query=4", "train.max_steps=2", "train.batch_size=2",
            "prepare.chunk_max_tokens=128",
            "prepare.chunk_tokens=96", "prepare.chunk_overlap=16"]
    result = cli("run", "-w", str(work), "--queries", str(queries), "--to", "train", *(f"--set={s}" for s in ["prepare.corpus=" + str(folder), *sets]))
    assert result.returncode == 0, result.stderr
    counts = json.loads((work / "stages" / "prepare.json").read_text())["counts"]
    assert counts["by_type"]["pdf"] == {"files": 1, "pages": 3, "passages": counts["by_type"]["pdf"]["passages"]}
    assert set(counts["by_type"]) == {"pdf", "docx", "html", "markdown"} and counts["loaded"] == 4
    corpus = list(read_jsonl(work / "corpus.jsonl"))
    assert sum(row["passages"] for row in counts["by_type"].values()) == counts["chunked"] >= len(corpus) > 20
    assert all("#" in doc["_id"] and doc["source"] and len(doc["span"]) == 2 for doc in corpus)
    assert {doc["page"] for doc in corpus if doc["source"].endswith(".pdf")} == {1, 2, 3}
    assert (work / "models" / "student" / "modules.json").is_file()
    assert cli("report", str(work)).returncode == 0
    report = (work / "report.md").read_text()
    assert "| pdf | 1 | 3 |" in report  # files → pages → passages per format
    assert "pdf" in result.stdout and "passages" in result.stdout


# --- bad files: one line, or skipped and counted ------------------------------------------------


def _encrypted_pdf(path: Path, folder: Path) -> None:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(folder / "report-0.pdf"))
    writer.encrypt(user_password="secret", algorithm="RC4-128")
    writer.write(path)


def _scanned_pdf(path: Path, folder: Path) -> None:
    from pypdf import PdfWriter

    writer = PdfWriter()  # pages with no text layer, as a scanner's images are
    for _ in range(2):
        writer.add_blank_page(width=595, height=842)
    writer.write(path)


def _corrupt_docx(path: Path, folder: Path) -> None:
    with zipfile.ZipFile(path, "w") as bundle:  # a Word package whose main part is not XML
        bundle.writestr("[Content_Types].xml", b"<Types/>")
        bundle.writestr("word/document.xml", b"\x00 not xml")


def _truncated_docx(path: Path, folder: Path) -> None:
    data = (folder / "guide-0.docx").read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty_html(path: Path, folder: Path) -> None:  # a page its scripts would fill, saved before they ran
    path.write_text('<!DOCTYPE html><html><head><title>Loading</title></head><body><div id="app"></div>'
                    '<script src="/bundle.js"></script></body></html>')


def _binary_named_pdf(path: Path, folder: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)


BAD = [
    ("locked.pdf", _encrypted_pdf, "pdf_encrypted", "encrypted PDF: it needs a password"),
    ("scan.pdf", _scanned_pdf, "pdf_no_text", "no text layer in 2 pages (a scanned PDF? run OCR on it first)"),
    ("broken.docx", _corrupt_docx, "docx_corrupt", "not a readable Word file"),
    ("half.docx", _truncated_docx, "docx_corrupt", "not a readable Word file (a damaged zip archive)"),
    ("empty.html", _empty_html, "html_no_text", "no main text found in the HTML page"),
    ("image.pdf", _binary_named_pdf, "pdf_corrupt", "not a PDF file: it starts with"),
]


@pytest.mark.parametrize(("name", "make", "reason", "message"), BAD, ids=[row[0] for row in BAD])
def test_a_bad_file_is_one_line_or_a_counted_skip(tmp_path, folder, name, make, reason, message):
    files = tmp_path / "files"
    shutil.copytree(folder, files)
    make(files / name, folder)
    work = tmp_path / "work"
    assert_one_line_error(cli("prepare", str(files), "-w", str(work), "--set", "prepare.chunk=false"), f"{files / name}: {message}")
    assert not (work / "corpus.jsonl").exists()
    assert cli("prepare", str(files), "-w", str(work), "--skip-bad", "--set", "prepare.chunk=false").returncode == 0
    counts = json.loads((work / "stages" / "prepare.json").read_text())["counts"]
    assert counts[f"skipped_{reason}"] == 1 and counts["loaded"] == 4


def test_a_pdf_without_the_extra_names_it(tmp_path, folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "pypdf", None)  # as if `specialize[documents]` were not installed
    with pytest.raises(SpecializeError) as info:
        list(load_corpus(folder))
    assert str(info.value) == f"{folder / 'report-0.pdf'}: reading PDF files needs pypdf: pip install 'specialize[documents]'"


def test_content_decides_the_format(tmp_path, folder):
    shutil.copy(folder / "report-0.pdf", tmp_path / "really-a-pdf.txt")
    write_html(tmp_path / "page.txt", "A page", [("Section", "Some text of the page that is long enough to be its main text. " * 5)])
    formats = {doc["source"]: doc["format"] for doc in load_corpus(tmp_path)}
    assert formats == {"really-a-pdf.txt": "pdf", "page.txt": "html"}


def test_chunking_defaults_off_for_beir_on_for_files(tmp_path, scifact_slice, folder):
    for corpus, chunked in ((scifact_slice, False), (folder, True)):
        work = tmp_path / corpus.name
        manifest = run_stage(load_config(None, {"workdir": str(work), "prepare.corpus": str(corpus)}), "prepare")
        assert ("chunked" in manifest["counts"]) is chunked
    ids = {doc["_id"] for doc in read_jsonl(tmp_path / scifact_slice.name / "corpus.jsonl")}
    assert ids == {doc["_id"] for doc in load_corpus(scifact_slice)}  # a BEIR corpus keeps the ids its qrels judge

