"""`generate` throughput: the stage as shipped against the stage before each of its speed-ups, and a bare loop.

For each bundled LLM, ``--prompts`` SciFact abstracts (prepare's seeded sample) are cut into
chunks of ``--chunk`` (one example group), and chunk by chunk every side writes its queries for each,
alternating so that a change in the machine's load hits all alike (one ``Llama`` per weights and attention).
Queries/s counts the queries asked for (passages × ``queries_per_passage``):

* **shipped**: the generate stage with its defaults: the prompts of one type in a group of
  ``few_shot_group`` passages show the same examples and go to the backend in blocks of one type;
  their shared prefix is evaluated once and up to ``llm.batch_size`` replies are decoded side by
  side; attention is flash attention, the passage is cut at ``passage_tokens`` (256; claims 384), and
  each passage's two queries (``queries_per_passage``) are sampled from one prompt, read once, with
  up to 3 retries;
* **one per passage**: the shipped stage with ``queries_per_passage: 1``, ``retries: 2``: the stage
  before two per passage became its default (rows measured before that call this side ``shipped``,
  and the shipped one ``two_per_passage``, or ``two_per_passage_retries_3`` with retries; their
  ``queries_per_passage`` says which);
* **before**: one per passage less flash attention and the passage cut: the stage before the
  round that added them (0.404 queries/s when it was measured first);
* **per passage**: ``before`` with ``few_shot_group: 1``, ``batch_size: 1``: examples drawn per
  passage, each prompt read whole, one reply at a time: the stage as it was when generation
  measured 0.24 queries/s, the baseline of the speed-up asked for;
* **requantized IQ4_NL**: the shipped stage on the weights requantized to IQ4_NL
  (``llm.requantize: iq4_nl``, an option: it costs yield, ``prompts.md``);
* **bare**: a loop of ``llama_cpp.Llama.create_chat_completion`` over the shipped side's chat
  messages and seeds in its order, on its weights, with llama-cpp-python's own prefix reuse.

Tokens are counted by tokenizing each reply with the model's own tokenizer, the same way on every
side; the stage runs with ``retries: 0`` here, doing what the bare loop does. ``--with-retries`` measures
the stage whole instead: every side retries as the stage does (``retries``, the side's own where it sets
one), so each side's rate counts the replies it had to ask for again;
the bare loop, which cannot retry, is left out, and the rows are kept apart from the first-attempt
ones (``"with_retries": true``). ``--sides`` measures only some sides. Then the cost of a
retry: on ``--retry-prompts`` of the same prompts, one attempt each vs three (every reply
rejected), a retry being what the third costs over the first, per prompt. Peak RSS is per model
(each runs in its own process). Rows of models not measured in a run are kept from the last
results, so models can be measured one at a time.

    python benchmarks/bench_generate.py [--models bundled:qwen-0.5b,bundled:qwen-1.5b] [--prompts 64] [--chunk 32] [--retry-prompts 8] [--threads 2]
                                        [--with-retries] [--sides shipped,per_passage]
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
    from specialize.stages.prepare import prepare

    with tempfile.TemporaryDirectory() as folder:
        prepare("demo:scifact", Path(folder), max_passages=count)
        return list(read_jsonl(Path(folder) / "passages.jsonl"))


def stage_messages(work: Path, config, llm) -> tuple[list[list[dict]], list[int]]:
    """The chat messages and seeds the stage sent for a finished work directory, in the order it sent them."""
    from specialize.artifacts import read_jsonl
    from specialize.stages.generate.stage import Mixture, example_key, passage_messages, passage_seed, token_counter

    mixture = Mixture(config)
    passages = list(read_jsonl(work / "passages.jsonl"))
    position = {record["_id"]: index for index, record in enumerate(passages)}
    count = token_counter(llm)
    messages, seeds = [], []
    asked: dict[str, int] = {}  # per passage: its queries so far (a passage's rows are in query order)
    for row in read_jsonl(work / "generations.jsonl"):
        record = passages[position[row["source_id"]]]
        sample = asked[record["_id"]] = asked.get(record["_id"], -1) + 1
        messages.append(passage_messages(record, row["type"], example_key(position[row["source_id"]], config), mixture, config, count))
        seeds.append(passage_seed(config.seed, record["_id"], sample))
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


def use_width(llm, width: int) -> None:
    """The side's ``llm.batch_size`` on the same ``Llama``: its generation context closed, a new one made on first use."""
    if llm._sequences is not None:
        llm._sequences.context.close()  # the model holds on to a context until it is closed
    llm.width, llm._sequences = width, None


ONE = {"queries_per_passage": 1, "retries": 2}  # the stage before two queries per passage became its default

SIDES = {  # name: GenerateConfig fields and LLMConfig fields that differ from the stage's defaults
    "shipped": ({}, {}),
    "one_per_passage": (ONE, {}),
    "before": ({**ONE, "passage_tokens": 384}, {"flash_attention": False}),
    "per_passage": ({**ONE, "passage_tokens": 384, "few_shot_group": 1}, {"flash_attention": False, "batch_size": 1}),
    "requantized_iq4_nl": ({}, {"requantize": "iq4_nl"}),
}


def measure(model: str, passages: list[dict], chunk: int, threads: int, retry_prompts: int, sides: list[str], with_retries: bool) -> dict:
    """Seconds and tokens of each side (and the bare loop on first attempts) over the same passages, chunk by chunk,
    alternating; then a retry's cost."""
    from specialize.artifacts import read_jsonl
    from specialize.config import GenerateConfig, LLMConfig
    from specialize.llm import load_llm
    from specialize.stages.generate.stage import generate

    first_only = {} if with_retries else {"retries": 0}
    configs = {side: GenerateConfig(model=model, llm=LLMConfig(threads=threads, **llm_fields), **{"few_shot_group": chunk, **fields, **first_only})
               for side, (fields, llm_fields) in SIDES.items() if side in sides}
    loaded: dict[tuple, object] = {}  # one Llama per weights and attention; each side sets its own width on it
    for config in configs.values():
        key = (config.llm.requantize, config.llm.flash_attention)
        if key not in loaded:
            loaded[key] = load_llm(model, config.llm, config.seed)
    llm_of = {side: loaded[(config.llm.requantize, config.llm.flash_attention)] for side, config in configs.items()}
    llm = llm_of["shipped"]
    tokens = lambda text: len(llm.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))  # noqa: E731
    seconds = dict.fromkeys([*configs, *([] if with_retries else ["bare"])], 0.0)
    replied = dict.fromkeys(seconds, 0)
    asked = dict.fromkeys(seconds, 0)  # queries asked for: passages × queries per passage
    again = dict.fromkeys(configs, 0)  # replies asked for again (retries)
    prompt_tokens = dict.fromkeys(configs, 0)
    with tempfile.TemporaryDirectory() as folder:
        for start in range(0, len(passages), chunk):
            for side, config in configs.items():
                use_width(llm_of[side], config.llm.batch_size)
                work = Path(folder) / f"{side}{start}"
                work.mkdir()
                (work / "passages.jsonl").write_text("".join(json.dumps(p) + "\n" for p in passages[start : start + chunk]))
                began = time.perf_counter()
                generate(work, config, llm=llm_of[side])
                seconds[side] += time.perf_counter() - began
                rows = list(read_jsonl(work / "generations.jsonl"))
                replied[side] += sum(tokens(r["raw"]) for r in rows)
                asked[side] += len(rows)
                again[side] += sum(len(r["rejected"]) for r in rows)
                prompt_tokens[side] += sum(len(llm.render(m)) for m in stage_messages(work, config, llm)[0])
            if with_retries:
                continue
            messages, seeds = stage_messages(Path(folder) / f"shipped{start}", configs["shipped"], llm)
            llm.llm.reset()  # the bare loop must not find our last prompt in the cache
            began = time.perf_counter()
            replies = [
                llm.llm.create_chat_completion(messages=m, temperature=configs["shipped"].temperature, max_tokens=configs["shipped"].max_new_tokens, seed=s)
                for m, s in zip(messages, seeds)
            ]
            seconds["bare"] += time.perf_counter() - began
            asked["bare"] += len(replies)
            replied["bare"] += sum(tokens(r["choices"][0]["message"]["content"] or "") for r in replies)
        messages, seeds = stage_messages(Path(folder) / "shipped0", configs["shipped"], llm)
    use_width(llm, configs["shipped"].llm.batch_size)
    shipped = configs["shipped"]
    rate = {side: asked[side] / seconds[side] for side in seconds}
    return {
        "model": model, "with_retries": with_retries, "passages": len(passages), "queries_per_passage": shipped.queries_per_passage,
        "batch_size": shipped.llm.batch_size,
        "passage_tokens": shipped.passage_tokens, "flash_attention": shipped.llm.flash_attention,
        **{f"{side}_prompt_tokens_mean": round(prompt_tokens[side] / asked[side]) for side in configs},
        **{f"{side}_q_per_s": round(rate[side], 3) for side in seconds},
        **{f"{side}_tok_per_s": round(replied[side] / seconds[side], 2) for side in seconds},
        **({f"{side}_retries_per_query": round(again[side] / asked[side], 3) for side in configs} if with_retries else {}),
        **{f"shipped_over_{side}": round(rate["shipped"] / rate[side], 2) for side in seconds if side != "shipped"},
        **retry_cost(llm, messages[:retry_prompts], seeds[:retry_prompts], shipped), "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def by_side(row: dict) -> list[dict]:
    """One model's row as a line per side: queries/s, reply tokens/s, prompt tokens, and how much faster the shipped stage is."""
    return [{
        "model": row["model"], "side": side, "retries": "as the stage" if row.get("with_retries") else "none",
        "q/s": row[f"{side}_q_per_s"], "reply tok/s": row[f"{side}_tok_per_s"], "retries/query": row.get(f"{side}_retries_per_query", "-"),
        "prompt tokens": row.get(f"{side}_prompt_tokens_mean", "-"), "shipped ×": row.get(f"shipped_over_{side}", 1.0),
    } for side in (key.removesuffix("_q_per_s") for key in row if key.endswith("_q_per_s"))]


def with_earlier_rows(rows: list[dict]) -> list[dict]:
    """These rows, after the rows of the last results for models (with or without retries) not measured this time."""
    path = RESULTS / "generate.json"
    earlier = [row for row in json.loads(path.read_text())["rows"] if "shipped_q_per_s" in row] if path.is_file() else []  # this schema only
    key = lambda row: (row["model"], row.get("with_retries", False))  # noqa: E731
    measured = {key(row) for row in rows}
    return [row for row in earlier if key(row) not in measured] + rows


def _child(model: str, passages: list[dict], chunk: int, threads: int, retry_prompts: int, sides: list[str], with_retries: bool,
           out: multiprocessing.Queue) -> None:
    out.put(measure(model, passages, chunk, threads, retry_prompts, sides, with_retries))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bundled:qwen-0.5b,bundled:qwen-1.5b")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=32, help="prompts per alternation: one example group (few_shot_group)")
    parser.add_argument("--retry-prompts", type=int, default=8, help="prompts the retry cost is measured on")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads, decode and prompt")
    parser.add_argument("--with-retries", action="store_true", help="every side retries as the stage does (no bare loop)")
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, of: {', '.join(SIDES)} (shipped is always measured)")
    args = parser.parse_args()
    sides = ["shipped", *(side for side in args.sides.split(",") if side != "shipped")]
    if unknown := [side for side in sides if side not in SIDES]:
        parser.error(f"unknown side(s) {unknown}; choose from {list(SIDES)}")

    passages = sample_passages(args.prompts)
    context = multiprocessing.get_context("spawn")
    rows: list[dict] = []
    for model in args.models.split(","):
        queue = context.Queue()
        child = context.Process(target=_child, args=(model, passages, args.chunk, args.threads, args.retry_prompts, sides, args.with_retries, queue))
        child.start()
        rows.append(queue.get())
        child.join()
    rows = with_earlier_rows(rows)
    print_table(f"generate: the stage as shipped vs before each speed-up vs bare create_chat_completion (SciFact prompts, {args.threads} threads)",
                [side for row in rows for side in by_side(row)])
    print("a retry / a first attempt:", {row["model"]: row["retry_over_first"] for row in rows if not row.get("with_retries")},
          "peak RSS MB:", {row["model"]: row["peak_rss_mb"] for row in rows})
    first_attempts = [row for row in rows if not row.get("with_retries")]
    fastest = max(first_attempts or rows, key=lambda row: row["shipped_q_per_s"])  # a first --with-retries run has only its own rows
    path = save("generate", {
        "chunk": args.chunk, "threads": args.threads, "rows": rows, "target_ratio_to_bare": 0.9, "fastest": fastest["model"],
        "note": "wall times; the sides alternate chunk by chunk on one Llama",
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
