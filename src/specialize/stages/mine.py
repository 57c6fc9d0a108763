"""Candidate mining: BM25 and dense retrievers, reciprocal rank fusion, and the round-trip filter.

Each retriever ranks every query (in blocks, keeping only int32 corpus positions, no scores);
their lists are fused by reciprocal rank fusion and a query is kept only if its source passage
comes back high enough (the round trip). A query without a source passage (``source_id`` null: the
user's own) is kept without the round trip, its fused list as it is. Candidates are streamed to
``candidates.jsonl``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from specialize.artifacts import write_jsonl
from specialize.config import Config, MineConfig, PrefixConfig
from specialize.counts import TypeCounts
from specialize.records import read_corpus, read_queries
from specialize.retrieval import DocKey, load_retrievers, reciprocal_rank_fusion, retrieve_all
from specialize.workdir import Workdir

ROUNDTRIP_DROPS = ("roundtrip", "source_missing")


def roundtrip_hits(rankings: Sequence[Sequence[DocKey]], source: DocKey, depth: int) -> list[bool]:
    """For each retriever, whether the source is in its top ``depth``."""
    return [source in ranking[:depth] for ranking in rankings]


def passes_roundtrip(hits: Sequence[bool], mode: Literal["any", "all"]) -> bool:
    """Keep the query when any (or all) retrievers found its source."""
    return any(hits) if mode == "any" else all(hits)


def candidate_list(fused: Sequence[DocKey], source: DocKey | None, top_k: int) -> tuple[list[DocKey], int | None]:
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


def mine(workdir: Path, config: MineConfig, prefixes: Mapping[str, PrefixConfig] | None = None) -> dict[str, Any]:
    """Write ``candidates.jsonl`` for the work directory's queries; return the counts for the manifest."""
    ids, texts = read_corpus(Workdir(workdir).corpus)
    queries = read_queries(Workdir(workdir).queries)
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

    write_jsonl(Workdir(workdir).candidates, records())
    round_trips = sum(query["source_id"] is not None for query in present)
    return _summary(queries, len(ids), counts, no_source, hits, round_trips, [retriever.name for retriever in retrievers])


def _summary(
    queries: Sequence[Mapping[str, Any]], docs: int, counts: TypeCounts, no_source: int, hits: Counter[str], round_trips: int,
    names: Sequence[str],
) -> dict[str, Any]:
    """Manifest counts: totals, kept and dropped per reason and per query type, kept without a source (no round trip),
    and the round-trip hit rate per retriever over the ``round_trips`` queries searched with a source (none when there are none)."""
    outcomes = ["kept", *(f"dropped_{reason}" for reason in ROUNDTRIP_DROPS)]
    summary: dict[str, Any] = {"queries": len(queries), "docs": docs, "kept_no_source": no_source}
    summary.update(counts.summary(outcomes, sorted({query["type"] for query in queries})))
    summary.update({f"roundtrip_rate_{name}": round(hits[name] / round_trips, 4) for name in names if round_trips})
    return summary


def run(work: Workdir, config: Config) -> dict[str, Any]:
    """The stage as the pipeline runs it."""
    return mine(work.root, config.mine, config.prefixes)
