"""Retrieval, the floor under mine, the teachers, the gate and evaluate: BM25 (bm25s), dense search over FAISS
indexes, and reciprocal rank fusion."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Literal, Protocol, TypeVar

import numpy as np

from specialize.config import MineConfig, PrefixConfig
from specialize.encoder import Encoder, encode_corpus, load_encoder
from specialize.errors import SpecializeError
from specialize.metrics import Run
from specialize.progress import progress_bar

BM25 = "bm25"


BLOCK = 4096  # queries per retrieval call: FAISS's own query block (smaller calls cost speed)


DocKey = TypeVar("DocKey", bound=Hashable)


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
    encoders = {name: load_encoder(name, config.backend, None, prefixes) for name in config.retrievers if name != BM25}
    return [
        BM25Retriever(texts) if name == BM25 else DenseRetriever(encoders[name], ids, texts, config.index, config.batch_size)
        for name in config.retrievers
    ]


def reciprocal_rank_fusion(rankings: Sequence[Sequence[DocKey]], k: int = 60) -> list[tuple[DocKey, float]]:
    """Fuse ranked lists: score(d) = sum of 1 / (k + rank), rank 1-based; ties go to the doc seen at a better rank first."""
    scores: dict[DocKey, float] = {}
    for rank in range(1, max(map(len, rankings), default=0) + 1):
        for ranking in rankings:
            if rank <= len(ranking):
                doc = ranking[rank - 1]
                scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda item: -item[1])


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


IndexKind = Literal["flat", "hnsw", "ivf"]


HNSW_NEIGHBORS = 32


HNSW_EF_SEARCH = 128


IVF_MIN_POINTS_PER_LIST = 39  # FAISS k-means wants at least this many training points per list


IVF_PROBE_SHARE = 0.25  # of the lists searched per query: 93% top-100 overlap with flat on SciFact


IVF_MIN_PROBES = 16


def build_index(doc_embeddings: np.ndarray, kind: IndexKind = "flat"):
    """An inner-product FAISS index over the embeddings: exact (flat), HNSW graph, or IVF trained on them."""
    import faiss

    data = np.ascontiguousarray(doc_embeddings, dtype=np.float32)
    count, dim = data.shape
    index: faiss.Index
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBORS, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efSearch = HNSW_EF_SEARCH  # FAISS searches with max(efSearch, k)
        index = hnsw
    elif kind == "ivf":
        lists = max(1, min(round(4 * math.sqrt(count)), count // IVF_MIN_POINTS_PER_LIST))
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        ivf.train(data)
        ivf.nprobe = min(lists, max(IVF_MIN_PROBES, round(lists * IVF_PROBE_SHARE)))
        index = ivf
    else:
        raise SpecializeError(f"index {kind!r}: choose one of flat, hnsw, ivf")
    index.add(data)
    return index


def search_index(index, query_embeddings: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``depth`` (scores, doc positions) per query from a FAISS index (which blocks queries itself); -1 where none."""
    return index.search(np.ascontiguousarray(query_embeddings, dtype=np.float32), depth)


def search(
    query_embeddings: np.ndarray,
    doc_embeddings: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    top_k: int,
    ignore_identical_ids: bool = True,
) -> Run:
    """Exact inner-product top-k with FAISS; optionally drop a doc whose id equals the query's."""
    depth = min(top_k + int(ignore_identical_ids), len(doc_ids))
    scores, positions = search_index(build_index(doc_embeddings), query_embeddings, depth)
    run: Run = {}
    for qid, row_scores, row_positions in zip(query_ids, scores, positions):
        hits = {
            doc_ids[i]: float(s)
            for s, i in zip(row_scores, row_positions)
            if i >= 0 and not (ignore_identical_ids and doc_ids[i] == qid)
        }
        run[qid] = dict(list(hits.items())[:top_k])
    return run
