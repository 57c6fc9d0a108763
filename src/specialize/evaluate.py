"""Retrieval evaluation on BEIR-format test sets: encode, exact inner-product search, metrics.

Metrics come from pytrec_eval (the trec_eval implementation BEIR and MTEB use): nDCG@10,
Recall@100 and MRR@10, averaged over the split's judged queries.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from specialize.artifacts import atomic_path, write_json
from specialize.config import EvaluateConfig, PrefixConfig
from specialize.corpus import load_corpus, load_qrels, load_queries, resolve_dataset
from specialize.encoder import Encoder, encode_corpus, load_encoder
from specialize.errors import SpecializeError
from specialize.progress import stderr

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]
METRICS = ("ndcg@10", "recall@100", "mrr@10")
IndexKind = Literal["flat", "hnsw", "ivf"]
HNSW_NEIGHBORS = 32
HNSW_EF_SEARCH = 128
IVF_MIN_POINTS_PER_LIST = 39  # FAISS k-means wants at least this many training points per list
IVF_PROBE_SHARE = 0.25  # of the lists searched per query: 93% top-100 overlap with flat on SciFact
IVF_MIN_PROBES = 16


@dataclass
class Dataset:
    """A test set held in memory: corpus, the split's judged queries and their qrels."""

    name: str
    doc_ids: list[str]
    doc_texts: list[str]
    queries: dict[str, str]
    qrels: Qrels


def load_dataset(spec: str, split: str = "test") -> Dataset:
    """Load a BEIR folder, ``demo:<name>`` or ``beir:<name>``, keeping the queries judged in ``split``."""
    folder = resolve_dataset(spec)
    qrels = load_qrels(folder, split)
    all_queries = load_queries(folder)
    missing = [qid for qid in qrels if qid not in all_queries]
    if missing:
        raise SpecializeError(f"{folder}: qrels/{split}.tsv names {len(missing)} queries not in queries.jsonl, e.g. {missing[0]!r}")
    doc_ids, doc_texts = [], []
    for doc in load_corpus(folder):
        doc_ids.append(doc["_id"])
        doc_texts.append(f"{doc['title']} {doc['text']}".strip())
    known = set(doc_ids)
    absent = {doc for judged in qrels.values() for doc, score in judged.items() if score > 0 and doc not in known}
    if absent:
        stderr.print(f"{folder}: qrels/{split}.tsv judges {len(absent):,} relevant documents that are not in the corpus "
                     f"(e.g. {sorted(absent)[0]!r}): no model can retrieve them, so Recall@100 stays below 100", highlight=False, soft_wrap=True)
    name = spec.split(":", 1)[1] if spec.startswith(("demo:", "beir:")) else Path(spec).name
    return Dataset(name, doc_ids, doc_texts, {qid: all_queries[qid] for qid in qrels}, qrels)


def build_index(doc_embeddings: np.ndarray, kind: IndexKind = "flat"):
    """An inner-product FAISS index over the embeddings: exact (flat), HNSW graph, or IVF trained on them."""
    import faiss

    data = np.ascontiguousarray(doc_embeddings, dtype=np.float32)
    count, dim = data.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBORS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = HNSW_EF_SEARCH  # FAISS searches with max(efSearch, k)
    elif kind == "ivf":
        lists = max(1, min(round(4 * math.sqrt(count)), count // IVF_MIN_POINTS_PER_LIST))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.train(data)
        index.nprobe = min(lists, max(IVF_MIN_PROBES, round(lists * IVF_PROBE_SHARE)))
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


def write_trec_run(path: Path, run: Run, tag: str) -> None:
    """Write a run in TREC format: ``qid Q0 docid rank score tag``."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for qid, hits in run.items():
            for rank, (doc_id, score) in enumerate(sorted(hits.items(), key=lambda kv: -kv[1]), start=1):
                handle.write(f"{qid} Q0 {doc_id} {rank} {score:.6f} {tag}\n")


def evaluate_model(encoder: Encoder, dataset: Dataset, config: EvaluateConfig) -> tuple[dict[str, float], Run]:
    """Encode the corpus (cached) and the queries, search, and score one model on one dataset."""
    started = time.perf_counter()
    doc_embeddings = encode_corpus(
        encoder, dataset.doc_ids, dataset.doc_texts, config.batch_size, label=f"{encoder.name} · {dataset.name}"
    )
    query_ids = list(dataset.queries)
    query_embeddings = encoder.encode([dataset.queries[q] for q in query_ids], config.batch_size, kind="query")
    run = search(query_embeddings, doc_embeddings, query_ids, dataset.doc_ids, config.top_k, config.ignore_identical_ids)
    metrics = score_run(dataset.qrels, run)
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    return metrics, run


def evaluate(config: EvaluateConfig, workdir: Path, prefixes: Mapping[str, PrefixConfig] | None = None) -> dict[str, dict]:
    """Evaluate every model on every dataset; write ``eval/<dataset>.json`` and TREC runs; return the results.

    Results accumulate: evaluating another model later adds a row to the same JSON file.
    """
    overrides = {key: value.model_dump() for key, value in (prefixes or {}).items()}
    results: dict[str, dict] = {}
    datasets = [load_dataset(spec, config.split) for spec in config.datasets]
    for model_name in config.models:
        encoder = load_encoder(model_name, config.backend, config.max_seq_length, overrides)
        for dataset in datasets:
            metrics, run = evaluate_model(encoder, dataset, config)
            run_path = workdir / "eval" / "runs" / dataset.name / f"{slug(model_name)}.trec"
            write_trec_run(run_path, run, slug(model_name))
            entry = {
                **metrics,
                "backend": encoder.backend,
                "max_seq_length": encoder.max_seq_length,
                "run_file": str(run_path.relative_to(workdir)),
            }
            results.setdefault(dataset.name, _load_previous(workdir, dataset, config.split))
            results[dataset.name]["models"][model_name] = entry
            write_json(workdir / "eval" / f"{dataset.name}.json", results[dataset.name])
    return results


def _load_previous(workdir: Path, dataset: Dataset, split: str) -> dict:
    """The dataset's results file so far (rows for other models), or a fresh one."""
    path = workdir / "eval" / f"{dataset.name}.json"
    fresh = {"dataset": dataset.name, "split": split, "queries": len(dataset.queries), "docs": len(dataset.doc_ids), "models": {}}
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous.get("split") == split and previous.get("docs") == len(dataset.doc_ids):
            fresh["models"] = previous.get("models", {})
    return fresh


def slug(name: str) -> str:
    """A file-name-safe form of a model name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"
