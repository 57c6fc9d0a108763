"""Generated-query fixtures for training experiments: SciFact and MED queries written once, committed.

Runs ``prepare`` and ``generate`` with the demo's generator settings (bundled qwen-0.5b on llama.cpp,
the bundled prompts) on ``--passages`` sampled passages of one corpus, then copies the kept queries
and the generate manifest to ``benchmarks/data/<dataset>/``:

* SciFact: the bundled copy; passages relevant to a test claim are never sampled (prepare's rule).
* MED (``../shared/data/med``): no passage is excluded. MED has no train split, so its 30 judged
  queries are all test queries and every abstract is eligible as a source, as it would be for a
  user's own corpus; its corpus is read through a copy without qrels so prepare excludes nothing.

Training benchmarks start from these files (``benchmarks/query_side.py``) instead of waiting an hour
on the LLM. The work directory keeps the stage's resumable partial files: a killed run continues.
The committed fixtures were written one query per passage, before ``generate.queries_per_passage``
(their manifests record the settings); ``--queries-per-passage 1`` writes them that way again.

    python benchmarks/fixtures.py scifact --passages 1150 --queries-per-passage 1
    python benchmarks/fixtures.py med --passages 580 --queries-per-passage 1

``--disjoint-from scifact --out scifact-more`` samples only passages that no query of the committed
``scifact`` fixture came from (their ids go to ``prepare.exclude_qrels``), so a second fixture adds
new sources rather than more queries of the same ones.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402

DATA = Path(__file__).parent / "data"
SOURCES = {"scifact": "demo:scifact", "med": str(Path(__file__).resolve().parents[2] / "shared" / "data" / "med")}
EXCLUDED = {
    "scifact": "passages relevant to a SciFact test claim (qrels/test.tsv) are never sampled",
    "med": "none: MED has no train split, so every abstract is eligible (its 30 judged queries are test queries only)",
}


def source_corpus(dataset: str, work: Path) -> str:
    """The corpus prepare reads: SciFact as bundled; MED through a copy of its corpus.jsonl alone (no qrels beside it)."""
    if dataset == "scifact":
        return SOURCES[dataset]
    copy = work / "source" / "corpus.jsonl"
    if not copy.is_file():
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(SOURCES[dataset]) / "corpus.jsonl", copy)
    return str(copy)


def used_sources(fixture: str, work: Path) -> Path:
    """A qrels file naming every source passage of the fixture ``benchmarks/data/<fixture>``, for ``prepare.exclude_qrels``."""
    rows = [json.loads(line) for line in (DATA / fixture / "queries.jsonl").read_text().splitlines()]
    path = work / f"sources-of-{fixture}.tsv"
    path.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{row['qid']}\t{row['source_id']}\t1\n" for row in rows))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(SOURCES))
    parser.add_argument("--passages", type=int, required=True, help="sampled source passages")
    parser.add_argument("--queries-per-passage", type=int, default=None, help="generate.queries_per_passage (default: its default)")
    parser.add_argument("--out", default=None, help="folder name under benchmarks/data (default: the dataset's)")
    parser.add_argument("--disjoint-from", default=None, help="a fixture folder under benchmarks/data whose source passages are never sampled")
    parser.add_argument("--workdir", type=Path, default=None, help="default: benchmarks/.fixture-work/<out>")
    args = parser.parse_args()
    name = args.out or args.dataset

    from specialize.pipeline import DEMO_CONFIG, Pipeline

    work = args.workdir or Path(__file__).parent / ".fixture-work" / name
    work.mkdir(parents=True, exist_ok=True)
    pipeline = Pipeline(DEMO_CONFIG, **{
        "workdir": str(work), "prepare.corpus": source_corpus(args.dataset, work), "prepare.max_passages": args.passages,
        **({"generate.queries_per_passage": args.queries_per_passage} if args.queries_per_passage else {}),
        **({"prepare.exclude_qrels": [str(used_sources(args.disjoint_from, work))]} if args.disjoint_from else {}),
    })
    manifests = pipeline.run(stop="generate")
    out = DATA / name
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work / "queries.jsonl", out / "queries.jsonl")
    generate = manifests["generate"]
    manifest = {
        "dataset": args.dataset,
        "source": SOURCES[args.dataset],
        "excluded": EXCLUDED[args.dataset] + (f"; nor any source passage of benchmarks/data/{args.disjoint_from}" if args.disjoint_from else ""),
        "passages": manifests["prepare"]["counts"]["passages"],
        "generator": pipeline.config.generate.model,
        "generate_config": pipeline.config.generate.model_dump(mode="json"),
        "generate_manifest": generate,
        "machine": machine(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(generate["counts"], indent=1))
    print(f"wrote {out / 'queries.jsonl'} and {out / 'manifest.json'}")


if __name__ == "__main__":
    main()
