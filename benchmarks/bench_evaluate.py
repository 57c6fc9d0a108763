"""`evaluate` throughput vs a bare SentenceTransformer.encode, and the SciFact figures.

Part 1 (speed): our encode_corpus + FAISS search over the first N SciFact abstracts vs a bare
``SentenceTransformer.encode`` of the same texts, in the same process; ratio must be >= 0.9.
Part 2 (correctness): full SciFact test against the published MTEB figures, for MiniLM by
default; ``--models bundled:mpnet --skip-speed`` adds MPNet (about an hour on 2 cores). Rows
are merged into evaluate_scifact.json by model, so models can be measured in separate runs.

    python benchmarks/bench_evaluate.py [--docs 1500] [--models bundled:minilm bundled:mpnet] [--skip-speed]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, peak_rss_mb, print_table, save  # noqa: E402

MTEB = {"bundled:minilm": 64.51, "bundled:mpnet": 65.57}


def speed(docs: int) -> dict:
    from specialize.config import EvaluateConfig
    from specialize.datasets import load_dataset
    from specialize.encoder import encode_corpus, load_encoder
    from specialize.retrieval import search

    dataset = load_dataset("demo:scifact")
    ids, texts = dataset.doc_ids[:docs], dataset.doc_texts[:docs]
    encoder = load_encoder("bundled:minilm", backend="torch")
    queries = list(dataset.queries.values())
    batch = EvaluateConfig().batch_size
    encoder.model.encode(texts[:64], batch_size=batch)  # warm-up

    started = time.perf_counter()
    encoder.model.encode(texts, batch_size=batch, normalize_embeddings=True, show_progress_bar=False)
    bare = time.perf_counter() - started

    started = time.perf_counter()
    embeddings = encode_corpus(encoder, ids, texts, batch, label="ours")
    query_embeddings = encoder.encode(queries, batch, kind="query")
    search(query_embeddings, embeddings, list(dataset.queries), ids, top_k=100)
    ours = time.perf_counter() - started
    return {"docs": docs, "bare_docs_per_s": docs / bare, "ours_docs_per_s": docs / ours, "ratio": bare / ours}


def scifact(model: str) -> dict:
    from specialize.config import EvaluateConfig
    from specialize.stages.evaluate import evaluate

    with tempfile.TemporaryDirectory() as work:
        config = EvaluateConfig(models=[model], datasets=["demo:scifact"], backend="torch")
        row = evaluate(config, Path(work))["scifact"]["models"][model]
    ndcg = 100 * row["ndcg@10"]
    return {
        "model": model,
        "ndcg@10": round(ndcg, 2),
        "recall@100": round(100 * row["recall@100"], 2),
        "mrr@10": round(100 * row["mrr@10"], 2),
        "mteb_ndcg@10": MTEB[model],
        "diff": round(ndcg - MTEB[model], 2),
        "seconds": row["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1500)
    parser.add_argument("--models", nargs="+", default=["bundled:minilm"], choices=sorted(MTEB))
    parser.add_argument("--skip-speed", action="store_true", help="only the SciFact figures")
    args = parser.parse_args()
    os.environ["SPECIALIZE_CACHE"] = tempfile.mkdtemp(prefix="bench-cache-")  # measure real encoding, no cache hits

    if not args.skip_speed:
        throughput = speed(args.docs)
        print_table("evaluate throughput vs bare SentenceTransformer.encode (MiniLM, torch)", [throughput])
        save("evaluate_speed", {**throughput, "peak_rss_mb": peak_rss_mb(), "target_ratio": 0.9})

    previous = RESULTS / "evaluate_scifact.json"
    rows = {row["model"]: row for row in (json.loads(previous.read_text())["rows"] if previous.is_file() else [])}
    rows.update({model: scifact(model) for model in args.models})
    print_table("SciFact test, full corpus (5,183 docs, 300 queries)", list(rows.values()))
    save("evaluate_scifact", {"rows": list(rows.values()), "bar": "MiniLM nDCG@10 = 64.5 +- 0.3"})


if __name__ == "__main__":
    main()
