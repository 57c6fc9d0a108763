"""The prepare stage: a corpus read, cleaned, deduplicated and cut into passages (``corpus.jsonl``), and the
passages sampled for generation (``passages.jsonl``)."""

from __future__ import annotations

import itertools
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from specialize.artifacts import write_jsonl
from specialize.chunking import Chunker, chunk_documents
from specialize.config import Config, PrepareConfig, field_default
from specialize.counts import TypeCounts
from specialize.datasets import Doc, document_files, is_beir_source, load_corpus, relevant_test_ids, resolve_dataset
from specialize.documents import PAGE_BREAK
from specialize.errors import SpecializeError
from specialize.progress import stderr
from specialize.workdir import Workdir

DOCUMENT_DROPS = ("empty", "too_short", "no_content", "duplicate", "contained")


_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


_ASCII_LETTERS = bytes(b if b >= 0x80 or chr(b).isalpha() else 0x20 for b in range(256))


_LAST_SPACE = re.compile(r"\s\S*\Z")


def _letters_or_space(match: re.Match[str]) -> str:
    """A run of non-ASCII characters with combining marks dropped and non-letters as spaces."""
    return "".join(c if c.isalpha() else " " for c in match.group() if not unicodedata.combining(c))


def normalize_for_dedup(text: str) -> str:
    """NFKC, lowercase, no accents, digits/punctuation/symbols as spaces, whitespace collapsed."""
    if text.isascii():
        text = text.lower()
    else:
        text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).lower())
        text = _NON_ASCII.sub(_letters_or_space, text)
    # Only letters are left outside ASCII, and their UTF-8 bytes are all >= 0x80.
    return " ".join(text.encode().translate(_ASCII_LETTERS).decode().split())


def _drop_short(docs: Iterable[Doc], min_chars: int, counts: Counter[str]) -> Iterator[Doc]:
    """The documents with a text of at least ``min_chars`` characters; counts the others ('empty' or 'too_short')."""
    for doc in docs:
        if not doc["text"]:
            counts["empty"] += 1
        elif len(doc["text"]) < min_chars:
            counts["too_short"] += 1
        else:
            yield doc


def _proper_prefixes(strings: Sequence[str]) -> dict[int, int]:
    """Map each (distinct) string that is a prefix of another to one that contains it, in O(n log n).

    After sorting, every string that starts with ``s`` comes right after ``s``, so comparing
    each string with its successor finds them all.
    """
    order = sorted(range(len(strings)), key=strings.__getitem__)
    return {i: j for i, j in itertools.pairwise(order) if strings[j].startswith(strings[i])}


def deduplicate(
    docs: Iterable[Doc],
    min_chars: int = 10,
    counts: Counter[str] | None = None,
    merged_into: dict[str, str] | None = None,
) -> list[Doc]:
    """Drop short, content-free, duplicate and contained documents; keep the rest in input order.

    Reasons counted: 'empty' (no text, a title alone), 'too_short', 'no_content' (nothing left after normalizing), 'duplicate'
    (same normalized text as an earlier document, which is kept) and 'contained' (normalized
    text is a prefix or a suffix of another's). ``merged_into``, when given, receives the id
    of the kept document that stands for each dropped duplicate or contained one.
    """
    counts = Counter() if counts is None else counts
    merged_into = {} if merged_into is None else merged_into
    first: dict[str, Doc] = {}
    for doc in _drop_short(docs, min_chars, counts):
        norm = normalize_for_dedup(doc["text"])
        if not norm:
            counts["no_content"] += 1
        elif norm in first:
            counts["duplicate"] += 1
            merged_into[doc["_id"]] = first[norm]["_id"]
        else:
            first[norm] = doc
    norms, kept = list(first), list(first.values())
    container = _proper_prefixes(norms) | _proper_prefixes([norm[::-1] for norm in norms])
    counts["contained"] += len(container)
    for i in container:
        j = container[i]
        while j in container:  # containers are strictly longer, so the chain ends
            j = container[j]
        merged_into[kept[i]["_id"]] = kept[j]["_id"]
    for dropped, keeper in merged_into.items():  # a duplicate of a contained text ends at the final keeper
        while keeper in merged_into:
            keeper = merged_into[keeper]
        merged_into[dropped] = keeper
    return [doc for i, doc in enumerate(kept) if i not in container]


def _truncate(text: str, max_chars: int) -> str:
    """At most ``max_chars`` characters, cut at the last whitespace before the limit if any."""
    if len(text) <= max_chars:
        return text
    head = text[: max_chars + 1]
    space = _LAST_SPACE.search(head)
    cut = head[: space.start()].rstrip() if space else ""
    return cut or text[:max_chars]


def sample_passages(
    docs: Sequence[Doc], max_passages: int, max_chars: int, seed: int, exclude_ids: set[str]
) -> list[Doc]:
    """A seeded random sample of documents not in ``exclude_ids``, texts truncated, in corpus order."""
    eligible = [i for i, doc in enumerate(docs) if doc["_id"] not in exclude_ids]
    if len(eligible) > max_passages:
        eligible = sorted(random.Random(seed).sample(eligible, max_passages))
    return [{**docs[i], "text": _truncate(docs[i]["text"], max_chars)} for i in eligible]


def prepare(
    source: str | Path,
    workdir: Path,
    *,
    id_field: str | None = field_default("prepare.id_field"),
    title_field: str | None = field_default("prepare.title_field"),
    text_field: str | None = field_default("prepare.text_field"),
    skip_bad: bool = field_default("prepare.skip_bad"),
    min_chars: int = field_default("prepare.min_chars"),
    dedup: bool = field_default("prepare.dedup"),
    max_passages: int = field_default("prepare.max_passages"),
    max_chars: int = field_default("prepare.max_chars"),
    seed: int = field_default("prepare.seed"),
    exclude_qrels: Sequence[str | Path] = (),
    chunker: Chunker | None = None,
) -> dict[str, Any]:
    """Write ``corpus.jsonl`` (clean, deduplicated; cut into passages by ``chunker`` when given) and ``passages.jsonl``
    (the sample); return counts, per format for document files. The defaults are the ``prepare`` config section's."""
    skipped: Counter[str] = Counter()
    docs = list(
        load_corpus(
            source,
            id_field=id_field,
            title_field=title_field,
            text_field=text_field,
            skip_bad=skip_bad,
            skipped=skipped,
        )
    )
    loaded = len(docs)
    whole_files = document_files(resolve_dataset(str(source))) is not None
    format_of = {doc["source"]: doc["format"] for doc in docs} if whole_files else {}
    formats = TypeCounts()
    for doc in docs if whole_files else ():
        formats.add("files", doc["format"])
        formats.add("pages", doc["format"], doc["text"].count(PAGE_BREAK) + 1 if doc["format"] == "pdf" else 0)
    if chunker is not None:
        docs = list(chunk_documents(docs, chunker, whole_files))
    for doc in docs if whole_files else ():
        formats.add("passages", format_of[doc["source"]])
    dropped: Counter[str] = Counter()
    merged_into: dict[str, str] = {}
    corpus = deduplicate(docs, min_chars, dropped, merged_into) if dedup else list(_drop_short(docs, min_chars, dropped))
    if not corpus:
        reasons = ", ".join(f"{n:,} {reason.replace('_', ' ')}" for reason, n in dropped.items() if n)
        raise SpecializeError(f"{source}: no document left to prepare: {len(docs):,} loaded, all dropped ({reasons}; "
                              f"texts under prepare.min_chars={min_chars} characters count as too short)")
    if dropped["empty"]:
        stderr.print(f"prepare: {dropped['empty']:,} documents with an empty text dropped (dropped_empty in the manifest)", highlight=False)
    relevant = relevant_test_ids(source, exclude_qrels)
    # A kept passage that absorbed a test-relevant duplicate, or was cut from a relevant document, is as good as
    # relevant: never sample it.
    excluded = relevant | {merged_into[doc_id] for doc_id in relevant if doc_id in merged_into}
    excluded |= {doc["_id"] for doc in corpus if doc.get("source") in relevant}
    passages = sample_passages(corpus, max_passages, max_chars, seed, excluded)
    work = Workdir(workdir)
    write_jsonl(work.corpus, corpus)
    write_jsonl(work.passages, passages)
    return {
        "loaded": loaded,
        **({"chunked": len(docs)} if chunker is not None else {}),
        **{f"skipped_{reason}": n for reason, n in sorted(skipped.items())},
        **{f"dropped_{reason}": dropped[reason] for reason in DOCUMENT_DROPS},
        "corpus": len(corpus),
        "excluded_test_relevant": sum(doc["_id"] in excluded for doc in corpus),
        **(formats.summary(("files", "pages", "passages"), format_of.values()) if whole_files else {}),
        "passages": len(passages),  # the sample; the passages cut from each format are in the by_type table
    }


def settings(config: Config) -> PrepareConfig:
    """The prepare section as it runs: whether documents are cut into passages (not a BEIR corpus, unless set) and by
    which tokenizer (the student's, unless set), which is what the passages depend on."""
    section = config.prepare
    if section.corpus is None:
        raise SpecializeError("prepare: no corpus given (pass a path or set prepare.corpus in the config)")
    chunk = section.chunk if section.chunk is not None else not is_beir_source(section.corpus)
    return section.model_copy(update={"chunk": chunk, "chunk_tokenizer": (section.chunk_tokenizer or config.train.student) if chunk else None})


def run(work: Workdir, config: Config) -> dict[str, Any]:
    """The stage as the pipeline runs it."""
    p = settings(config)
    assert p.corpus is not None
    chunker = Chunker(p.chunk_tokenizer, p.chunk_tokens, p.chunk_max_tokens, p.chunk_overlap) if p.chunk and p.chunk_tokenizer else None
    return prepare(p.corpus, work.root, id_field=p.id_field, title_field=p.title_field, text_field=p.text_field, skip_bad=p.skip_bad,
                   min_chars=p.min_chars, dedup=p.dedup, max_passages=p.max_passages, max_chars=p.max_chars, seed=p.seed,
                   exclude_qrels=[Path(q) for q in p.exclude_qrels], chunker=chunker)
