"""Candidate mining: BM25 and dense retrievers, reciprocal rank fusion, and the round-trip filter.

Each retriever ranks every query (in blocks, keeping only int32 corpus positions, no scores);
their lists are fused by reciprocal rank fusion and a query is kept only if its source passage
comes back high enough (the round trip). A query without a source passage (``source_id`` null: the
user's own) is kept without the round trip, its fused list as it is. Candidates are streamed to
``candidates.jsonl``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import numpy as np

from specialize.artifacts import iter_jsonl, write_jsonl
from specialize.config import MineConfig, PrefixConfig
from specialize.counts import TypeCounts
from specialize.encoder import Encoder, encode_corpus, load_encoder
from specialize.errors import SpecializeError, located
from specialize.evaluate import IndexKind, build_index, search_index
from specialize.progress import progress_bar

BM25 = "bm25"
BLOCK = 4096  # queries per retrieval call: FAISS's own query block (smaller calls cost speed)
QUERY_FIELDS = ("qid", "text", "type", "source_id")  # "generator" is carried by queries.jsonl but not needed here
NULLABLE_FIELDS = {"source_id"}  # null: a query with no source passage (the user's own)
DROP_REASONS = ("roundtrip", "source_missing")

Doc = TypeVar("Doc", bound=Hashable)
Advance = Callable[[int], None]


def _no_progress(_: int) -> None:
    """A progress callback that shows nothing."""


class Retriever(Protocol):
    """Anything that ranks corpus positions for a block of query texts."""

    name: str

    def retrieve(self, queries: Sequence[str], depth: int, advance: Advance = _no_progress) -> np.ndarray:
        """Corpus positions of the top ``depth`` hits per query, best first; -1 pads a shorter list."""
        ...


def bm25_tokenizer():
    """BM25's tokenizer: bm25s with English stop words and the English PyStemmer stemmer."""
    import Stemmer
    from bm25s.tokenization import Tokenizer

    return Tokenizer(stopwords="en", stemmer=Stemmer.Stemmer("english"))


def bm25_terms(texts: Sequence[str]) -> list[set[str]]:
    """Each text's set of BM25 terms (stemmed, stop words left out)."""
    return [set(terms) - {""} for terms in bm25_tokenizer().tokenize(list(texts), return_as="string", show_progress=False)]


class BM25Retriever:
    """bm25s over title + text, with ``bm25_tokenizer``."""

    name = BM25

    def __init__(self, texts: Sequence[str]) -> None:
        import bm25s

        self.tokenizer = bm25_tokenizer()
        tokens = self.tokenizer.tokenize(list(texts), update_vocab=True, return_as="ids", show_progress=False)
        self.index = bm25s.BM25()
        self.index.index((tokens, self.tokenizer.get_vocab_dict()), show_progress=False)
        self.size = len(texts)

    def retrieve(self, queries: Sequence[str], depth: int, advance: Advance = _no_progress) -> np.ndarray:
        """Top ``depth`` by BM25; documents sharing no term with the query (score 0) are left out."""
        tokens = self.tokenizer.tokenize(list(queries), update_vocab=False, return_as="ids", show_progress=False)
        positions, scores = self.index.retrieve(tokens, k=min(depth, self.size), show_progress=False)
        advance(len(queries))
        return np.where(scores > 0, positions, -1)

    def scores(self, query: str) -> np.ndarray:
        """The BM25 score of every indexed document for one query (0 where it shares no term)."""
        tokens = self.tokenizer.tokenize([query], update_vocab=False, return_as="ids", show_progress=False)[0]
        if not len(tokens):
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self.index.get_scores(list(tokens)), dtype=np.float32)


class DenseRetriever:
    """A SentenceTransformer with its corpus embeddings (from the shared cache) in a FAISS index."""

    def __init__(self, encoder: Encoder, ids: Sequence[str], texts: Sequence[str], index: IndexKind = "flat", batch_size: int = 64) -> None:
        self.name = encoder.name
        self.encoder = encoder
        self.batch_size = batch_size
        self.index = build_index(encode_corpus(encoder, ids, texts, batch_size, label=f"{encoder.name} · corpus"), index)

    def retrieve(self, queries: Sequence[str], depth: int, advance: Advance = _no_progress) -> np.ndarray:
        """Top ``depth`` by inner product of normalized embeddings; queries encoded longest first, batch by batch."""
        order = sorted(range(len(queries)), key=lambda i: -len(queries[i]))
        parts = []
        for start in range(0, len(order), self.batch_size):
            batch = [queries[i] for i in order[start : start + self.batch_size]]
            parts.append(self.encoder.encode(batch, self.batch_size, kind="query"))
            advance(len(batch))
        encoded = np.concatenate(parts)
        embeddings = np.empty_like(encoded)
        embeddings[order] = encoded
        return self.search(embeddings, depth)

    def search(self, query_embeddings: np.ndarray, depth: int) -> np.ndarray:
        """Top ``depth`` for queries already encoded."""
        return search_index(self.index, query_embeddings, min(depth, self.index.ntotal))[1]


def load_retrievers(
    config: MineConfig, ids: Sequence[str], texts: Sequence[str], prefixes: Mapping[str, PrefixConfig] | None = None
) -> list[Retriever]:
    """One retriever per configured name: ``bm25``, or else a dense model; models load first so a bad name fails fast."""
    overrides = {key: value.model_dump() for key, value in (prefixes or {}).items()}
    encoders = {name: load_encoder(name, config.backend, None, overrides) for name in config.retrievers if name != BM25}
    return [
        BM25Retriever(texts) if name == BM25 else DenseRetriever(encoders[name], ids, texts, config.index, config.batch_size)
        for name in config.retrievers
    ]


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Doc]], k: int = 60) -> list[tuple[Doc, float]]:
    """Fuse ranked lists: score(d) = sum of 1 / (k + rank), rank 1-based; ties go to the doc seen at a better rank first."""
    scores: dict[Doc, float] = {}
    for rank in range(1, max(map(len, rankings), default=0) + 1):
        for ranking in rankings:
            if rank <= len(ranking):
                doc = ranking[rank - 1]
                scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda item: -item[1])


def roundtrip_hits(rankings: Sequence[Sequence[Doc]], source: Doc, depth: int) -> list[bool]:
    """For each retriever, whether the source is in its top ``depth``."""
    return [source in ranking[:depth] for ranking in rankings]


def passes_roundtrip(hits: Sequence[bool], mode: Literal["any", "all"]) -> bool:
    """Keep the query when any (or all) retrievers found its source."""
    return any(hits) if mode == "any" else all(hits)


def candidate_list(fused: Sequence[Doc], source: Doc | None, top_k: int) -> tuple[list[Doc], int | None]:
    """The fused top ``top_k`` with the source put in place of the last one if it fell below; and its 1-based fused rank.

    Without a source (None): the fused top ``top_k`` as it is, and no rank.
    """
    top = list(fused[:top_k])
    if source is None:
        return top, None
    rank = list(fused).index(source) + 1
    if rank > top_k:
        top[-1] = source
    return top, rank


def read_corpus(path: Path, only: set[str] | None = None) -> tuple[list[str], list[str]]:
    """Ids and title + text of ``corpus.jsonl`` (as written by prepare); with ``only``, just those ids (streamed)."""
    if not path.is_file():
        raise SpecializeError(f"{path}: not found; run `specialize prepare` first")
    ids, texts = [], []
    for number, doc in iter_jsonl(path):
        if not isinstance(doc.get("_id"), str) or not isinstance(doc.get("text"), str):
            raise located(path, number, "expected string fields '_id' and 'text' (rerun `specialize prepare`)")
        if only is None or doc["_id"] in only:
            ids.append(doc["_id"])
            texts.append(f"{doc.get('title') or ''} {doc['text']}".strip())
    if not ids and only is None:
        raise SpecializeError(f"{path}: the corpus is empty")
    return ids, texts


def read_queries(path: Path) -> list[dict[str, Any]]:
    """The records of ``queries.jsonl``, each checked for the fields mining needs and for unique qids.

    Every field is a non-empty string, but ``source_id`` may be null (a query with no source passage).
    """
    if not path.is_file():
        raise SpecializeError(f"{path}: not found; run `specialize generate` first")
    queries, seen = [], set()
    for number, record in iter_jsonl(path):
        for field in QUERY_FIELDS:
            if field not in record:
                raise located(path, number, f"missing field {field!r}")
            value, nullable = record[field], field in NULLABLE_FIELDS
            if (value is not None or not nullable) and (not isinstance(value, str) or not value.strip()):
                raise located(path, number, f"expected a non-empty string{' or null' if nullable else ''} in field {field!r}")
        if record["qid"] in seen:
            raise located(path, number, f"duplicate qid {record['qid']!r}")
        seen.add(record["qid"])
        queries.append(record)
    if not queries:
        raise SpecializeError(f"{path}: no queries")
    return queries


def retrieve_all(retrievers: Sequence[Retriever], queries: Sequence[str], depth: int) -> list[np.ndarray]:
    """Each retriever's top ``depth`` corpus positions for every query (int32, -1 padded), with a progress bar each."""
    results = []
    for retriever in retrievers:
        found = np.full((len(queries), depth), -1, dtype=np.int32)
        with progress_bar(f"{retriever.name} · retrieving", total=len(queries), unit="queries") as advance:
            for start in range(0, len(queries), BLOCK):
                block = retriever.retrieve(queries[start : start + BLOCK], depth, advance)
                found[start : start + len(block), : block.shape[1]] = block
        results.append(found)
    return results


def mine(workdir: Path, config: MineConfig, prefixes: Mapping[str, PrefixConfig] | None = None) -> dict[str, Any]:
    """Write ``candidates.jsonl`` for the work directory's queries; return the counts for the manifest."""
    ids, texts = read_corpus(workdir / "corpus.jsonl")
    queries = read_queries(workdir / "queries.jsonl")
    position = {doc_id: i for i, doc_id in enumerate(ids)}
    counts = TypeCounts()
    for query in queries:
        if query["source_id"] is not None and query["source_id"] not in position:
            counts.add("dropped_source_missing", query["type"])
    present = [query for query in queries if query["source_id"] is None or query["source_id"] in position]
    retrievers = load_retrievers(config, ids, texts, prefixes)
    results = retrieve_all(retrievers, [query["text"] for query in present], min(config.depth, len(ids)))
    hits: Counter[str] = Counter()
    no_source = 0  # kept queries without a source passage (no round trip)

    def records() -> Iterator[dict[str, Any]]:
        nonlocal no_source
        for row, query in enumerate(present):
            rankings = [positions[row][positions[row] >= 0].tolist() for positions in results]
            source = None if query["source_id"] is None else position[query["source_id"]]
            if source is not None:
                in_top = roundtrip_hits(rankings, source, config.roundtrip_depth)
                hits.update(retriever.name for retriever, hit in zip(retrievers, in_top) if hit)
                if not passes_roundtrip(in_top, config.roundtrip):
                    counts.add("dropped_roundtrip", query["type"])
                    continue
            fused = [doc for doc, _ in reciprocal_rank_fusion(rankings, config.rrf_k)]
            top, rank = candidate_list(fused, source, config.top_k)
            counts.add("kept", query["type"])
            no_source += source is None
            yield {"qid": query["qid"], "doc_ids": [ids[i] for i in top], "source_rank": rank}

    write_jsonl(workdir / "candidates.jsonl", records())
    round_trips = sum(query["source_id"] is not None for query in present)
    return _summary(queries, len(ids), counts, no_source, hits, round_trips, [retriever.name for retriever in retrievers])


def _summary(
    queries: Sequence[Mapping[str, Any]], docs: int, counts: TypeCounts, no_source: int, hits: Counter[str], round_trips: int,
    names: Sequence[str],
) -> dict[str, Any]:
    """Manifest counts: totals, kept and dropped per reason and per query type, kept without a source (no round trip),
    and the round-trip hit rate per retriever over the ``round_trips`` queries searched with a source (none when there are none)."""
    outcomes = ["kept", *(f"dropped_{reason}" for reason in DROP_REASONS)]
    summary: dict[str, Any] = {"queries": len(queries), "docs": docs, "kept_no_source": no_source}
    summary.update(counts.summary(outcomes, sorted({query["type"] for query in queries})))
    summary.update({f"roundtrip_rate_{name}": round(hits[name] / round_trips, 4) for name in names if round_trips})
    return summary
