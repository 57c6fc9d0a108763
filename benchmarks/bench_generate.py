"""`generate` throughput: our llama.cpp backend through the stage vs a bare create_chat_completion loop.

For each bundled LLM, ``--prompts`` SciFact abstracts (prepare's seeded sample) are cut into
chunks of ``--chunk``; chunk by chunk, the generate stage (``LlamaCppBackend.generate``: chat
template, per-prompt seeds, cleaning, flushed JSONL) writes their queries, then a bare loop of
``llama_cpp.Llama.create_chat_completion`` over the very same chat messages and seeds does,
alternating so that a change in the machine's load hits both sides alike. The bare loop runs on
the same ``Llama`` instance (same load parameters, no second copy of the weights), reset before
each of its chunks; within a chunk it keeps llama-cpp-python's prefix reuse between prompts,
which our backend gives up so that a seed always gives the same text. Tokens are counted by tokenizing each reply with the model's own
tokenizer, the same way on both sides; the stage runs with ``retries: 0`` here, doing what the bare
loop does. Then the cost of a retry: on ``--retry-prompts`` of the same prompts, one attempt each
vs three (every reply rejected), a retry being what the third costs over the first, per prompt.
Peak RSS is per model (each runs in its own process).
Rows of models not measured in a run are kept from the last results, so models can be measured
one at a time.

    python benchmarks/bench_generate.py [--models bundled:qwen-0.5b,bundled:qwen-1.5b] [--prompts 24] [--retry-prompts 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, peak_rss_mb, print_table, save  # noqa: E402


def sample_passages(count: int) -> list[dict]:
    """``count`` SciFact abstracts: the start of prepare's seeded sample."""
    from specialize.artifacts import read_jsonl
    from specialize.corpus import prepare

    with tempfile.TemporaryDirectory() as folder:
        prepare("demo:scifact", Path(folder), max_passages=count)
        return list(read_jsonl(Path(folder) / "passages.jsonl"))


def bare_messages(passages: list[dict], config, llm) -> tuple[list[list[dict]], list[int]]:
    """The chat messages and seeds the stage sends for these passages."""
    from specialize.generate.prompts import assign_types
    from specialize.generate.stage import Mixture, passage_messages, passage_seed, token_counter

    mixture = Mixture(config)
    kinds = assign_types([p["_id"] for p in passages], mixture.names, mixture.probabilities, config.seed)
    count = token_counter(llm)
    messages = [passage_messages(p, kind, mixture, config, count) for p, kind in zip(passages, kinds)]
    return messages, [passage_seed(config.seed, p["_id"]) for p in passages]


def retry_cost(llm, messages: list[list[dict]], seeds: list[int], config) -> dict:
    """Seconds per prompt of a first attempt and of a retry (the mean of two, every reply rejected)."""
    from specialize.llm import sample_until

    options = {"temperature": config.temperature, "max_new_tokens": config.max_new_tokens, "seeds": seeds}
    began = time.perf_counter()
    sample_until(llm, messages, accept=lambda index, reply: True, attempts=1, **options)
    first = (time.perf_counter() - began) / len(messages)
    began = time.perf_counter()
    sample_until(llm, messages, accept=lambda index, reply: False, attempts=3, **options)
    retry = ((time.perf_counter() - began) / len(messages) - first) / 2
    return {"first_attempt_s": round(first, 2), "retry_s": round(retry, 2), "retry_over_first": round(retry / first, 3)}


def measure(model: str, passages: list[dict], chunk: int, threads: int, retry_prompts: int) -> dict:
    """Seconds and tokens of ours and bare over the same prompts, chunk by chunk, alternating; then a retry's cost."""
    from specialize.artifacts import read_jsonl
    from specialize.config import GenerateConfig, LLMConfig
    from specialize.generate.stage import generate
    from specialize.llm import load_llm

    config = GenerateConfig(model=model, llm=LLMConfig(threads=threads), block=chunk, retries=0)
    llm = load_llm(model, config.llm, config.seed)
    llm.llm._ctx.set_n_threads(threads, threads)  # llm.threads sets decode threads only, not the prompt's
    tokens = lambda text: len(llm.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))  # noqa: E731
    totals = {"ours_s": 0.0, "bare_s": 0.0, "ours_tokens": 0, "bare_tokens": 0, "prompt_tokens": 0}
    with tempfile.TemporaryDirectory() as folder:
        for start in range(0, len(passages), chunk):
            part = passages[start : start + chunk]
            work = Path(folder) / f"chunk{start}"
            work.mkdir()
            (work / "passages.jsonl").write_text("".join(json.dumps(p) + "\n" for p in part))
            began = time.perf_counter()
            generate(work, config, llm=llm)
            totals["ours_s"] += time.perf_counter() - began
            totals["ours_tokens"] += sum(tokens(r["raw"]) for r in read_jsonl(work / "generations.jsonl"))
            messages, seeds = bare_messages(part, config, llm)
            llm.llm.reset()  # the bare loop must not find our last prompt in the cache
            began = time.perf_counter()
            replies = [
                llm.llm.create_chat_completion(messages=m, temperature=config.temperature, max_tokens=config.max_new_tokens, seed=s)
                for m, s in zip(messages, seeds)
            ]
            totals["bare_s"] += time.perf_counter() - began
            totals["bare_tokens"] += sum(tokens(r["choices"][0]["message"]["content"] or "") for r in replies)
            totals["prompt_tokens"] += sum(len(llm.render(m)) for m in messages)
    n = len(passages)
    messages, seeds = bare_messages(passages[:retry_prompts], config, llm)
    return {
        "model": model, "prompts": n, "prompt_tokens_mean": round(totals["prompt_tokens"] / n),
        "ours_q_per_s": n / totals["ours_s"], "bare_q_per_s": n / totals["bare_s"],
        "ours_tok_per_s": totals["ours_tokens"] / totals["ours_s"], "bare_tok_per_s": totals["bare_tokens"] / totals["bare_s"],
        "ratio": totals["bare_s"] / totals["ours_s"], **retry_cost(llm, messages, seeds, config), "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def with_earlier_rows(rows: list[dict]) -> list[dict]:
    """These rows, after the rows of the last results for models not measured this time."""
    path = RESULTS / "generate.json"
    earlier = json.loads(path.read_text())["rows"] if path.is_file() else []
    measured = {row["model"] for row in rows}
    return [row for row in earlier if row["model"] not in measured] + rows


def _child(model: str, passages: list[dict], chunk: int, threads: int, retry_prompts: int, out: multiprocessing.Queue) -> None:
    out.put(measure(model, passages, chunk, threads, retry_prompts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bundled:qwen-0.5b,bundled:qwen-1.5b")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--chunk", type=int, default=4, help="prompts per alternation (and the stage's block)")
    parser.add_argument("--retry-prompts", type=int, default=8, help="prompts the retry cost is measured on")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads, decode and prompt (1 is fastest on a busy 2-core machine)")
    args = parser.parse_args()

    passages = sample_passages(args.prompts)
    context = multiprocessing.get_context("spawn")
    rows: list[dict] = []
    for model in args.models.split(","):
        queue = context.Queue()
        child = context.Process(target=_child, args=(model, passages, args.chunk, args.threads, args.retry_prompts, queue))
        child.start()
        rows.append(queue.get())
        child.join()
    rows = with_earlier_rows(rows)
    print_table(f"generate: our llama.cpp stage vs bare create_chat_completion (SciFact prompts, {args.threads} thread)", rows)
    fastest = max(rows, key=lambda row: row["ours_q_per_s"])
    path = save("generate", {
        "chunk": args.chunk, "threads": args.threads, "rows": rows, "target_ratio": 0.9, "fastest": fastest["model"],
        "note": "wall times; ours and bare alternate chunk by chunk on one Llama",
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
