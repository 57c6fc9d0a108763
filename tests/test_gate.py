"""The publish gate: held-out relevance, the paired bootstrap decision, and the train stage publishing by it.

The decision is checked on per-query scores where the right answer is known; the stage is checked with the real
MiniLM trained query-side on the tiny SciFact lists of test_train: a model that learnt the held-out claims is
published, a wrecked one is not (test_train), and too few held-out queries keep the base.
"""

from __future__ import annotations

import json

import pytest
from test_train import lists_dir, tiny, workdir_with  # noqa: F401

from specialize.stages.train.data import ScoredList
from specialize.stages.train.gate import decide, held_out_qrels, judged_gate_queries
from specialize.stages.train.stage import train


def scores(values: list[float]) -> dict[str, float]:
    return {f"q{i}": value for i, value in enumerate(values)}


def test_a_consistent_gain_is_published_with_its_interval():
    result = decide(scores([0.5, 0.4] * 20), scores([0.6, 0.6] * 20), min_queries=30, margin=0.0, confidence=0.95, seed=1)
    assert result.decision == "trained" and result.queries == 40
    assert result.delta == pytest.approx(15.0) and result.ci_low > 0 and result.ci_low <= 15.0 <= result.ci_high
    assert result.reason.startswith("published the trained model: +15.00 nDCG@10 on 40 held-out queries, 95% CI")


def test_a_gain_within_noise_keeps_the_base():
    base = scores([0.5] * 40)
    trained = scores([0.9, 0.1, 0.6, 0.5] * 10)  # mean +2.5 points, but half the queries lose
    result = decide(base, trained, min_queries=30, margin=0.0, confidence=0.95, seed=1)
    assert result.decision == "base" and result.ci_low < 0 < result.ci_high
    assert result.reason.startswith("kept the base: +2.50 nDCG@10 on 40 held-out queries") and "lower bound not above +0.00" in result.reason


def test_the_margin_and_the_minimum_number_of_queries_are_kept():
    base, trained = scores([0.5] * 40), scores([0.52] * 40)  # +2 points on every query
    assert decide(base, trained, 30, margin=0.0, confidence=0.95, seed=1).decision == "trained"
    assert decide(base, trained, 30, margin=2.5, confidence=0.95, seed=1).decision == "base"
    few = decide(scores([0.1] * 10), scores([0.9] * 10), 30, margin=0.0, confidence=0.95, seed=1)
    assert few.decision == "base" and few.reason == "kept the base: cannot tell with 10 held-out queries, fewer than train.gate_min_queries (30)"


def test_held_out_relevance_is_the_source_passage_else_the_teachers_top():
    rows = [ScoredList("a", "q", "claim", ["d2", "d1"], [0.9, 0.5], 1), ScoredList("b", "q", "user", ["d3", "d1"], [1.0, 0.2], 2)]
    assert held_out_qrels(rows, {"a": "d1", "b": None}) == {"a": {"d1": 1}, "b": {"d3": 1}}


def test_judged_gate_queries_leave_out_what_was_trained_on_and_what_is_not_in_the_corpus():
    judged = ("train", {"a": "Claim A.", "b": "claim b", "c": "claim c", "d": "claim d"},
              {"a": {"d1": 1}, "b": {"d2": 1}, "c": {"gone": 1}, "d": {"d1": 0}})
    basis, queries, qrels = judged_gate_queries(judged, trained_on={" claim a. "}, corpus_ids={"d1", "d2"})
    assert basis == "judged (train split)" and queries == {"b": "claim b"} and qrels == {"b": {"d2": 1}}
    assert decide(scores([0.5] * 3), scores([0.5] * 3), 1, 0.0, 0.95, 1, basis).reason.startswith("kept the base: +0.00 nDCG@10 on 3 judged (train split)")


def test_the_stage_publishes_a_model_that_retrieves_the_held_out_queries_better(tmp_path, lists_dir):  # noqa: F811
    """Train on the held-out claims themselves (a leak, on purpose), each with an unrelated abstract as the teacher's
    top: the base never retrieves those, the query side learns them, and the gate sees it on every query."""
    work = workdir_with(lists_dir, tmp_path / "w")
    dev = [json.loads(line) for line in (work / "dev.jsonl").read_text().splitlines()]
    dev = [{**row, "doc_ids": [row["doc_ids"][-1], *row["doc_ids"][:-1]]} for row in dev]  # scores stay 1, .5, .2, 0
    (work / "dev.jsonl").write_text("".join(json.dumps(row) + "\n" for row in dev))
    (work / "train.jsonl").write_text("".join(json.dumps({**row, "qid": f"leak-{row['qid']}"}) + "\n" for row in dev))
    counts = train(work, tiny(mode="query", learning_rate=3e-4, max_steps=None, epochs=20, gate_min_queries=4, eval_steps=100))
    summary = json.loads((work / "train.json").read_text())
    assert summary["gate"]["trained"] > summary["gate"]["base"] and summary["gate"]["ci_low"] > 0, summary["gate"]
    assert counts["published"] == "trained" and summary["verdict"].startswith("Publish gate: published the trained model: +")
