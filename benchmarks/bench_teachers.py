"""Which teacher to label with, by measurement: rerank the same candidates, score against qrels.

SciFact test claims (300, judged) over the full corpus (5,183 abstracts). Candidates per query:
RRF(BM25, MiniLM) top 30, exactly what `specialize mine` gives a synthetic query. Every teacher
reorders the same 30; nDCG@10 / MRR@10 against the qrels say how good its labels would be.
"oracle" is the best order of those 30 (the ceiling any teacher can reach), "student" is the
MiniLM cosine (what the student already knows: a teacher must beat it to teach anything).

Teachers too slow for all 300 queries run on nested subsets (the first N query ids in sorted
order), and every cheaper teacher is scored again on the same subset, so each table compares
like with like. Scores are cached per teacher and query in ``--cache`` so a rerun only scores
what is missing (the Qwen judge takes hours on 2 cores).

    python benchmarks/bench_teachers.py [--mpnet-queries 50] [--judge-queries 10]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, peak_rss_mb, print_table, save  # noqa: E402

CANDIDATES = 30
DEPTH = 100


def candidates(dataset, qids: list[str]) -> dict[str, list[str]]:
    """RRF(BM25, MiniLM) top 30 per query, over the full corpus."""
    from specialize.encoder import load_encoder
    from specialize.retrieval import BM25Retriever, DenseRetriever, reciprocal_rank_fusion

    texts = [dataset.queries[q] for q in qids]
    bm25 = BM25Retriever(dataset.doc_texts).retrieve(texts, DEPTH)
    dense = DenseRetriever(load_encoder("bundled:minilm", "torch"), dataset.doc_ids, dataset.doc_texts).retrieve(texts, DEPTH)
    out = {}
    for row, qid in enumerate(qids):
        rankings = [[int(i) for i in ranking[row] if i >= 0] for ranking in (bm25, dense)]
        out[qid] = [dataset.doc_ids[i] for i, _ in reciprocal_rank_fusion(rankings)[:CANDIDATES]]
    return out


def score_with_cache(name: str, teacher_factory, dataset, lists: dict[str, list[str]], cache: Path) -> tuple[dict, float]:
    """Scores of one teacher for every (query, candidates), from the cache where present; and its pairs/s."""
    path = cache / f"{re.sub(r'[^A-Za-z0-9.-]+', '_', name)}.json"
    stored = json.loads(path.read_text()) if path.is_file() else {"scores": {}, "pairs": 0, "seconds": 0.0}
    todo = [qid for qid in lists if qid not in stored["scores"]]
    if todo:
        teacher = teacher_factory()
        text = dict(zip(dataset.doc_ids, dataset.doc_texts))
        for qid in todo:  # one query at a time: a kill loses one query, and the cache keeps the rest
            started = time.perf_counter()
            stored["scores"][qid] = teacher.score(dataset.queries[qid], [text[d] for d in lists[qid]])
            stored["seconds"] += time.perf_counter() - started
            stored["pairs"] += len(lists[qid])
            path.write_text(json.dumps(stored))
    rate = stored["pairs"] / stored["seconds"] if stored["seconds"] else float("nan")
    return {qid: stored["scores"][qid] for qid in lists}, rate


def fuse(members: list[tuple[dict, float]], normalization: str) -> dict:
    """The ensemble of already-computed member scores, exactly as EnsembleTeacher combines them."""
    from specialize.teachers import NORMALIZERS

    normalize = NORMALIZERS[normalization]
    total = sum(weight for _, weight in members)
    return {qid: list(sum(weight * normalize(scores[qid]) for scores, weight in members) / total) for qid in members[0][0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mpnet-queries", type=int, default=50)
    parser.add_argument("--judge-queries", type=int, default=10)
    parser.add_argument("--judge", default="bundled:qwen-1.5b")
    parser.add_argument("--cache", type=Path, default=RESULTS / ".teacher_scores")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)

    from specialize.config import LabelConfig
    from specialize.datasets import load_dataset
    from specialize.metrics import rerank_metrics
    from specialize.teachers import load_teacher

    dataset = load_dataset("demo:scifact")
    qids = sorted(dataset.qrels)
    lists = candidates(dataset, qids)
    corpus = (dataset.doc_ids, dataset.doc_texts)
    config = LabelConfig(backend="torch")
    factories = {
        "bm25": (lambda: load_teacher("bm25", config, corpus), len(qids)),
        "minilm": (lambda: load_teacher("bi-encoder:bundled:minilm", config, corpus), len(qids)),
        "mpnet": (lambda: load_teacher("bi-encoder:bundled:mpnet", config), args.mpnet_queries),  # no corpus: encodes only candidates
        "qwen-1.5b judge": (lambda: load_teacher(f"llm-judge:{args.judge}", config), args.judge_queries),
    }
    factories = {name: (factory, n) for name, (factory, n) in factories.items() if n > 0}
    tiers = sorted({n for _, n in factories.values()}, reverse=True)
    raw, rates = {}, {}
    for name, (factory, n) in factories.items():
        subset = {qid: lists[qid] for qid in qids[:n]}
        raw[name], rates[name] = score_with_cache(name, factory, dataset, subset, args.cache)
        print(f"{name}: {n} queries, {rates[name]:.2f} pairs/s", flush=True)

    combos = {
        "bm25 + minilm (percentile)": (["bm25", "minilm"], "percentile"),
        "bm25 + minilm (minmax)": (["bm25", "minilm"], "minmax"),
        "bm25 + mpnet (percentile)": (["bm25", "mpnet"], "percentile"),
        "bm25 + minilm + mpnet (percentile)": (["bm25", "minilm", "mpnet"], "percentile"),
        "bm25 + minilm + mpnet (minmax)": (["bm25", "minilm", "mpnet"], "minmax"),
        "judge + bm25 + minilm (percentile)": (["qwen-1.5b judge", "bm25", "minilm"], "percentile"),
        "judge + bm25 + minilm + mpnet (percentile)": (["qwen-1.5b judge", "bm25", "minilm", "mpnet"], "percentile"),
    }
    tables = []
    for n in tiers:
        subset = {qid: lists[qid] for qid in qids[:n]}
        available = {name: {q: raw[name][q] for q in subset} for name in raw if all(q in raw[name] for q in subset)}
        rows = []
        oracle = {qid: [float(dataset.qrels[qid].get(d, 0)) for d in subset[qid]] for qid in subset}
        fused_order = {qid: [-float(i) for i in range(len(subset[qid]))] for qid in subset}
        rows.append({"teacher": "oracle (ceiling)", **rerank_metrics(dataset.qrels, subset, oracle), "pairs_per_s": float("nan")})
        rows.append({"teacher": "RRF order (no teacher)", **rerank_metrics(dataset.qrels, subset, fused_order), "pairs_per_s": float("nan")})
        for name, scores in available.items():
            label = "minilm (student)" if name == "minilm" else name
            rows.append({"teacher": label, **rerank_metrics(dataset.qrels, subset, scores), "pairs_per_s": rates[name]})
        for label, (members, normalization) in combos.items():
            if all(m in available for m in members):
                fused = fuse([(available[m], 1.0) for m in members], normalization)
                rate = 1 / sum(1 / rates[m] for m in members)
                rows.append({"teacher": label, **rerank_metrics(dataset.qrels, subset, fused), "pairs_per_s": rate})
        print_table(f"SciFact test, {n} queries, RRF(BM25, MiniLM) top {CANDIDATES} reranked", rows)
        tables.append({"queries": n, "rows": rows})
    save("teachers", {"candidates": f"RRF(BM25, MiniLM) top {CANDIDATES}", "tables": tables, "peak_rss_mb": peak_rss_mb()})


if __name__ == "__main__":
    main()
