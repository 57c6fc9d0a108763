"""Teacher selection (label.teacher: auto): the grid and halves by hand, the choice by hand, and on a real SciFact slice a
BM25 made useless is dropped, a run without headroom keeps the base untrained, and judged queries never come from test."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
from test_cli import cli
from test_label import _copy_inputs, _lines, workdir  # noqa: F401  (the module fixture)

from specialize.config import Config, LabelConfig, TrainConfig, load_config
from specialize.stages.label.selection import Basis, choose, fusion_spec, halves, judged_basis, settle_ties, simplex
from specialize.stages.label.stage import label
from specialize.stages.train.stage import train

STUDENT = "bi-encoder:bundled:minilm"


def test_simplex_grid_halves_and_fusion_spec():
    grid = simplex(3, 0.25)
    assert len(grid) == 15 and all(sum(w) == pytest.approx(1) and min(w) >= 0 for w in grid)
    assert grid[:3] == [(0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)]  # each member alone comes first
    qids = [f"q{i}" for i in range(21)]
    fit, measure = halves(qids, seed=3)
    assert (len(fit), len(measure)) == (11, 10) and not set(fit) & set(measure) and set(fit) | set(measure) == set(qids)
    assert halves(list(reversed(qids)), seed=3) == (fit, measure) and halves(qids, seed=4) != (fit, measure)
    assert fusion_spec(["a", "bm25"], (0.0, 1.0)) == "bm25"
    assert fusion_spec([STUDENT, "bm25"], (0.3, 0.7)) == f"ensemble:{STUDENT}=0.3,bm25=0.7"


def _basis(n: int) -> Basis:
    """n queries, each list [x, rel, y]: the relevant passage second in candidate order."""
    qids = [f"q{i}" for i in range(n)]
    fit, measure = halves(qids, seed=0)
    return Basis("synthetic", {q: q for q in qids}, {q: {f"{q}-rel": 1} for q in qids}, {q: [f"{q}-x", f"{q}-rel", f"{q}-y"] for q in qids},
                 fit, measure)


def test_choice_and_headroom_by_hand():
    basis = _basis(12)
    ranks_second = {q: np.array([1.0, 0.5, 0.0]) for q in basis.lists}  # relevant at rank 2: nDCG@10 = 1/log2(3)
    ranks_first = {q: np.array([0.5, 1.0, 0.0]) for q in basis.lists}
    config = Config(label=LabelConfig(fusion_step=0.5))
    rows = [{"teacher": STUDENT}, {"teacher": "bm25"}]
    good = choose([basis], [STUDENT, "bm25"], [[ranks_second], [ranks_first]], rows, config)
    assert good.chosen == "bm25" and good.headroom is True and good.basis == "synthetic"
    assert good.margin == pytest.approx(100 * (1 - 1 / np.log2(3)), abs=0.01) == good.ci_low  # the same gain on every query
    assert (good.fit_queries, good.measure_queries) == (6, 6)
    assert [c["teacher"] for c in good.candidates] == [STUDENT, "bm25", f"ensemble:{STUDENT}=0.5,bm25=0.5"]
    # The fusion at 0.5/0.5 ties 1.0 vs 1.0 for x and rel: candidate order puts x first, as the student does.
    assert good.candidates[2]["fit_ndcg@10"] == good.candidates[0]["fit_ndcg@10"]
    bad = choose([basis], [STUDENT, "bm25"], [[ranks_first], [ranks_second]], rows, config)
    assert bad.chosen == STUDENT and bad.headroom is False and bad.margin == 0
    assert bad.reason.startswith(f"no teacher available here beats the student on this corpus: best `{STUDENT}` +0.00 nDCG@10")


def test_a_fit_within_one_standard_error_of_the_best_goes_to_the_simplest_fusion():
    queries = ["q0", "q1", "q2", "q3"]
    per_query = lambda values: dict(zip(queries, values))  # noqa: E731
    fit = {(1.0, 0.0): per_query([50, 40, 45, 60]), (0.0, 1.0): per_query([70, 55, 66, 88]),
           (0.3, 0.7): per_query([80, 60, 70, 90]),  # the best fit: mean 75
           (0.5, 0.5): per_query([79, 61, 68, 90])}  # gaps -1, +1, -2, 0: mean -0.5, one standard error 0.65
    assert settle_ties(fit, tolerance=1.0) == ((0.3, 0.7), (0.5, 0.5))
    assert settle_ties(fit, tolerance=0.0) == ((0.3, 0.7), (0.3, 0.7))  # no tolerance: the best fit
    fit[(0.5, 0.5)] = per_query([75, 56, 66, 86])  # 4 below on every query: no error to hide in
    assert settle_ties(fit, tolerance=1.0) == ((0.3, 0.7), (0.3, 0.7))
    fit[(1.0, 0.0)] = dict(fit[(0.3, 0.7)])  # a member alone as good as the fusion: it is simpler
    assert settle_ties(fit, tolerance=0.0) == ((1.0, 0.0), (1.0, 0.0))


@pytest.fixture(scope="module")
def useless_bm25(workdir, tmp_path_factory):  # noqa: F811
    """The slice's claims written as one token (words joined by '_'), candidates shuffled: BM25 matches nothing, MiniLM still reads them."""
    work = tmp_path_factory.mktemp("useless_bm25")
    _copy_inputs(workdir, work)
    queries = _lines(work / "queries.jsonl")
    for query in queries:
        query["text"] = "_".join(query["text"].split())
    (work / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    rows = _lines(work / "candidates.jsonl")
    for row in rows:
        random.Random(row["qid"]).shuffle(row["doc_ids"])
    (work / "candidates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return work


def _run_config(work, corpus, **label):
    return load_config(None, {"workdir": str(work), "prepare.corpus": str(corpus), "mine.retrievers": ["bm25"], "mine.top_k": 20,
                              "mine.depth": 20, "mine.roundtrip_depth": 20, "label.backend": "torch", "label.candidates": ["bm25"],
                              "label.audit": "never", **{f"label.{k}": v for k, v in label.items()}})


def test_auto_drops_a_useless_bm25_and_keeps_the_base_untrained(useless_bm25, tmp_path, scifact_slice):
    work = tmp_path / "work"
    shutil.copytree(useless_bm25, work)
    config = _run_config(work, work / "corpus.jsonl")  # a plain file: no judged queries, the choice is on synthetic ones
    counts = label(work, config.label, config.prefixes, audit_with=config)
    selection = json.loads((work / "teacher.json").read_text())
    assert selection["basis"] == "synthetic" and selection["fit_queries"] + selection["measure_queries"] >= 25
    overlap = selection["synthetic_overlap"]  # a one-token claim shares no term with its abstract: every one counts
    assert overlap["median_overlap"] == 0 and overlap["at_most_max"] == overlap["sourced"] == selection["bases"]["synthetic"]
    by_name = {row["teacher"]: row for row in selection["candidates"]}
    assert len(by_name) == 3 and {STUDENT, "bm25"} <= set(by_name)  # each alone, and their best fusion
    assert by_name["bm25"]["synthetic · measure"] < by_name[STUDENT]["synthetic · measure"] - 20
    assert "bm25" not in selection["chosen"] and selection["chosen"] == STUDENT
    assert selection["headroom"] is False and counts["teacher"] == STUDENT and counts["teacher_headroom"] == 0
    assert [m["teacher"] for m in selection["members"]] == [STUDENT, "bm25"] and all("seconds" in m for m in selection["members"])
    labels = _lines(work / "labels.jsonl")  # labelled with the choice all the same, for a forced training
    assert len(labels) == len(_lines(work / "candidates.jsonl"))

    small = {"passages_per_query": 6, "batch_size": 2, "max_steps": 2, "query_max_length": 16, "report_to": "none", "eval_steps": 1}
    kept = train(work, TrainConfig(**small), teacher=STUDENT)
    summary = json.loads((work / "train.json").read_text())
    assert kept["published"] == "base" and kept["steps"] == 0 and "gate_delta" not in kept
    assert summary["verdict"].startswith("Not trained: no teacher available here beats the student")
    card = (work / "models" / "student" / "README.md").read_text()
    assert "Not trained" in card and "### Teacher selection" in card and "| `bm25` |" in card
    assert not (work / "checkpoints").exists()

    # The slice's claims as they are (the run trained on their one-token forms) are judged queries the gate reads instead.
    from specialize.datasets import load_qrels, load_queries

    judged = ("train", load_queries(scifact_slice), load_qrels(scifact_slice, "test"))
    forced = train(work, TrainConfig(**small, force_train=True), teacher=STUDENT, judged=judged)
    gate = json.loads((work / "train.json").read_text())["gate"]
    assert forced["steps"] == 2 and "gate_delta" in forced and gate["basis"] == "judged (train split)" and gate["queries"] == 30
    assert "### Teacher selection" in (work / "models" / "student" / "README.md").read_text()


def test_judged_queries_come_from_dev_or_train_never_test(workdir, tmp_path, scifact_slice):  # noqa: F811
    work = tmp_path / "work"
    work.mkdir()
    _copy_inputs(workdir, work)
    assert judged_basis(_run_config(work, scifact_slice), *zip(*[(d["_id"], d["text"]) for d in _lines(work / "corpus.jsonl")])) is None
    source = tmp_path / "source"
    shutil.copytree(scifact_slice, source)
    test_rows = (source / "qrels" / "test.tsv").read_text().splitlines()
    header, rows = test_rows[0], test_rows[1:]
    (source / "qrels" / "train.tsv").write_text("\n".join([header, *rows[::2]]) + "\n")  # half the claims as train claims
    train_qids = {row.split("\t")[0] for row in rows[::2]}
    config = _run_config(work, source, selection_queries=100)
    ids, texts = zip(*[(d["_id"], d["text"]) for d in _lines(work / "corpus.jsonl")])
    basis = judged_basis(config, list(ids), list(texts))
    assert basis.name == "judged (train split)" and set(basis.lists) == train_qids
    label(work, config.label, config.prefixes, audit_with=config)
    selection = json.loads((work / "teacher.json").read_text())
    assert selection["basis"] == "judged (train split)" and selection["bases"] == {"judged (train split)": len(train_qids),
                                                                                   "synthetic": selection["bases"]["synthetic"]}
    assert "synthetic" in selection["candidates"][0]  # measured on the synthetic queries too, for the table
    # Real claims copy much of their abstract: only those sharing at most half their terms with it count.
    overlap = selection["synthetic_overlap"]
    assert 0 < overlap["at_most_max"] < overlap["sourced"] and selection["bases"]["synthetic"] == overlap["at_most_max"]


def test_term_overlap_by_hand():
    from specialize.retrieval import bm25_terms
    from specialize.stages.label.selection import term_overlap

    query, source = bm25_terms(["the lenses of vertebrates and fish", "Crystalline lenses in vertebrates."])
    assert query == {"lens", "vertebr", "fish"} and term_overlap(query, source) == pytest.approx(2 / 3)
    assert term_overlap(set(), source) == 1.0 and term_overlap({"x"}, set()) == 0.0


def test_cli_label_auto_says_why_and_train_keeps_the_base(useless_bm25, tmp_path):
    shutil.copytree(useless_bm25, tmp_path / "work")
    args = ("--workdir", str(tmp_path / "work"), "--set", "label.candidates=[bm25]", "--set", "label.backend=torch")
    result = cli("label", *args)
    assert result.returncode == 0, result.stderr
    assert "teacher selection on synthetic queries" in result.stdout
    assert "no teacher available here beats the student" in result.stderr
    manifest = json.loads((tmp_path / "work" / "stages" / "label.json").read_text())
    assert "teacher.json" in manifest["outputs"] and manifest["counts"]["teacher"] == STUDENT
