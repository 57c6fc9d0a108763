"""`generate` throughput: prompts sharing their prefix vs a draw of examples per passage vs a bare loop.

For each bundled LLM, ``--prompts`` SciFact abstracts (prepare's seeded sample) are cut into
chunks of ``--chunk`` (one example group), and chunk by chunk three sides write a query for each,
alternating so that a change in the machine's load hits all alike, on the same ``Llama`` instance:

* **grouped**: the generate stage as shipped (``few_shot_group`` 32): the prompts of one type in a
  group show the same examples, run one after the other, and llama.cpp evaluates their shared
  prefix once;
* **per passage**: the stage with ``few_shot_group: 1``, the papers' setting: examples drawn per
  passage, so prompts share only the system line and each is decoded from scratch;
* **bare**: a loop of ``llama_cpp.Llama.create_chat_completion`` over the grouped side's chat
  messages and seeds in its order, with llama-cpp-python's own prefix reuse between prompts (which
  our backend does in two fixed steps so that a seed always gives the same text).

Tokens are counted by tokenizing each reply with the model's own tokenizer, the same way on every
side; the stage runs with ``retries: 0`` here, doing what the bare loop does. Then the cost of a
retry: on ``--retry-prompts`` of the same prompts, one attempt each vs three (every reply
rejected), a retry being what the third costs over the first, per prompt. Peak RSS is per model
(each runs in its own process). Rows of models not measured in a run are kept from the last
results, so models can be measured one at a time.

    python benchmarks/bench_generate.py [--models bundled:qwen-0.5b,bundled:qwen-1.5b] [--prompts 64] [--chunk 32] [--retry-prompts 8] [--threads 2]
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


def stage_messages(work: Path, config, llm) -> tuple[list[list[dict]], list[int]]:
    """The chat messages and seeds the stage sent for a finished work directory, in the order it sent them."""
    from specialize.artifacts import read_jsonl
    from specialize.generate.stage import Mixture, example_key, passage_messages, passage_seed, token_counter

    mixture = Mixture(config)
    passages = list(read_jsonl(work / "passages.jsonl"))
    position = {record["_id"]: index for index, record in enumerate(passages)}
    count = token_counter(llm)
    messages, seeds = [], []
    for row in read_jsonl(work / "generations.jsonl"):
        record = passages[position[row["source_id"]]]
        messages.append(passage_messages(record, row["type"], example_key(position[row["source_id"]], config), mixture, config, count))
        seeds.append(passage_seed(config.seed, record["_id"]))
    return messages, seeds


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
    """Seconds and tokens of the three sides over the same passages, chunk by chunk, alternating; then a retry's cost."""
    from specialize.artifacts import read_jsonl
    from specialize.config import GenerateConfig, LLMConfig
    from specialize.generate.stage import generate
    from specialize.llm import load_llm

    configs = {
        "grouped": GenerateConfig(model=model, llm=LLMConfig(threads=threads), few_shot_group=chunk, retries=0),
        "per_passage": GenerateConfig(model=model, llm=LLMConfig(threads=threads), few_shot_group=1, retries=0),
    }
    llm = load_llm(model, configs["grouped"].llm, configs["grouped"].seed)
    llm.llm._ctx.set_n_threads(threads, threads)  # llm.threads sets decode threads only, not the prompt's
    tokens = lambda text: len(llm.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))  # noqa: E731
    seconds = dict.fromkeys([*configs, "bare"], 0.0)
    replied = dict.fromkeys(seconds, 0)
    prompt_tokens = dict.fromkeys(configs, 0)
    with tempfile.TemporaryDirectory() as folder:
        for start in range(0, len(passages), chunk):
            for side, config in configs.items():
                work = Path(folder) / f"{side}{start}"
                work.mkdir()
                (work / "passages.jsonl").write_text("".join(json.dumps(p) + "\n" for p in passages[start : start + chunk]))
                began = time.perf_counter()
                generate(work, config, llm=llm)
                seconds[side] += time.perf_counter() - began
                replied[side] += sum(tokens(r["raw"]) for r in read_jsonl(work / "generations.jsonl"))
                prompt_tokens[side] += sum(len(llm.render(m)) for m in stage_messages(work, config, llm)[0])
            messages, seeds = stage_messages(Path(folder) / f"grouped{start}", configs["grouped"], llm)
            llm.llm.reset()  # the bare loop must not find our last prompt in the cache
            began = time.perf_counter()
            replies = [
                llm.llm.create_chat_completion(messages=m, temperature=configs["grouped"].temperature, max_tokens=configs["grouped"].max_new_tokens, seed=s)
                for m, s in zip(messages, seeds)
            ]
            seconds["bare"] += time.perf_counter() - began
            replied["bare"] += sum(tokens(r["choices"][0]["message"]["content"] or "") for r in replies)
        messages, seeds = stage_messages(Path(folder) / "grouped0", configs["grouped"], llm)
    n = len(passages)
    return {
        "model": model, "prompts": n, "prompt_tokens_mean": round(prompt_tokens["grouped"] / n),
        **{f"{side}_q_per_s": round(n / seconds[side], 3) for side in seconds},
        **{f"{side}_tok_per_s": round(replied[side] / seconds[side], 2) for side in seconds},
        "speedup_over_per_passage": round(seconds["per_passage"] / seconds["grouped"], 2),
        "ratio_to_bare": round(seconds["bare"] / seconds["grouped"], 3),
        **retry_cost(llm, messages[:retry_prompts], seeds[:retry_prompts], configs["grouped"]), "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def with_earlier_rows(rows: list[dict]) -> list[dict]:
    """These rows, after the rows of the last results for models not measured this time."""
    path = RESULTS / "generate.json"
    earlier = [row for row in json.loads(path.read_text())["rows"] if "grouped_q_per_s" in row] if path.is_file() else []  # this schema only
    measured = {row["model"] for row in rows}
    return [row for row in earlier if row["model"] not in measured] + rows


def _child(model: str, passages: list[dict], chunk: int, threads: int, retry_prompts: int, out: multiprocessing.Queue) -> None:
    out.put(measure(model, passages, chunk, threads, retry_prompts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bundled:qwen-0.5b,bundled:qwen-1.5b")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=32, help="prompts per alternation: one example group (few_shot_group)")
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
    print_table(f"generate: shared prefix vs a draw per passage vs bare create_chat_completion (SciFact prompts, {args.threads} threads)", rows)
    fastest = max(rows, key=lambda row: row["grouped_q_per_s"])
    path = save("generate", {
        "chunk": args.chunk, "threads": args.threads, "rows": rows, "target_ratio_to_bare": 0.9, "fastest": fastest["model"],
        "note": "wall times; the three sides alternate chunk by chunk on one Llama",
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
