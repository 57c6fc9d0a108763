"""Gradient caching: memory and speed of one optimizer step as the batch grows, with and without the cache.

MiniLM, the listwise loss, B queries x 20 passages (real SciFact text, cut at ``--seq-len`` tokens),
B from 16 to 256, on the CPU. Each batch size runs in a fresh process: a warm-up step and a timed
step with the cache (``CachedLoss``, ``--mini-batch`` texts per forward pass), then a warm-up step
without it and ``--repeats`` rounds of one timed step each way, alternating, so that the load of
a shared machine weighs on both alike; each way's time is its fastest step.

Memory is the process's peak resident set (``ru_maxrss``) minus its size once the model is loaded:
on a CPU, torch keeps no allocator statistics (``torch.cuda.max_memory_allocated`` is CUDA-only),
and the peak resident set is what decides whether a run fits in RAM. A fresh process per batch
size keeps one size's high-water mark from hiding the next one's, and the cached steps run first,
so their peak is read before the larger uncached one. The uncached steps are skipped when the
memory they would need, extrapolated linearly from the smaller batches, exceeds ``--memory-share``
of the memory available: the row says so.

    python benchmarks/bench_gradcache.py [--batches 16 32 64 128 256] [--seq-len 32] [--mini-batch 32]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, save  # noqa: E402

PASSAGES = 20
TARGET_RATIO = 0.7


def peak_rss_mb() -> float:
    """This process's peak resident set so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(batch: int, args: argparse.Namespace, uncached: bool) -> dict:
    """Seconds of the fastest timed step and peak MiB, with the cache and (if asked) without it."""
    import torch
    from sentence_transformers import SentenceTransformer

    from specialize.datasets import load_corpus, resolve_dataset
    from specialize.losses import CachedLoss, ListwiseDistillationLoss
    from specialize.models import resolve_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    docs = [f"{doc['title']} {doc['text']}" for doc in load_corpus(resolve_dataset("demo:scifact"))]
    model = SentenceTransformer(resolve_model("bundled:minilm"), device="cpu")
    model.max_seq_length = args.seq_len
    features = [model.preprocess([docs[(7 * i) % len(docs)][:120] for i in range(batch)])]
    features += [model.preprocess([docs[(PASSAGES * i + p) % len(docs)] for i in range(batch)]) for p in range(PASSAGES)]
    labels = torch.rand(batch, PASSAGES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    loaded = peak_rss_mb()
    listwise = ListwiseDistillationLoss(model)
    losses = {"cached": CachedLoss(listwise, args.mini_batch), "uncached": listwise}
    best = {"cached": math.inf, "uncached": math.inf}

    def step(way: str, timed: bool = True) -> None:
        started = time.perf_counter()
        losses[way](features, labels).backward()
        optimizer.step()
        optimizer.zero_grad()
        if timed:
            best[way] = min(best[way], time.perf_counter() - started)

    step("cached", timed=False)
    step("cached")
    result = {"cached_mb": peak_rss_mb() - loaded}
    if uncached:
        step("uncached", timed=False)
        for _ in range(args.repeats):
            step("uncached")
            step("cached")
        result["uncached_mb"] = peak_rss_mb() - loaded
    return {**result, **{f"{way}_s": seconds for way, seconds in best.items() if seconds < math.inf}}


def run_worker(batch: int, args: argparse.Namespace, uncached: bool) -> dict:
    command = [sys.executable, __file__, "--worker", str(batch), "--seq-len", str(args.seq_len),
               "--mini-batch", str(args.mini_batch), "--threads", str(args.threads), "--repeats", str(args.repeats),
               *(["--uncached"] if uncached else [])]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"batch {batch} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def available_mb() -> float:
    import psutil

    return psutil.virtual_memory().available / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64, 128, 256], help="queries per step")
    parser.add_argument("--seq-len", type=int, default=32, help="tokens per text (short, to keep it affordable)")
    parser.add_argument("--mini-batch", type=int, default=32, help="texts per forward pass with the cache")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared machine, more threads spin-wait on each other's cores)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating timed rounds where both ways run")
    parser.add_argument("--memory-share", type=float, default=0.6, help="of the available memory an uncached step may need")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--uncached", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args, args.uncached)))
        return

    rows, per_query_mb = [], 0.0
    for batch in sorted(args.batches):
        projected = per_query_mb * batch
        budget = args.memory_share * available_mb()
        fits = projected <= budget
        measured = run_worker(batch, args, uncached=fits)
        row = {
            "batch": batch, "texts": batch * (PASSAGES + 1),
            "cached_mb": measured["cached_mb"], "cached_q_per_s": batch / measured["cached_s"],
        }
        if fits:
            per_query_mb = max(per_query_mb, measured["uncached_mb"] / batch)
            row.update({"uncached_mb": measured["uncached_mb"], "uncached_q_per_s": batch / measured["uncached_s"],
                        "ratio": measured["uncached_s"] / measured["cached_s"], "note": ""})
        else:
            row.update({"uncached_mb": None, "uncached_q_per_s": None, "ratio": None,
                        "note": f"uncached not run: needs ~{projected / 1024:.0f} GB, over {budget / 1024:.0f} GB"})
        rows.append(row)
        print(json.dumps(row), flush=True)
    title = (f"gradient caching: MiniLM, listwise, {PASSAGES} passages/query, {args.seq_len} tokens, "
             f"{args.mini_batch} texts per cached forward (CPU, {args.threads} thread(s))")
    print_table(title, [{key: "-" if value is None else value for key, value in row.items()} for row in rows])
    path = save("gradcache", {
        "model": "bundled:minilm", "loss": "listwise", "passages": PASSAGES, "seq_len": args.seq_len,
        "mini_batch": args.mini_batch, "threads": args.threads, "target_ratio": TARGET_RATIO,
        "memory": "peak resident set (ru_maxrss) minus the size after loading the model, one fresh process per batch size",
        "repeats": args.repeats,
        "note": "samples = queries; each time is the fastest step after a warm-up step, on a 2-core machine busy with other jobs",
        "rows": rows,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
