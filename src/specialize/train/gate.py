"""The publish gate: does the trained model retrieve held-out queries better than the base, over the whole corpus?

Base and trained model each retrieve, from every passage of ``corpus.jsonl``, the held-out queries that
neither trained on (``dev.jsonl``); a query's relevant passage is its source passage (the one its query was
written from), or, for a user's query without one, the teacher's top passage. Per query, the trained
model's nDCG@10 minus the base's; the gate publishes the trained model only when the lower bound of a
paired bootstrap confidence interval on the mean difference is above ``train.gate_margin`` (in nDCG@10
points), and says why in one line either way. Below ``train.gate_min_queries`` held-out queries it cannot
tell, and keeps the base. Retrieval is the product's own (``encode_corpus``, exact search), at the models'
own maximum lengths, as ``evaluate`` measures: a query-side model shares the base's corpus embeddings, so its
gate encodes queries only; a full fine-tune's corpus embedding is cached for ``evaluate``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from specialize.encoder import Encoder, encode_corpus
from specialize.evaluate import Qrels, per_query_ndcg, search
from specialize.stats import paired_interval
from specialize.train.data import ScoredList

@dataclass(frozen=True)
class GateResult:
    """The gate's evidence and decision (nDCG@10 in points, 0-100)."""

    queries: int
    base: float
    trained: float
    delta: float
    ci_low: float
    ci_high: float
    confidence: float
    margin: float
    decision: str
    """``trained`` (publish it) or ``base`` (keep the base)."""
    reason: str
    """One line: the decision and its numbers."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def held_out_qrels(rows: Sequence[ScoredList], sources: Mapping[str, str | None]) -> Qrels:
    """Each held-out query's relevant passage: its source, else (a user's query) the teacher's top passage."""
    return {row.qid: {sources.get(row.qid) or row.doc_ids[0]: 1} for row in rows}


def retrieval_ndcg(encoder: Encoder, rows: Sequence[ScoredList], qrels: Qrels, corpus: tuple[Sequence[str], Sequence[str]]) -> dict[str, float]:
    """Per held-out query, the nDCG@10 of ``encoder``'s full-corpus retrieval (corpus embeddings from the shared cache)."""
    ids, texts = corpus
    documents = encode_corpus(encoder, ids, texts, label=f"gate · {encoder.name} · corpus")
    queries = encoder.encode([row.query for row in rows], batch_size=64, kind="query")
    run = search(queries, documents, [row.qid for row in rows], ids, top_k=10, ignore_identical_ids=False)
    return per_query_ndcg(qrels, run)


def decide(
    base: Mapping[str, float], trained: Mapping[str, float], min_queries: int, margin: float, confidence: float, seed: int
) -> GateResult:
    """The decision from per-query nDCG@10 (0-1) of the base and the trained model on the same held-out queries."""
    qids = sorted(base)
    n = len(qids)
    before = np.array([base[q] for q in qids]) * 100
    after = np.array([trained[q] for q in qids]) * 100
    deltas = after - before
    mean = float(deltas.mean()) if n else 0.0
    low, high = paired_interval(deltas, confidence, seed) if n >= 2 else (mean, mean)
    evidence = f"{mean:+.2f} nDCG@10 on {n} held-out queries, {100 * confidence:.0f}% CI {low:+.2f} … {high:+.2f}"
    if n < min_queries:
        decision, reason = "base", f"kept the base: cannot tell with {n} held-out queries, fewer than train.gate_min_queries ({min_queries})"
    elif low > margin:
        decision, reason = "trained", f"published the trained model: {evidence}"
    else:
        decision, reason = "base", f"kept the base: {evidence}, lower bound not above {margin:+.2f}"
    return GateResult(n, float(before.mean()) if n else 0.0, float(after.mean()) if n else 0.0, mean, low, high,
                      confidence, margin, decision, reason)
