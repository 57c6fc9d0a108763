"""Round-trip rate of generated queries per query type and generator: the first quality signal of the prompts.

``prepare demo:scifact`` samples 200 abstracts (seed 42) and the first ``--passages`` of them
are used; for each query type in turn the generate stage writes ``queries_per_passage`` queries of that type for
every one of those passages (the same passages for every type: ``generate.types = [type]``). A query makes the round trip when
its source abstract is in the top 20 of BM25 and/or of MiniLM over the full SciFact corpus
(``specialize.mine``'s retrievers, 5,183 abstracts). Rates are over the kept queries; yield is
kept and found by either retriever, over the queries asked for (passages × queries per passage). The "first" columns count only the
queries kept at their first attempt: the figures the same run would give with ``--retries 0``.

Each (generator, type, prompt of that type, retries) has its own work directory in the cache, so a rerun
after a prompt change regenerates only the types whose prompt changed, and a killed run resumes.
``--prompts`` tries prompt files on top of the bundled bank (as ``generate.prompts`` does).
``--compare`` scores another generator's cached run of the same prompts on all 200 passages over
just the first ``--passages`` (its queries for those passages), so that a generator measured on
fewer passages is compared on the same ones.

    python benchmarks/bench_roundtrip.py [--generator bundled:qwen-0.5b] [--passages 200] [--retries 2] [--passage-tokens 256] [--label baseline] [--attempt 2]
                                         [--queries-per-passage 2] [--requantize iq4_nl] [--compare bundled:qwen-0.5b]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import peak_rss_mb, print_table, save  # noqa: E402

DEPTH = 20
SAMPLE = 200
MEAN_COLUMNS = ("bm25@20 %", "minilm@20 %", "either %", "both %", "yield %", "first: either %", "first: yield %")


def workdir_for(root: Path, generator: str, kind: str, prompt: object, passages: int, config) -> Path:
    """The cached work directory of one generator, type, prompt of that type, number of retries, passage cut, weights
    and queries per passage (left out of the name at 1, so that runs made before it existed are found)."""
    settings = (prompt, config.retries, config.passage_tokens, config.llm.requantize, config.llm.flash_attention)
    if config.queries_per_passage != 1:
        settings = (*settings, config.queries_per_passage)
    digest = hashlib.sha256(repr(settings).encode()).hexdigest()[:10]
    return root / generator.replace(":", "_").replace("/", "_") / f"{kind}-{digest}-{passages}"


def roundtrip(retrievers, position: dict[str, int], queries: list[dict]) -> dict[str, float]:
    """Share of the queries whose source is in each retriever's top 20, in either's and in both's."""
    from specialize.retrieval import retrieve_all

    if not queries:
        return {"bm25": 0.0, "minilm": 0.0, "either": 0.0, "both": 0.0}
    found = retrieve_all(retrievers, [q["text"] for q in queries], DEPTH)
    hits = [[position[q["source_id"]] in ranking[row] for ranking in found] for row, q in enumerate(queries)]
    share = lambda values: round(100 * sum(values) / len(queries), 1)  # noqa: E731
    return {"bm25": share(h[0] for h in hits), "minilm": share(h[1] for h in hits),
            "either": share(any(h) for h in hits), "both": share(all(h) for h in hits)}


def score(retrievers, position: dict[str, int], work: Path, sources: list[str], per_passage: int) -> dict:
    """Round-trip rates, yield and first-attempt figures of a work directory's queries for these source passages."""
    from specialize.artifacts import iter_jsonl

    wanted = set(sources)
    queries = [record for _, record in iter_jsonl(work / "queries.jsonl") if record["source_id"] in wanted]
    retried = {row["qid"] for _, row in iter_jsonl(work / "generations.jsonl") if row["rejected"] and row["source_id"] in wanted}
    first = [query for query in queries if query["qid"] not in retried]  # those kept without a retry
    rates, first_rates = roundtrip(retrievers, position, queries), roundtrip(retrievers, position, first)
    return {
        "kept": len(queries), "bm25@20 %": rates["bm25"], "minilm@20 %": rates["minilm"], "either %": rates["either"], "both %": rates["both"],
        "yield %": round(rates["either"] * len(queries) / (len(sources) * per_passage), 1),
        "first: either %": first_rates["either"], "first: yield %": round(first_rates["either"] * len(first) / (len(sources) * per_passage), 1),
    }


def report(title: str, rows: list[dict]) -> dict[str, float]:
    """Print the rows and the mean over types of each rate column; return that mean."""
    print_table(title, rows)
    mean = {column: round(sum(row[column] for row in rows) / len(rows), 1) for column in MEAN_COLUMNS}
    print("mean over types:", mean)
    return mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", default="bundled:qwen-0.5b")
    parser.add_argument("--passages", type=int, default=SAMPLE, help=f"the first N of the {SAMPLE} sampled abstracts (the same for every type)")
    parser.add_argument("--types", default=None, help="comma-separated; default: every bundled type")
    parser.add_argument("--prompts", action="append", default=[], help="prompt files or folders on top of the bank (generate.prompts)")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads, decode and prompt (1 is fastest on a busy 2-core machine)")
    parser.add_argument("--retries", type=int, default=None, help="generate.retries (default: its default); first-attempt figures are shown beside")
    parser.add_argument("--passage-tokens", type=int, default=None, help="generate.passage_tokens (default: its default)")
    parser.add_argument("--queries-per-passage", type=int, default=None, help="generate.queries_per_passage (default: its default)")
    parser.add_argument("--requantize", default=None, help="llm.requantize (default: none, the weights as they are)")
    parser.add_argument("--label", default="", help="what this attempt changed, saved with the figures")
    parser.add_argument("--compare", default=None, help=f"a generator whose cached {SAMPLE}-passage run is scored on the same first --passages passages")
    parser.add_argument("--attempt", default="", help="results go to roundtrip_<generator>_<attempt>.json (default: roundtrip_<generator>.json)")
    args = parser.parse_args()

    from specialize.config import QUERY_TYPES, GenerateConfig, LLMConfig, MineConfig
    from specialize.llm import load_llm
    from specialize.models import cache_dir
    from specialize.records import read_corpus
    from specialize.retrieval import load_retrievers
    from specialize.stages.generate.prompts import load_prompt_types
    from specialize.stages.generate.stage import GENERATION_DROPS, generate
    from specialize.stages.prepare import prepare

    root = cache_dir() / "bench" / "roundtrip"
    sample = root / f"scifact-{SAMPLE}"
    if not (sample / "passages.jsonl").is_file():
        prepare("demo:scifact", sample, max_passages=SAMPLE)
    passages = (sample / "passages.jsonl").read_text().splitlines(keepends=True)[: args.passages]
    sources = [json.loads(line)["_id"] for line in passages]
    ids, texts = read_corpus(sample / "corpus.jsonl")
    position = {doc_id: i for i, doc_id in enumerate(ids)}

    bank = load_prompt_types(args.prompts)
    kinds = args.types.split(",") if args.types else list(QUERY_TYPES)
    config = GenerateConfig(model=args.generator, llm=LLMConfig(threads=args.threads), prompts=args.prompts)
    if args.retries is not None:
        config = config.model_copy(update={"retries": args.retries})
    if args.passage_tokens is not None:
        config = config.model_copy(update={"passage_tokens": args.passage_tokens})
    if args.queries_per_passage is not None:
        config = config.model_copy(update={"queries_per_passage": args.queries_per_passage})
    if args.requantize:
        config = config.model_copy(update={"llm": config.llm.model_copy(update={"requantize": args.requantize})})
    compare = {}  # the other generator's finished full-sample work directory per type, checked before any work
    if args.compare:
        for kind in kinds:
            work = workdir_for(root, args.compare, kind, bank[kind], SAMPLE, config)
            if (work / "queries.jsonl").is_file():
                compare[kind] = work
        if not compare:
            sys.exit(f"error: --compare {args.compare}: no finished {SAMPLE}-passage run of these prompts in the cache")
    retrievers = load_retrievers(MineConfig(retrievers=["bm25", "bundled:minilm"], backend="torch"), ids, texts)
    llm = None
    rows = []
    for kind in kinds:
        work = workdir_for(root, args.generator, kind, bank[kind], args.passages, config)
        work.mkdir(parents=True, exist_ok=True)
        (work / "passages.jsonl").write_text("".join(passages))
        started = time.perf_counter()
        if llm is None and not (work / "queries.jsonl").is_file():
            llm = load_llm(args.generator, config.llm, config.seed)
        counts = generate(work, config.model_copy(update={"types": [kind]}), llm=llm)
        seconds = time.perf_counter() - started
        dropped = {reason: counts[f"dropped_{reason}"] for reason in GENERATION_DROPS if counts[f"dropped_{reason}"]}
        rows.append({
            "type": kind, "passages": counts["passages"], "retried": counts["retried"], "recovered": counts["recovered"],
            **score(retrievers, position, work, sources, config.queries_per_passage),
            "dropped": ", ".join(f"{reason} {n}" for reason, n in dropped.items()) or "-",
            "passage_tokens": bank[kind].passage_tokens or config.passage_tokens,
            "q/s": counts["queries_per_second"], "gen_s": round(seconds, 1) if counts["generated_now"] else 0.0,
        })
    mean = report(f"round trip @{DEPTH}, {args.generator}, {args.passages} SciFact passages per type", rows)
    results = {"generator": args.generator, "passages": args.passages, "depth": DEPTH, "label": args.label, "prompts": args.prompts,
               "threads": args.threads, "retries": config.retries, "passage_tokens": config.passage_tokens,
               "requantize": config.llm.requantize, "flash_attention": config.llm.flash_attention,
               "queries_per_passage": config.queries_per_passage, "rows": rows, "mean": mean}
    if compare:
        compared = [{"type": kind, **score(retrievers, position, work, sources, config.queries_per_passage)} for kind, work in compare.items()]
        title = f"the same {args.passages} passages, {args.compare} (from its {SAMPLE}-passage run)"
        results["compare"] = {"generator": args.compare, "rows": compared, "mean": report(title, compared)}
    name = "_".join(filter(None, ["roundtrip", args.generator.split(":")[-1], args.attempt]))
    path = save(name, {**results, "peak_rss_mb": round(peak_rss_mb(), 1)})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
