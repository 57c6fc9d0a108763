"""Which CPU backend should `evaluate` (and mining) use by default?

Encodes the full SciFact corpus with MiniLM on each available backend, in one process, and
scores the SciFact test queries. The default is the fastest backend whose nDCG@10 is within
0.3 points of torch fp32; `specialize.encoder.CPU_DEFAULT_BACKEND` must name it (a test checks).

    python benchmarks/bench_cpu_backends.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import peak_rss_mb, print_table, save  # noqa: E402

MAX_LOSS = 0.3


# Measured separately by trying to install them beside our pins (pip's resolver refuses):
NOT_INSTALLABLE = {
    "onnx": "optimum-onnx 0.1.0 needs transformers<4.58; sentence-transformers 6.2 needs transformers>=5",
    "openvino": "optimum-intel 2.2 needs transformers<5.6 and torchvision (a CUDA torch build)",
}


def measure(backend: str) -> dict:
    from specialize.config import EvaluateConfig
    from specialize.stages.evaluate import evaluate

    with tempfile.TemporaryDirectory() as work:
        config = EvaluateConfig(models=["bundled:minilm"], datasets=["demo:scifact"], backend=backend)
        result = evaluate(config, Path(work))["scifact"]
    row = result["models"]["bundled:minilm"]
    return {
        "backend": backend,
        "docs_per_s": result["docs"] / row["seconds"],
        "ndcg@10": 100 * row["ndcg@10"],
        "recall@100": 100 * row["recall@100"],
        "seconds": row["seconds"],
    }


def main() -> None:
    os.environ["SPECIALIZE_CACHE"] = tempfile.mkdtemp(prefix="bench-cache-")  # no cache hits between backends
    from specialize.encoder import BACKENDS

    rows = [measure(backend) for backend in BACKENDS]
    reference = rows[0]["ndcg@10"]
    for row in rows:
        row["speedup"] = row["docs_per_s"] / rows[0]["docs_per_s"]
        row["ndcg_loss"] = reference - row["ndcg@10"]
    eligible = [row for row in rows if row["ndcg_loss"] < MAX_LOSS]
    default = max(eligible, key=lambda row: row["docs_per_s"])["backend"]
    print_table("MiniLM on SciFact (5,183 docs, 300 queries), 2-core CPU", rows)
    print(f"default CPU backend: {default} (fastest with nDCG@10 loss < {MAX_LOSS})")
    for name, why in NOT_INSTALLABLE.items():
        print(f"not measured: {name}: {why}")
    save("cpu_backends", {"rows": rows, "default": default, "max_ndcg_loss": MAX_LOSS, "not_measured": NOT_INSTALLABLE, "peak_rss_mb": peak_rss_mb()})


if __name__ == "__main__":
    main()
