"""Labeling throughput and memory: our label stage vs a bare ``CrossEncoder.predict`` on the same pairs.

No cross-encoder weights can be had offline, so the teacher is a CrossEncoder made of the bundled
MiniLM encoder with a fresh one-logit head, saved locally: the cost of ms-marco-MiniLM-L6, the
usual small reranker. Queries: SciFact train claims; candidates: BM25 top 30 over the full corpus.

- throughput: the whole label stage (read candidates, score, write labels.jsonl, filter, split) vs
  one bare ``predict`` call over the same (query, passage) pairs; alternating, best of ``--repeats``;
- memory: the label stage with that teacher in a fresh process on the corpus ×1, ×2, ×4 (the same
  documents copied under new ids; the same queries and candidates): peak RSS should stay flat, since
  a pointwise teacher only reads the candidates' texts.

    python benchmarks/bench_label.py [--queries 24] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import peak_rss_mb, print_table, save  # noqa: E402

TOP = 30


def build_workdir(folder: Path, queries: int, copies: int = 1) -> list[tuple[str, str]]:
    """corpus/queries/candidates for the label stage; returns the (query, passage) pairs it will score."""
    from specialize.datasets import load_dataset, load_qrels, load_queries, resolve_dataset
    from specialize.retrieval import BM25Retriever

    dataset = load_dataset("demo:scifact")
    source = resolve_dataset("demo:scifact")
    train = load_qrels(source, "train")
    texts = load_queries(source)
    qids = sorted(train)[:queries]
    hits = BM25Retriever(dataset.doc_texts).retrieve([texts[q] for q in qids], TOP)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w") as out:
        for copy in range(copies):
            for doc_id, text in zip(dataset.doc_ids, dataset.doc_texts):
                out.write(json.dumps({"_id": doc_id if copy == 0 else f"{doc_id}~{copy}", "title": "", "text": text}) + "\n")
    pairs = []
    with open(folder / "queries.jsonl", "w") as q_out, open(folder / "candidates.jsonl", "w") as c_out:
        for row, qid in enumerate(qids):
            doc_ids = [dataset.doc_ids[i] for i in hits[row] if i >= 0]
            q_out.write(json.dumps({"qid": qid, "text": texts[qid], "type": "claim", "source_id": doc_ids[0], "generator": "scifact"}) + "\n")
            c_out.write(json.dumps({"qid": qid, "doc_ids": doc_ids}) + "\n")
            text = dict(zip(dataset.doc_ids, dataset.doc_texts))
            pairs.extend((texts[qid], text[d]) for d in doc_ids)
    return pairs


def teacher_model(folder: Path) -> Path:
    from sentence_transformers import CrossEncoder

    from specialize.models import resolve_model

    path = folder / "cross-encoder"
    if not path.is_dir():
        CrossEncoder(resolve_model("bundled:minilm"), num_labels=1).save(str(path))
    return path


def run_label(workdir: Path, model: Path) -> float:
    """The label stage from scratch with the cross-encoder teacher; seconds."""
    from specialize.config import LabelConfig
    from specialize.stages.label.stage import label

    for name in ("labels.jsonl", "train.jsonl", "dev.jsonl", ".labels.key"):
        (workdir / name).unlink(missing_ok=True)
    started = time.perf_counter()
    label(workdir, LabelConfig(teacher=f"cross-encoder:{model}", min_list_size=TOP, require_source_first=False))
    return time.perf_counter() - started


def child(workdir: Path, model: Path) -> None:
    """Run the stage once in this fresh process and print its peak RSS."""
    seconds = run_label(workdir, model)
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)

    from sentence_transformers import CrossEncoder

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = teacher_model(root)
        pairs = build_workdir(root / "x1", args.queries)
        bare_model = CrossEncoder(str(model))
        ours, bare = float("inf"), float("inf")
        for _ in range(args.repeats):
            ours = min(ours, run_label(root / "x1", model))
            started = time.perf_counter()
            bare_model.predict(pairs, batch_size=32, show_progress_bar=False)
            bare = min(bare, time.perf_counter() - started)
        speed = [{"path": "label stage (cross-encoder)", "pairs": len(pairs), "ours_s": ours, "bare_predict_s": bare,
                  "ours_pairs_per_s": len(pairs) / ours, "bare_pairs_per_s": len(pairs) / bare, "ratio": bare / ours}]
        print_table("labeling throughput: ours vs bare CrossEncoder.predict", speed)

        memory = []
        for copies in (1, 2, 4):
            folder = root / f"m{copies}"
            build_workdir(folder, args.queries, copies)
            out = subprocess.run([sys.executable, __file__, "--child", str(folder), str(model)], capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            memory.append({"corpus_docs": 5183 * copies, "peak_rss_mb": result["peak_rss_mb"], "seconds": result["seconds"]})
        print_table("label stage peak RSS as the corpus grows (same queries and candidates)", memory)
    save("label", {"throughput": speed, "memory": memory, "teacher": "CrossEncoder(MiniLM-L6 + fresh head)"})


if __name__ == "__main__":
    main()
