"""Time the prepare stage (load + dedup + sample + write) on 100k and 200k synthetic passages.

Passages are ~100 random words from a Zipf-like vocabulary (seeded); about 5% are planted
duplicates: case/punctuation/digit variants, prefixes and suffixes of earlier passages.
Near-linear scaling means time(200k) / time(100k) close to 2 (under 2.5).

    python benchmarks/bench_prepare.py     # writes benchmarks/results/prepare.json
"""

from __future__ import annotations

import itertools
import random
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import peak_rss_mb, print_table, save

from specialize.artifacts import write_jsonl
from specialize.stages.prepare import prepare

SIZES = (100_000, 200_000)
PLANTED = 0.05
SEED = 0


def synthetic_corpus(n: int, seed: int) -> tuple[list[dict[str, str]], int]:
    """``n`` passages of random words, about 5% of them planted duplicates; returns (docs, planted)."""
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 10))) for _ in range(20_000)]
    cum_weights = list(itertools.accumulate(1 / rank for rank in range(1, len(vocabulary) + 1)))
    docs: list[dict[str, str]] = []
    planted = 0
    for i in range(n):
        if docs and rng.random() < PLANTED:
            words = rng.choice(docs)["text"].split()
            kind = rng.choice(("variant", "prefix", "suffix"))
            if kind == "variant":
                words = [w.upper() if rng.random() < 0.2 else w for w in words] + [f"{rng.randint(0, 99)}!"]
            elif kind == "prefix":
                words = words[: len(words) * rng.randint(5, 9) // 10]
            else:
                words = words[-len(words) * rng.randint(5, 9) // 10 :]
            planted += 1
        else:
            words = rng.choices(vocabulary, cum_weights=cum_weights, k=rng.randint(80, 120))
        docs.append({"_id": f"d{i}", "title": " ".join(rng.choices(vocabulary, k=4)), "text": " ".join(words)})
    return docs, planted


def run(n: int, tmp: Path) -> dict[str, Any]:
    """Write ``n`` synthetic passages as JSONL and time prepare() on them."""
    docs, planted = synthetic_corpus(n, SEED)
    source = tmp / f"corpus-{n}.jsonl"
    write_jsonl(source, docs)
    del docs
    started = time.perf_counter()
    counts = prepare(source, tmp / f"work-{n}")
    seconds = time.perf_counter() - started
    return {
        "n": n,
        "source_mb": round(source.stat().st_size / 2**20, 1),
        "seconds": round(seconds, 2),
        "passages_per_s": round(n / seconds),
        "planted_duplicates": planted,
        "dropped": sum(v for k, v in counts.items() if k.startswith("dropped_")),
        "corpus": counts["corpus"],
        "sampled": counts["passages"],
        "counts": counts,
    }


def main() -> None:
    """Run both sizes, print a table and write the result file."""
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run(n, Path(tmp)) for n in SIZES]
    ratio = runs[1]["seconds"] / runs[0]["seconds"]
    print_table(
        "prepare() on synthetic passages (load + dedup + sample + write)",
        [{k: v for k, v in r.items() if k != "counts"} for r in runs],
    )
    path = save(
        "prepare",
        {
            "description": "synthetic ~100-word passages, ~5% planted exact/near duplicates, default prepare()",
            "runs": runs,
            "time_ratio_200k_over_100k": round(ratio, 2),
            "near_linear": ratio < 2.5,
            "peak_rss_mb": round(peak_rss_mb()),
        },
    )
    print(f"time(200k) / time(100k) = {ratio:.2f} (near-linear: {ratio < 2.5}); wrote {path}")


if __name__ == "__main__":
    main()
