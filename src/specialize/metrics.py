"""Scoring runs against qrels (pytrec_eval), per-query nDCG@10, reranked lists, and paired comparisons over queries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from specialize.errors import SpecializeError

Run = dict[str, dict[str, float]]


Qrels = dict[str, dict[str, int]]


METRICS = ("ndcg@10", "recall@100", "mrr@10")


def score_run(qrels: Qrels, run: Run) -> dict[str, float]:
    """Mean nDCG@10, Recall@100 and MRR@10 over the judged queries, on a 0-1 scale."""
    import pytrec_eval

    if not any(qid in run for qid in qrels):
        raise SpecializeError("no judged query has results: query ids of the run and the qrels do not match")
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    top10 = {qid: dict(sorted(hits.items(), key=lambda kv: -kv[1])[:10]) for qid, hits in run.items()}
    reciprocal = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    # pytrec_eval leaves out judged queries without results; they count as 0 here.
    n = len(qrels)
    return {
        "ndcg@10": sum(m["ndcg_cut_10"] for m in per_query.values()) / n,
        "recall@100": sum(m["recall_100"] for m in per_query.values()) / n,
        "mrr@10": sum(m["recip_rank"] for m in reciprocal.values()) / n,
    }


def per_query_ndcg(qrels: Qrels, run: Run) -> dict[str, float]:
    """nDCG@10 of each judged query, on a 0-1 scale (0 for a query without results)."""
    import pytrec_eval

    scores = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
    return {qid: scores.get(qid, {}).get("ndcg_cut_10", 0.0) for qid in qrels}


def ranked_run(lists: Mapping[str, Sequence[str]], scores: Mapping[str, Sequence[float] | np.ndarray]) -> dict[str, dict[str, float]]:
    """A pytrec_eval run of each list ordered by its scores; ties keep the candidate order.

    The run holds ranks, not scores: trec_eval breaks score ties by doc id, and scores that differ
    by less than float32 precision would tie there.
    """
    run = {}
    for qid in lists:
        order = sorted(range(len(lists[qid])), key=lambda i: -scores[qid][i])
        run[qid] = {lists[qid][i]: float(len(order) - rank) for rank, i in enumerate(order)}
    return run


def rerank_metrics(qrels: Qrels, lists: Mapping[str, Sequence[str]], scores: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """nDCG@10 and MRR@10 (0–100) of each list ordered by its scores (``ranked_run``)."""
    result = score_run({qid: qrels[qid] for qid in lists}, ranked_run(lists, scores))
    return {"ndcg@10": round(100 * result["ndcg@10"], 2), "mrr@10": round(100 * result["mrr@10"], 2)}


RESAMPLES = 10_000


def paired_interval(deltas: np.ndarray, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of paired differences (a point when they are all equal)."""
    from scipy.stats import bootstrap

    if np.ptp(deltas) == 0:
        return float(deltas[0]), float(deltas[0])
    result = bootstrap((deltas,), np.mean, confidence_level=confidence, n_resamples=RESAMPLES, method="percentile", rng=seed)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)
