"""Cleaning of generated queries: keep one line, strip the decoration, drop the unusable ones.

``clean_query`` turns a raw LLM reply into a query or a drop reason; ``QueryDeduper`` drops a
query already kept. Every reason a query can be dropped for is in ``QUERY_DROPS``. The limits' defaults are the
``generate`` config section's.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from specialize.config import field_default

QUERY_DROPS = ("empty", "too_short", "too_long", "copies_passage", "duplicate")

_THINK = re.compile(r"^\s*<think>.*?(?:</think>|\Z)", re.DOTALL)  # a reasoning model's thoughts, closed or cut off
_SKIPPED_LINE = re.compile(r"^(?:```\w*|\W*)$")  # blank, punctuation only ("---", "**"), or a code fence
_LIST_MARKER = re.compile(r"^(?:\d{1,2}[.)]|[-*•])\s+")
_LABELS = ("web search query", "search query", "web search", "search", "query", "question", "claim", "title", "keywords", "keyword", "q")
_LABEL = re.compile(rf"^(?:\*\*|__)?\s*(?:{'|'.join(_LABELS)})(?:\s*\d+)?\s*(?:\*\*|__)?\s*:\s*(?:\*\*|__)?\s*", re.IGNORECASE)
_WRAPPERS = (("**", "**"), ("__", "__"), ('"', '"'), ("'", "'"), ("“", "”"), ("‘", "’"), ("«", "»"), ("`", "`"), ("*", "*"))
_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_TRAILING_PUNCTUATION = ".?!;:,…"


def clean_query(
    raw: str,
    passage: str,
    *,
    min_chars: int = field_default("generate.min_chars"),
    max_chars: int = field_default("generate.max_chars"),
    max_copied_words: int = field_default("generate.max_copied_words"),
) -> tuple[str | None, str | None]:
    """(query, None) for a usable reply, else (None, drop reason).

    The query is the first line that is not blank, a code fence or a preamble ending with a colon
    ("Here is a question:"), without list markers, labels ("Query:", "Claim:"...), wrapping
    quotes, backticks or bold, and with its whitespace collapsed. It is dropped when shorter than
    ``min_chars``, longer than ``max_chars``, or when it repeats the passage, one of its sentences or a run of
    ``max_copied_words`` of its words (case and punctuation aside).
    """
    query = _first_query_line(_THINK.sub("", raw))
    if not query:
        return None, "empty"
    if len(query) < min_chars:
        return None, "too_short"
    if len(query) > max_chars:
        return None, "too_long"
    if copies_passage(query, passage, max_copied_words):
        return None, "copies_passage"
    return query, None


def copies_passage(query: str, passage: str, max_copied_words: int = field_default("generate.max_copied_words")) -> bool:
    """Whether the query is the passage's words or one of its sentences (a title is one), or shares a
    run of ``max_copied_words`` words with it."""
    query_words = _words(query)
    if any(query_words == _words(sentence) for sentence in (passage, *_SENTENCE_END.split(passage))):
        return True
    return shares_words(query, passage, max_copied_words)


def shares_words(query: str, text: str, run: int) -> bool:
    """Whether the query and the text share ``run`` consecutive words (case and punctuation aside)."""
    text_words = _words(text)
    runs = {tuple(text_words[i : i + run]) for i in range(len(text_words) - run + 1)}
    query_words = _words(query)
    return any(tuple(query_words[i : i + run]) in runs for i in range(len(query_words) - run + 1))


def normalize_query(query: str) -> str:
    """The form two queries share when they are duplicates: NFKC, casefolded, single spaces, no final punctuation."""
    text = " ".join(unicodedata.normalize("NFKC", query).casefold().split())
    return text.rstrip(_TRAILING_PUNCTUATION + " ")


class QueryDeduper:
    """Remembers the queries kept so far (``seen``: those of an earlier, resumed run)."""

    def __init__(self, seen: Iterable[str] = ()) -> None:
        self._seen = {normalize_query(query) for query in seen}

    def check(self, query: str) -> str | None:
        """"duplicate" for a query already seen; else None, and the query is remembered."""
        key = normalize_query(query)
        if key in self._seen:
            return "duplicate"
        self._seen.add(key)
        return None


def _first_query_line(text: str) -> str:
    """The first line left non-empty by stripping that is not a preamble ("Here is a query:"), or ''."""
    for line in text.splitlines():
        if _SKIPPED_LINE.match(line.strip()):
            continue
        query = " ".join(_strip_decoration(line).split())
        if query and not query.endswith(":"):
            return query
    return ""


def _strip_decoration(line: str) -> str:
    """The line without list markers, labels and wrapping quotes, removed until none is left."""
    previous = None
    while line != previous:
        previous = line
        line = _LABEL.sub("", _LIST_MARKER.sub("", line.strip(), count=1), count=1)
        line = _unwrap(line.strip())
    return line


def _unwrap(text: str) -> str:
    """The text inside a pair of wrapping quotes, backticks or bold markers, if the pair wraps all of it.

    A pair wraps all of it unless a marker inside opens or closes another span, as in
    '"Hello" by Adele "Someone"'; an apostrophe inside a word ('what's') does not.
    """
    for opening, closing in _WRAPPERS:
        inner = text[len(opening) : -len(closing)]
        if len(text) > len(opening) + len(closing) and text.startswith(opening) and text.endswith(closing):
            if f" {opening}" not in inner and f"{closing} " not in inner:
                return inner.strip()
    return text


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())
