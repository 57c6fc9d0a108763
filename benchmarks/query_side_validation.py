"""Which training lever moves a query-side model trained on generated queries, read on human queries never tested.

SciFact's generated fixture (``benchmarks/data/scifact/queries.jsonl``) is mined and labelled once per teacher; each
recipe trains the query side on those lists (always trained and published, as a variant is) and the publish gate
reads the result on SciFact's 809 human **train** claims: the per-query nDCG@10 gain over the base with its 95%
bootstrap interval. No test claim is read here: this is where a recipe is chosen; its test number is read once
afterwards, in ``query_side.py``.

    python benchmarks/query_side_validation.py
    python benchmarks/query_side_validation.py --recipes baseline,claims-only
    python benchmarks/query_side_validation.py --fill-agreement     # base_agrees for stored rows, no training

Each run replaces its recipes' rows in ``results/query_side_validation.json`` and rewrites the ``.md`` beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, print_table, save  # noqa: E402
from query_side import RECIPES, fixture_rows, labelled_workdir, train_recipe  # noqa: E402

BASE = RECIPES["query-listwise-t0.05"]
STUDENT_HEAVY = "ensemble:bi-encoder:bundled:minilm=0.7,bm25=0.3"


def copied_at_most(share: float):
    """Keep the generated queries with at most ``share`` of their BM25 terms in their source passage."""

    def keep(rows: list[dict]) -> list[dict]:
        from specialize.datasets import load_corpus, resolve_dataset
        from specialize.retrieval import bm25_terms

        texts = {doc["_id"]: f"{doc['title']} {doc['text']}" for doc in load_corpus(resolve_dataset("demo:scifact"))}
        query_terms = bm25_terms([row["text"] for row in rows])
        source_terms = bm25_terms([texts[row["source_id"]] for row in rows])
        return [row for row, q, s in zip(rows, query_terms, source_terms) if q and len(q & s) / len(q) <= share]

    return keep


def random_share(count: int):
    """Keep a seeded random ``count`` of the generated queries: the size control for a filter."""

    def keep(rows: list[dict]) -> list[dict]:
        import random

        return sorted(random.Random(0).sample(rows, count), key=lambda row: row["qid"])

    return keep


def cropped(replace: bool):
    """Each generated query cut to a random contiguous span of 30-70% of its words (at least three), as Contriever crops
    its pseudo-queries: harder queries that copy less of their source. ``replace``: the cut queries only; else both."""

    def keep(rows: list[dict]) -> list[dict]:
        import random

        draw = random.Random(0)
        cut = []
        for row in rows:
            words = row["text"].split()
            size = max(3, round(len(words) * draw.uniform(0.3, 0.7)))
            if size >= len(words):
                continue
            start = draw.randrange(len(words) - size + 1)
            cut.append({**row, "qid": f"{row['qid']}-crop", "text": " ".join(words[start:start + size])})
        return cut if replace else rows + cut

    return keep


def paraphrases(replace: bool):
    """The bundled generator's rewrites of the fixture's queries (``paraphrase_fixture.py``); ``replace``: instead of the
    fixture's queries, else beside them."""

    def keep(rows: list[dict]) -> list[dict]:
        path = Path(__file__).parent / "data" / "scifact" / "paraphrases.jsonl"
        rewrites = [json.loads(line) for line in path.read_text().splitlines()]
        return rewrites if replace else rows + rewrites

    return keep


TWO_PER_PASSAGE = "scifact-two-per-passage"
"""A second SciFact fixture (``fixtures.py --queries-per-passage 2 --disjoint-from scifact``): two queries from each of
800 passages no query of the first fixture came from, written with the stage's current settings."""


def second_fixture(how: str):
    """The two-per-passage fixture's queries: ``alone``, ``equal`` (whole passages drawn until as many queries as the
    first fixture holds: two per passage against one, at an equal count) or ``with`` (beside the first fixture's)."""

    def keep(rows: list[dict]) -> list[dict]:
        import random

        second = fixture_rows(TWO_PER_PASSAGE)
        if how == "with":
            return rows + second
        if how == "alone":
            return second
        passages: dict[str, list[dict]] = {}
        for row in second:
            passages.setdefault(row["source_id"], []).append(row)
        drawn: list[dict] = []
        for source in random.Random(0).sample(sorted(passages), len(passages)):
            if len(drawn) >= len(rows):
                break
            drawn += passages[source]
        return sorted(drawn, key=lambda row: row["qid"])

    return keep


FILTERS = {"overlap<=0.8": copied_at_most(0.8), "random-290": random_share(290), "cropped": cropped(True), "with-cropped": cropped(False),
           "paraphrases": paraphrases(True), "with-paraphrases": paraphrases(False),
           "two-per-passage": second_fixture("alone"), "two-per-passage-equal": second_fixture("equal"),
           "with-two-per-passage": second_fixture("with")}
"""Which queries a recipe's lists are mined and labelled from (the fixture's rows -> the rows used): 290 of the 1,071
share at most 80% of their terms with their source (the median query shares 93-100% for every type but questions, 73%);
crops and paraphrases try to make them harder (both through the pipeline's round trip and source rule); the second
fixture tries more passages, and two queries per passage against one at an equal count."""
VARIANTS: dict[str, tuple[dict, dict]] = {
    "baseline": (BASE, {}),
    "claims-only": ({**BASE, "types": ["claim"]}, {}),
    "no-keywords-title": ({**BASE, "types": ["claim", "msmarco", "question", "web_search"]}, {}),
    "lr3e-5": ({**BASE, "learning_rate": 3e-5}, {}),
    "adapter": (RECIPES["adapter-listwise-t0.05"], {}),
    "infonce": (RECIPES["query-infonce"], {}),
    "student-heavy-teacher": (BASE, {"label.teacher": STUDENT_HEAVY}),
    "lr1e-5": ({**BASE, "learning_rate": 1e-5}, {}),
    "lr3e-5-no-early-stop": ({**BASE, "learning_rate": 3e-5, "early_stopping_patience": None}, {}),
    "lr1e-5-no-early-stop": ({**BASE, "learning_rate": 1e-5, "early_stopping_patience": None}, {}),
    "lr3e-5-t0.3": ({**BASE, "learning_rate": 3e-5, "teacher_temperature": 0.3}, {}),
    "lr3e-5-infonce": ({**RECIPES["query-infonce"], "learning_rate": 3e-5}, {}),
    "lr3e-5-overlap<=0.8": ({**BASE, "learning_rate": 3e-5}, {"queries": "overlap<=0.8"}),
    "lr3e-5-random-290": ({**BASE, "learning_rate": 3e-5}, {"queries": "random-290"}),
    "lr3e-5-cropped": ({**BASE, "learning_rate": 3e-5}, {"queries": "cropped"}),
    "lr3e-5-with-cropped": ({**BASE, "learning_rate": 3e-5}, {"queries": "with-cropped"}),
    "lr3e-5-paraphrases": ({**BASE, "learning_rate": 3e-5}, {"queries": "paraphrases"}),
    "lr3e-5-with-paraphrases": ({**BASE, "learning_rate": 3e-5}, {"queries": "with-paraphrases"}),
    "lr3e-5-two-per-passage": ({**BASE, "learning_rate": 3e-5}, {"queries": "two-per-passage"}),
    "lr3e-5-two-per-passage-equal": ({**BASE, "learning_rate": 3e-5}, {"queries": "two-per-passage-equal"}),
    "lr3e-5-with-two-per-passage": ({**BASE, "learning_rate": 3e-5}, {"queries": "with-two-per-passage"}),
    "lr1e-4-with-two-per-passage": ({**BASE, "learning_rate": 1e-4}, {"queries": "with-two-per-passage"}),
    "lr3e-5-no-source-rule": ({**BASE, "learning_rate": 3e-5}, {"label.require_source_first": False}),
    "lr3e-5-no-score-cut": ({**BASE, "learning_rate": 3e-5}, {"label.drop_below_percentile": 0.0}),
    "lr3e-5-all-kept": ({**BASE, "learning_rate": 3e-5}, {"label.require_source_first": False, "label.drop_below_percentile": 0.0}),
}
"""name -> (train settings, overrides of the mine / label config, and ``queries``: a key of ``FILTERS``): the generated fixture's
query types are keywords 203, title 199,
question 194, web_search 176, msmarco 165, claim 134; SciFact's test and train queries are claims."""


def base_agreement(workdir: Path) -> float:
    """The share of training lists whose teacher's top passage the base student already ranks first within the list:
    how much the lists could still teach the top of the ranking (SciFact's human train claims: 0.67)."""
    import numpy as np

    from specialize.encoder import encode_corpus, load_encoder
    from specialize.records import read_corpus
    from specialize.workdir import Workdir

    work = Workdir(workdir)
    ids, texts = read_corpus(work.corpus)
    encoder = load_encoder("bundled:minilm")
    documents = encode_corpus(encoder, ids, texts)  # the cache mine filled
    row = {doc: at for at, doc in enumerate(ids)}
    lists = [json.loads(line) for line in work.train.read_text().splitlines()]
    queries = encoder.encode([item["query"] for item in lists], batch_size=64, kind="query")
    agree = [int(np.argmax(documents[[row[doc] for doc in item["doc_ids"]]] @ query) == int(np.argmax(item["scores"])))
             for item, query in zip(lists, queries)]
    return round(float(np.mean(agree)), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).parent / ".query-side-validation-work")
    parser.add_argument("--fill-agreement", action="store_true", help="only add base_agrees to the stored rows (fill_agreement)")
    args = parser.parse_args()
    if args.fill_agreement:
        fill_agreement(args.workdir)
        return
    names = args.recipes.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; choose from {list(VARIANTS)}")

    labelled: dict[tuple[str, ...], Any] = {}
    agreements: dict[tuple[str, ...], float] = {}
    rows = []
    for name in names:
        settings, label = VARIANTS[name]
        overrides = {key: value for key, value in label.items() if key != "queries"}
        which, folder = labelled_folder(args.workdir, label)
        if which not in labelled:
            labelled[which] = labelled_workdir("scifact", "generated", folder, overrides,
                                               keep=FILTERS.get(label.get("queries", "")))[0]
        started = time.perf_counter()
        folder, peak = train_recipe(labelled[which], f"validation-{name}", settings)
        summary = json.loads((folder / "train.json").read_text())
        gate = summary["gate"]
        if which not in agreements:
            agreements[which] = base_agreement(Path(labelled[which].workdir))
        rows.append({"recipe": name, "teacher": summary["teacher"], "train_queries": summary["train_queries"],
                     "base_agrees": agreements[which], "basis": gate["basis"],
                     "queries": gate["queries"], "base": round(gate["base"], 2), "trained": round(gate["trained"], 2),
                     "delta": round(gate["delta"], 2), "ci_low": round(gate["ci_low"], 2), "ci_high": round(gate["ci_high"], 2),
                     "epochs_run": summary.get("epochs_run"), "seconds": round(time.perf_counter() - started, 1), "peak_rss_mb": round(peak)})
        print_table(name, [rows[-1]])
    write_results(rows)


def write_results(rows: list[dict]) -> None:
    """Replace these recipes' rows in ``results/query_side_validation.json`` and rewrite the table beside it."""
    path = RESULTS / "query_side_validation.json"
    previous = {row["recipe"]: row for row in json.loads(path.read_text())["rows"]} if path.is_file() else {}
    previous.update({row["recipe"]: row for row in rows})
    save("query_side_validation", {"rows": list(previous.values())})
    header = list(rows[0])
    lines = ["# Query side on generated queries: recipes read on SciFact's human train claims", "",
             "Generated by `benchmarks/query_side_validation.py`: each recipe trained on the 1,071-query generated fixture's lists, the "
             "publish gate's reading on SciFact's 809 train claims (nDCG@10 points, 95% bootstrap CI). No test claim is read. "
             "base_agrees: the share of training lists whose teacher's top passage the base already ranks first (SciFact's human "
             "train claims: 0.67).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row.get(key, "")) for key in header) + " |" for row in previous.values()]
    (RESULTS / "query_side_validation.md").write_text("\n".join(lines) + "\n")


def labelled_folder(workdir: Path, label: dict) -> tuple[tuple[str, ...], Path]:
    """A recipe's labelled work directory, one per set of mine / label overrides, and its key."""
    which = tuple(f"{key}={value}" for key, value in sorted(label.items())) or ("defaults",)
    name = "-".join(which).replace(":", "_").replace(",", "_").replace("<=", "le").replace("=", "_")
    return which, workdir / name


def fill_agreement(workdir: Path) -> None:
    """Add ``base_agrees`` to stored rows trained on every list of a labelled folder that is still here (no training)."""
    path = RESULTS / "query_side_validation.json"
    rows = json.loads(path.read_text())["rows"]
    found: dict[Path, float] = {}
    for row in rows:
        settings, label = VARIANTS[row["recipe"]]
        folder = labelled_folder(workdir, label)[1]
        if row.get("base_agrees") is None and "types" not in settings and (folder / "train.jsonl").is_file():
            if folder not in found:
                found[folder] = base_agreement(folder)
            row["base_agrees"] = found[folder]
    write_results([{key: row.get(key) for key in ("recipe", "teacher", "train_queries", "base_agrees", *row)} for row in rows])


if __name__ == "__main__":
    main()
