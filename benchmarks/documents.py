"""Read and chunk a folder of document files: PDF pages/s, Word and HTML files/s and chunking passages/s, each beside
the bare library call on the same files (the ratio is what specialize adds: format detection, headings, tables,
sections, token budgets); peak memory of loading and chunking as the folder doubles; passage sizes against the target.

The fixtures are written by ``tests/document_folder.py`` from SciFact abstracts: per copy a 3-page PDF (fpdf2), a
Word file with headings and a table (python-docx), a web page with navigation and footer, a Markdown file.

    python benchmarks/documents.py     # writes benchmarks/results/documents.json
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from _common import peak_rss_mb, print_table, save
from document_folder import mixed_folder

from specialize.chunking import Chunker, chunk_documents
from specialize.datasets import load_corpus

COPIES = (60, 120)
TARGET, MAXIMUM, OVERLAP = 200, 256, 32
SUFFIXES = {"pdf": "*.pdf", "docx": "*.docx", "html": "web/*.html", "markdown": "*.md"}


def bare(kind: str, files: list[Path]) -> int:
    """The library alone on each file (its text, nothing else); the pages or files read."""
    if kind == "pdf":
        from pypdf import PdfReader

        pages = 0
        for file in files:
            reader = PdfReader(file)
            "".join(page.extract_text() for page in reader.pages)
            pages += len(reader.pages)
        return pages
    if kind == "docx":
        import docx

        for file in files:
            "\n".join(paragraph.text for paragraph in docx.Document(str(file)).paragraphs)
    elif kind == "html":
        import trafilatura

        for file in files:
            trafilatura.extract(file.read_bytes())
    else:
        for file in files:
            file.read_text(encoding="utf-8")
    return len(files)


def timed(function: Any, *args: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


def read_speeds(folder: Path) -> list[dict[str, Any]]:
    """Each format alone: specialize's reader (load_corpus on the files) against the bare library."""
    rows = []
    for kind, pattern in SUFFIXES.items():
        files = sorted(folder.glob(pattern))
        with tempfile.TemporaryDirectory() as tmp:  # a folder of this format only, for load_corpus
            only = Path(tmp)
            for file in files:
                (only / file.name).symlink_to(file)
            ours_s, docs = timed(lambda: list(load_corpus(only)))
        bare_s, units = timed(bare, kind, files)
        unit = "pages" if kind == "pdf" else "files"
        rows.append({
            "format": kind, "files": len(files), "unit": unit, "units": units,
            f"specialize {unit}/s": units / ours_s, f"bare library {unit}/s": units / bare_s, "ratio (ours/bare time)": ours_s / bare_s,
            "documents": len(docs),
        })
    return rows


def chunk_speed(folder: Path, chunker: Chunker) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Chunking every document (sections, titles, spans, pages) against the splitter alone on the same texts."""
    from semantic_text_splitter import TextSplitter

    docs = list(load_corpus(folder))
    ours_s, passages = timed(lambda: list(chunk_documents(docs, chunker, whole_files=True)))
    splitter = TextSplitter.from_huggingface_tokenizer(chunker.tokenizer, capacity=(TARGET, MAXIMUM), overlap=OVERLAP)
    bare_s, chunks = timed(lambda: [chunk for doc in docs for chunk in splitter.chunks(doc["text"])])
    row = {"documents": len(docs), "passages": len(passages), "specialize passages/s": len(passages) / ours_s,
           "bare splitter chunks": len(chunks), "bare splitter chunks/s": len(chunks) / bare_s, "ratio (ours/bare time)": ours_s / bare_s}
    return row, passages


def sizes(passages: list[dict[str, Any]], chunker: Chunker) -> dict[str, Any]:
    """Tokens the student reads per passage (title, text, special tokens) against the target and the maximum."""
    tokens = [chunker.tokens(p["title"], p["text"]) for p in passages]
    return {
        "passages": len(tokens), "median tokens": median(tokens), "max tokens": max(tokens), "maximum": MAXIMUM,
        "over maximum": sum(t > MAXIMUM for t in tokens),
        f"share within {TARGET // 2}-{MAXIMUM}": round(sum(TARGET // 2 <= t <= MAXIMUM for t in tokens) / len(tokens), 3),
        f"share within {TARGET}-{MAXIMUM}": round(sum(TARGET <= t <= MAXIMUM for t in tokens) / len(tokens), 3),
        "share under 32": round(sum(t < 32 for t in tokens) / len(tokens), 3),
    }


def memory(folder: Path) -> float:
    """Peak RSS (MiB) of a fresh process that loads and chunks the folder."""
    out = subprocess.run([sys.executable, __file__, "--memory", str(folder)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def main() -> None:
    abstracts = list(load_corpus("demo:scifact"))[:400]
    chunker = Chunker("bundled:minilm", TARGET, MAXIMUM, OVERLAP)
    with tempfile.TemporaryDirectory() as tmp:
        folders = {copies: mixed_folder(Path(tmp) / f"copies-{copies}", abstracts, copies) for copies in COPIES}
        large = folders[COPIES[1]]
        reading = read_speeds(large)
        chunking, passages = chunk_speed(large, chunker)
        quality = sizes(passages, chunker)
        peaks = [{"files": 4 * copies, "peak RSS MiB": memory(folder)} for copies, folder in folders.items()]
    print_table("reading document files (one format at a time)", reading)
    print_table("chunking into passages", [chunking])
    print_table("passage sizes (MiniLM tokens)", [quality])
    print_table("peak memory of load + chunk as the folder doubles", peaks)
    path = save("documents", {
        "reading": reading, "chunking": chunking, "sizes": quality, "memory": peaks,
        "memory_ratio_2x_files": peaks[1]["peak RSS MiB"] / peaks[0]["peak RSS MiB"],
        "settings": {"target": TARGET, "maximum": MAXIMUM, "overlap": OVERLAP, "tokenizer": "bundled:minilm", "copies": COPIES},
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--memory"]:
        docs = list(load_corpus(sys.argv[2]))
        passages = list(chunk_documents(docs, Chunker("bundled:minilm", TARGET, MAXIMUM, OVERLAP), whole_files=True))
        print(json.dumps({"passages": len(passages), "peak_rss_mb": peak_rss_mb()}))
    else:
        main()
