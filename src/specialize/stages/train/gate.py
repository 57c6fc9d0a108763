"""The publish gate: does the trained model retrieve held-out queries better than the base, over the whole corpus?

Base and trained model each retrieve, from every passage of ``corpus.jsonl``, the held-out queries that
neither trained on (``dev.jsonl``); a query's relevant passage is its source passage (the one its query was
written from), or, for a user's query without one, the teacher's top passage. Per query, the trained
model's nDCG@10 minus the base's; the gate publishes the trained model only when the lower bound of a
paired bootstrap confidence interval on the mean difference is above ``train.gate_margin`` (in nDCG@10
points), and says why in one line either way. Below ``train.gate_min_queries`` held-out queries it cannot
tell, and keeps the base. When the corpus source has judged queries of a dev or train split (never test) that
the run did not train on, the gate reads those instead, with their qrels: generated queries copy their source
passage, so on held-out generated queries a model can gain while it loses on human ones (SciFact: +3.04 on 104
held-out generated queries for a model 2.71 below the base on the test claims). Retrieval is the product's own (``encode_corpus``, exact search), at the models'
own maximum lengths, as ``evaluate`` measures: a query-side model shares the base's corpus embeddings, so its
gate encodes queries only; a full fine-tune's corpus embedding is cached for ``evaluate``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from specialize.encoder import Encoder, encode_corpus
from specialize.metrics import Qrels, paired_interval, per_query_ndcg
from specialize.records import Gate
from specialize.retrieval import search
from specialize.stages.train.data import ScoredList


def held_out_qrels(rows: Sequence[ScoredList], sources: Mapping[str, str | None]) -> Qrels:
    """Each held-out query's relevant passage: its source, else (a user's query) the teacher's top passage."""
    return {row.qid: {sources.get(row.qid) or row.doc_ids[0]: 1} for row in rows}


def judged_gate_queries(
    judged: tuple[str, Mapping[str, str], Qrels], trained_on: set[str], corpus_ids: set[str],
) -> tuple[str, dict[str, str], Qrels]:
    """(basis, queries, qrels) of the judged queries with a relevant passage in the corpus whose text the run did not train on."""
    split, queries, qrels = judged
    seen = {text.strip().lower() for text in trained_on}
    kept = {qid: queries[qid] for qid, rels in qrels.items()
            if qid in queries and queries[qid].strip().lower() not in seen and any(s > 0 and d in corpus_ids for d, s in rels.items())}
    return f"judged ({split} split)", kept, {qid: qrels[qid] for qid in kept}


def retrieval_ndcg(encoder: Encoder, queries: Mapping[str, str], qrels: Qrels, corpus: tuple[Sequence[str], Sequence[str]]) -> dict[str, float]:
    """Per query (qid → text), the nDCG@10 of ``encoder``'s full-corpus retrieval (corpus embeddings from the shared cache)."""
    ids, texts = corpus
    documents = encode_corpus(encoder, ids, texts, label=f"gate · {encoder.name} · corpus")
    embedded = encoder.encode(list(queries.values()), batch_size=64, kind="query")
    run = search(embedded, documents, list(queries), ids, top_k=10, ignore_identical_ids=False)
    return per_query_ndcg(qrels, run)


def decide(
    base: Mapping[str, float], trained: Mapping[str, float], min_queries: int, margin: float, confidence: float, seed: int,
    basis: str = "held-out",
) -> Gate:
    """The decision from per-query nDCG@10 (0-1) of the base and the trained model on the same queries (``basis`` names them)."""
    qids = sorted(base)
    n = len(qids)
    before = np.array([base[q] for q in qids]) * 100
    after = np.array([trained[q] for q in qids]) * 100
    deltas = after - before
    mean = float(deltas.mean()) if n else 0.0
    low, high = paired_interval(deltas, confidence, seed) if n >= 2 else (mean, mean)
    evidence = f"{mean:+.2f} nDCG@10 on {n} {basis} queries, {100 * confidence:.0f}% CI {low:+.2f} … {high:+.2f}"
    if n < min_queries:
        decision, reason = "base", f"kept the base: cannot tell with {n} {basis} queries, fewer than train.gate_min_queries ({min_queries})"
    elif low > margin:
        decision, reason = "trained", f"published the trained model: {evidence}"
    else:
        decision, reason = "base", f"kept the base: {evidence}, lower bound not above {margin:+.2f}"
    return Gate(queries=n, basis=basis, base=float(before.mean()) if n else 0.0, trained=float(after.mean()) if n else 0.0, delta=mean,
                ci_low=low, ci_high=high, confidence=confidence, margin=margin, decision=decision, reason=reason)
