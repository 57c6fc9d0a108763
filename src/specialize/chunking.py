"""Long documents cut into passages the student reads whole, counted in its own tokenizer's tokens.

Word, HTML and Markdown documents are cut at their headings first: each section on its own, its heading joined to
the document's title (``Guide: Dosage``), so no passage is a heading alone and none runs over two sections. Within a
section (or a document without headings) semantic-text-splitter cuts on paragraphs and sentences where it can, each
passage filled towards a target and never past a maximum, neighbours sharing a few tokens. The maximum counts what the
student encodes: the title, the text and the tokenizer's special tokens. A passage is ``<document id>#<n>`` (n from 1)
and records its ``source`` file or document, its character ``span`` in the document's text, and its ``page`` (PDF) or
``section`` (its heading), so a rerun on the same files gives the same ids.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable, Iterator
from typing import Any

from specialize.documents import PAGE_BREAK

_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_MARKDOWN_FORMATS = ("markdown", "docx", "html")
MIN_BUDGET = 16
"""Text tokens a passage must have room for beside its title."""


class Chunker:
    """Cuts documents with one tokenizer: passages of ``target`` to ``maximum`` tokens, ``overlap`` shared."""

    def __init__(self, tokenizer_model: str, target: int, maximum: int, overlap: int) -> None:
        from transformers import AutoTokenizer

        from specialize.models import resolve_loadable

        tokenizer = AutoTokenizer.from_pretrained(resolve_loadable(tokenizer_model)).backend_tokenizer
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        self.target, self.maximum, self.overlap = target, maximum, overlap
        self.special = len(tokenizer.encode("").ids)

    def tokens(self, title: str, text: str) -> int:
        """The tokens the student reads for a passage: title, text and special tokens (as the encoder joins them)."""
        return len(self.tokenizer.encode(f"{title} {text}".strip()).ids)

    def fitting(self, docs: list[dict[str, Any]]) -> list[bool]:
        """Whether each document is a passage already. Every token covers at least one character, so short texts are
        not tokenized; the others are, in one parallel batch."""
        short = [len(doc["title"]) + len(doc["text"]) + 1 <= self.maximum - self.special for doc in docs]
        longer = [i for i, fits in enumerate(short) if not fits]
        encoded = self.tokenizer.encode_batch([f"{docs[i]['title']} {docs[i]['text']}".strip() for i in longer])
        for i, tokens in zip(longer, encoded):
            short[i] = len(tokens.ids) <= self.maximum
        return short

    def passages(self, doc: dict[str, Any]) -> list[dict[str, Any]]:
        """A document's passages, in order (see the module doc)."""
        text, source = doc["text"], doc.get("source", doc["_id"])
        result: list[dict[str, Any]] = []
        for heading, begin, end in _sections(text) if doc.get("format") in _MARKDOWN_FORMATS else [("", 0, len(text))]:
            title = doc["title"] if not heading or heading == doc["title"] else f"{doc['title']}: {heading}".lstrip(": ")
            budget = self.maximum - self.special - (len(self.tokenizer.encode(title, add_special_tokens=False).ids) + 1 if title else 0)
            if budget < MIN_BUDGET:  # a title that leaves no room: the passages go without it
                title, budget = "", self.maximum - self.special
            low = min(self.target, budget)
            for offset, chunk in self._splitter(low, budget, min(self.overlap, low - 1)).chunk_indices(text[begin:end]):
                start = begin + offset
                passage: dict[str, Any] = {"_id": f"{doc['_id']}#{len(result) + 1}", "title": title, "text": chunk.replace(PAGE_BREAK, "\n"),
                                           "source": source, "span": [start, start + len(chunk)]}
                if doc.get("format") == "pdf":
                    passage["page"] = text.count(PAGE_BREAK, 0, start) + 1
                if heading:
                    passage["section"] = heading
                result.append(passage)
        return result

    @functools.lru_cache(maxsize=64)  # noqa: B019 (one chunker per prepare run: the cache dies with it)
    def _splitter(self, low: int, high: int, overlap: int) -> Any:
        from semantic_text_splitter import TextSplitter

        return TextSplitter.from_huggingface_tokenizer(self.tokenizer, capacity=(low, high), overlap=overlap, trim=True)


def _sections(text: str) -> list[tuple[str, int, int]]:
    """(heading, start, end) of each Markdown section's body; text before the first heading has heading ''."""
    marks = [(match.group(1), match.start(), match.end()) for match in _HEADING.finditer(text)]
    bounds = [("", 0, 0), *marks]
    return [(heading, body, bounds[i + 1][1] if i + 1 < len(bounds) else len(text))
            for i, (heading, _, body) in enumerate(bounds) if text[body : bounds[i + 1][1] if i + 1 < len(bounds) else len(text)].strip()]


def chunk_documents(docs: Iterable[dict[str, Any]], chunker: Chunker, whole_files: bool, batch: int = 4096) -> Iterator[dict[str, Any]]:
    """Every document as passages: a document file always (``whole_files``), a record only when it is too long to read
    whole. A document without text stays as it is, for the cleaning to drop and count."""
    remaining = iter(docs)
    while block := list(itertools.islice(remaining, batch)):
        fits = [False] * len(block) if whole_files else chunker.fitting(block)
        for doc, whole in zip(block, fits):
            if whole or not doc["text"].strip():
                yield doc
            else:
                yield from chunker.passages(doc)
