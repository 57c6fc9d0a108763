"""Labeling: filter/normalization/split math by hand; real teachers on a SciFact slice; resume; the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_cli import assert_one_line_error, cli

from specialize.config import LabelConfig, MineConfig
from specialize.errors import SpecializeError
from specialize.records import read_corpus
from specialize.stages.label.stage import dev_split, filter_and_split, label, list_filter, normalize, score_bounds, top_list
from specialize.stages.mine import mine
from specialize.stages.prepare import prepare
from specialize.teachers import BiEncoderTeacher, EnsembleTeacher, load_teacher, minmax_scaled, parse_teacher, percentile_ranks, score_many


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- pure math ------------------------------------------------------------------------------


def test_normalization_primitives_by_hand():
    assert score_bounds(np.arange(11.0), 10, 90) == (1.0, 9.0)
    assert normalize([-1, 0, 4.5, 9, 10], 0, 9).tolist() == [0, 0, 0.5, 1, 1]
    assert normalize([1, 2, 3], 2, 2).tolist() == [0, 1, 1]  # degenerate bounds
    assert top_list(["a", "b", "c", "d"], [0.1, 0.9, 0.5, 0.9], 3) == (["b", "d", "c"], [0.9, 0.9, 0.5])
    config = LabelConfig(min_list_size=3)
    assert list_filter(["a", "b", "c"], [1, 3, 3], "c", config) is None  # a tie for first counts as first
    assert list_filter(["a", "b", "c"], [1, 3, 2], "c", config) == "source_not_first"
    assert list_filter(["a", "b", "c"], [1, 3, 2], "z", config) == "source_not_first"
    assert list_filter(["a", "b"], [3, 1], "a", config) == "short_list"
    assert list_filter(["a", "b"], [1, 3], "a", LabelConfig(min_list_size=2, require_source_first=False)) is None


def test_dev_split_is_seeded_sized_and_order_free():
    qids = [f"q{i}" for i in range(100)]
    dev = dev_split(qids, 0.1, 42)
    assert len(dev) == 10 and dev == dev_split(list(reversed(qids)), 0.1, 42)
    assert dev != dev_split(qids, 0.1, 7)
    assert dev_split(qids, 0.0, 42) == set()
    assert len(dev_split(qids, 0.1, 42, min_queries=30)) == 30 and dev_split(qids, 0.1, 42, min_queries=30) >= dev
    assert len(dev_split(qids[:20], 0.1, 42, min_queries=50)) == 10  # never more than half
    assert dev_split(qids, 0.0, 42, min_queries=50) == set()  # no dev set asked for


def test_dev_split_keeps_the_queries_of_one_passage_on_one_side():
    qids = [f"q{i:03d}" for i in range(100)]
    groups = {qid: f"p{i // 2}" for i, qid in enumerate(qids)}  # two queries per source passage
    dev = dev_split(qids, 0.2, 42, groups=groups)
    assert 20 <= len(dev) <= 21 and dev == dev_split(list(reversed(qids)), 0.2, 42, groups=groups)
    assert all((qid in dev) == (groups[qid] in {groups[held] for held in dev}) for qid in qids)  # never a passage on both sides
    assert dev_split(qids[::2], 0.2, 42, groups=groups) == dev_split(qids[::2], 0.2, 42)  # one query per passage: the plain draw


def test_filter_normalize_split_by_hand(tmp_path):
    labels = [
        ("q1", ["a", "b", "c"], [1, 3, 2], "b", "claim"),  # kept: top 3/9
        ("q2", ["d", "e", "f"], [5, 4, 0], "d", "claim"),  # kept: top 5/9
        ("q3", ["g", "h"], [9, 1], "g", "claim"),  # short list
        ("q4", ["i", "j", "k"], [2, 6, 1], "i", "keywords"),  # source not first
        ("q5", ["l", "m", "n"], [2, 1, 1], "l", "claim"),  # top 2/9 < median of (3, 5, 2)/9
    ]
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps({"qid": q, "doc_ids": d, "scores": s}) + "\n" for q, d, s, _, _ in labels))
    queries = {q: {"qid": q, "text": f"text {q}", "type": t, "source_id": src} for q, _, _, src, t in labels}
    config = LabelConfig(list_size=2, min_list_size=3, low_percentile=0, high_percentile=100, drop_below_percentile=50, dev_fraction=0.5)
    counts = filter_and_split(tmp_path, queries, config)

    # All 14 raw scores span 0..9, so lo = 0, hi = 9; tops 3/9, 5/9, 2/9 -> floor (median) 3/9 drops q5.
    assert (counts["score_low"], counts["score_high"], counts["top_score_floor"]) == (0.0, 9.0, round(3 / 9, 6))
    # Held out before the filters: the kept q1, q2 and the sourced q4, q5 whose teacher disagreed (not the short q3).
    dev = dev_split(["q1", "q2", "q4", "q5"], 0.5, 42)
    assert counts["labelled"] == 5 and counts["kept"] == 2 and counts["dev"] == len(dev) == 2
    assert counts["train"] == len({"q1", "q2"} - dev) and "q3" not in dev
    assert counts["dropped_short_list"] == counts["dropped_source_not_first"] == counts["dropped_low_top_score"] == 1
    claim, keywords = counts["by_type"]["claim"], counts["by_type"]["keywords"]
    assert keywords["dropped_source_not_first"] == 1 and claim["dropped_low_top_score"] == 1
    assert claim["kept"] == 2 and keywords["kept"] == 0
    rows = {row["qid"]: row for row in _lines(tmp_path / "train.jsonl") + _lines(tmp_path / "dev.jsonl")}
    assert rows["q1"] == {"qid": "q1", "query": "text q1", "type": "claim", "doc_ids": ["b", "c"], "scores": pytest.approx([3 / 9, 2 / 9])}
    assert rows["q2"]["doc_ids"] == ["d", "e"] and rows["q2"]["scores"] == pytest.approx([5 / 9, 4 / 9])
    assert {row["qid"] for row in _lines(tmp_path / "dev.jsonl")} == dev
    assert {row["qid"] for row in _lines(tmp_path / "train.jsonl")} == {"q1", "q2"} - dev


# --- teacher specs and the ensemble ---------------------------------------------------------


def test_percentile_ranks_and_weighted_ensemble():
    assert percentile_ranks([10, 30, 20]).tolist() == [0, 1, 0.5]
    assert percentile_ranks([1, 1, 2]).tolist() == [0.25, 0.25, 1.0]
    assert percentile_ranks([7]).tolist() == [1.0]

    class Fixed:
        def __init__(self, name, scores):
            self.name, self.scores = name, scores

        def score(self, query, passages):
            return self.scores

    ensemble = EnsembleTeacher([(Fixed("a", [1, 100, 50]), 3.0), (Fixed("b", [0.3, 0.1, 0.2]), 1.0)], "percentile")
    # a: percentiles (0, 1, .5) weight 3; b: (1, 0, .5) weight 1 -> (1/4, 3/4, 1/2): scales do not matter.
    assert ensemble.score("q", ["x", "y", "z"]) == pytest.approx([0.25, 0.75, 0.5])
    # minmax keeps the margins: a (0, 1, 49/99) weight 3, b (1, 0, .5) weight 1.
    minmax = EnsembleTeacher(ensemble.members)  # the default
    assert minmax.score("q", ["x", "y", "z"]) == pytest.approx([0.25, 0.75, (3 * 49 / 99 + 0.5) / 4])
    assert minmax_scaled([2, 2]).tolist() == [0.5, 0.5] and minmax_scaled([3]).tolist() == [1.0]


def test_teacher_spec_syntax():
    assert str(parse_teacher("bm25")) == "bm25"
    assert str(parse_teacher("cross-encoder:some/model")) == "cross-encoder:some/model"
    spec = parse_teacher("ensemble:bm25=2,bi-encoder:bundled:minilm")
    assert [(str(m), w) for m, w in spec.members] == [("bm25", 2.0), ("bi-encoder:bundled:minilm", 1.0)]
    assert str(parse_teacher(["bm25", "bi-encoder:bundled:minilm=0.5"])) == "ensemble:bm25=1,bi-encoder:bundled:minilm=0.5"
    assert LabelConfig().teacher == "auto"  # chosen by measurement (test_selection.py)
    for bad, fragment in [
        ("cross-encoderr:x", "did you mean 'cross-encoder:x'?"),
        ("bundled:minilm", "did you mean 'bi-encoder:bundled:minilm'"),
        ("bi-encoder:", "needs a model"),
        ("ensemble:bm25=0", "positive weight"),
        ("ensemble:bm25=x", "positive weight"),
        ("ensemble:ensemble:bm25", "cannot contain another ensemble"),
        ("magic", "use bm25, bi-encoder:<model>"),
    ]:
        with pytest.raises(SpecializeError, match=fragment.replace("?", r"\?")) as info:
            parse_teacher(bad)
        assert "\n" not in str(info.value)


def test_cross_encoder_teacher_with_a_locally_built_model(tmp_path):
    from sentence_transformers import CrossEncoder

    from specialize.models import resolve_model

    path = tmp_path / "tiny-ce"
    CrossEncoder(resolve_model("bundled:minilm"), num_labels=1).save(str(path))
    teacher = load_teacher(f"cross-encoder:{path}", LabelConfig(batch_size=2))
    passages = ["short one", "a considerably longer passage about protein folding in yeast cells", "mid length text here"]
    scores = teacher.score("protein folding", passages)
    assert len(scores) == 3 and all(isinstance(s, float) and np.isfinite(s) for s in scores)
    assert teacher.score("protein folding", passages) == scores
    # Length sorting only changes the order of work, never which score goes to which passage.
    direct = teacher.model.predict([("protein folding", p) for p in passages], batch_size=1)
    assert scores == pytest.approx(np.asarray(direct).ravel().tolist(), abs=1e-5)
    assert teacher.score("q", []) == []
    # One batched call over several queries gives each query's own scores.
    items = [("protein folding", passages), ("yeast", passages[:2]), ("empty", [])]
    assert teacher.score_many(items) == [pytest.approx(teacher.score(q, p), abs=1e-5) for q, p in items]


# --- real teachers on a SciFact slice -------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, scifact_slice, scifact_claims):
    """prepare on the slice; its test claims as queries (source = first relevant doc); BM25 candidates (top 20)."""
    work = tmp_path_factory.mktemp("label")
    prepare(scifact_slice, work, max_passages=20)
    queries = [dict(query) for query in scifact_claims]
    (work / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    mine(work, MineConfig(retrievers=["bm25"], top_k=20, depth=20, roundtrip_depth=20))
    return work


def _copy_inputs(source, target):
    for name in ("corpus.jsonl", "queries.jsonl", "candidates.jsonl"):
        shutil.copyfile(source / name, target / name)


def _source_first_rate(teacher, work):
    ids, texts = read_corpus(work / "corpus.jsonl")
    text = dict(zip(ids, texts))
    queries = {q["qid"]: q for q in _lines(work / "queries.jsonl")}
    records = _lines(work / "candidates.jsonl")
    items = [(queries[r["qid"]]["text"], [text[d] for d in r["doc_ids"]]) for r in records]
    firsts = [
        record["doc_ids"][int(np.argmax(scores))] == queries[record["qid"]]["source_id"]
        for record, scores in zip(records, score_many(teacher, items))
    ]
    return sum(firsts) / len(firsts), len(firsts)


def test_bm25_and_bi_encoder_teachers_rank_real_sources_first(workdir):
    corpus = read_corpus(workdir / "corpus.jsonl")
    bm25 = load_teacher("bm25", corpus=corpus)
    rate, n = _source_first_rate(bm25, workdir)
    assert n >= 25 and rate > 0.6
    # The candidates are BM25's own top 20, so the teacher must agree with mine's order.
    record = _lines(workdir / "candidates.jsonl")[0]
    text = dict(zip(*corpus))
    query = {q["qid"]: q["text"] for q in _lines(workdir / "queries.jsonl")}[record["qid"]]
    scores = bm25.score(query, [text[d] for d in record["doc_ids"]])
    assert scores == sorted(scores, reverse=True) and scores[0] > 0

    biencoder = load_teacher("bi-encoder:bundled:minilm", LabelConfig(backend="torch"), corpus=corpus)
    rate, _ = _source_first_rate(biencoder, workdir)
    assert rate > 0.6
    # Cached corpus embeddings and on-the-fly passage encoding give the same cosines.
    uncached = BiEncoderTeacher(biencoder.encoder)
    passages = [text[d] for d in record["doc_ids"][:5]]
    assert biencoder.score(query, passages) == pytest.approx(uncached.score(query, passages), abs=1e-4)


FUSION = "ensemble:bm25=1,bi-encoder:bundled:minilm=1"


def test_bm25_minilm_fusion_labels_the_slice(workdir, tmp_path):
    _copy_inputs(workdir, tmp_path)
    counts = label(tmp_path, LabelConfig(teacher=FUSION, backend="torch"))
    labels = _lines(tmp_path / "labels.jsonl")
    candidates = _lines(tmp_path / "candidates.jsonl")
    assert [r["qid"] for r in labels] == [r["qid"] for r in candidates]
    assert all(r["doc_ids"] == c["doc_ids"] and len(r["scores"]) == len(r["doc_ids"]) for r, c in zip(labels, candidates))
    assert all(0 <= s <= 1 for r in labels for s in r["scores"])  # percentile ranks
    train, dev = _lines(tmp_path / "train.jsonl"), _lines(tmp_path / "dev.jsonl")
    assert counts["train"] == len(train) and counts["dev"] == len(dev) and counts["labelled"] == len(labels)
    assert counts["kept"] >= 10 and len(train) <= counts["kept"] <= len(train) + len(dev)  # dev is drawn before the filters
    assert counts["kept"] + sum(counts[f"dropped_{r}"] for r in ("source_not_first", "short_list", "low_top_score")) == len(labels)
    for row in train + dev:
        assert set(row) == {"qid", "query", "type", "doc_ids", "scores"} and len(row["doc_ids"]) == 20
        assert row["scores"] == sorted(row["scores"], reverse=True) and 0 <= row["scores"][-1] <= row["scores"][0] <= 1
    # Only a filter changed: the labels are reused, not scored again.
    again = label(tmp_path, LabelConfig(teacher=FUSION, backend="torch", drop_below_percentile=0), teacher=object())  # type: ignore[arg-type]
    assert again["labels_reused"] == 1 and again["dropped_low_top_score"] == 0
    # The labels as written, not only their key: truncated, or one score edited, they are scored again.
    whole = (tmp_path / "labels.jsonl").read_bytes()
    for damaged in (whole[: len(whole) // 3], whole.replace(b"0.", b"9.", 1)):
        (tmp_path / "labels.jsonl").write_bytes(damaged)
        rescored = label(tmp_path, LabelConfig(teacher=FUSION, backend="torch", drop_below_percentile=0))
        assert rescored["labels_reused"] == 0 and (tmp_path / "labels.jsonl").read_bytes() == whole


def test_resume_after_a_kill_matches_an_uninterrupted_run(workdir, tmp_path):
    corpus = read_corpus(workdir / "corpus.jsonl")
    bm25 = load_teacher("bm25", corpus=corpus)
    config = LabelConfig(teacher="bm25", min_list_size=10, query_block=4)

    class Killable:
        """The BM25 teacher, killed (as by Ctrl-C) when asked for more than ``limit`` queries."""

        name = "bm25"

        def __init__(self, limit=None):
            self.limit, self.calls = limit, 0

        def score(self, query, passages):
            if self.calls == self.limit:
                raise KeyboardInterrupt
            self.calls += 1
            return bm25.score(query, passages)

    whole, broken = tmp_path / "whole", tmp_path / "broken"
    for folder in (whole, broken):
        folder.mkdir()
        _copy_inputs(workdir, folder)
    expected = label(whole, config, teacher=bm25)

    with pytest.raises(KeyboardInterrupt):
        label(broken, config, teacher=Killable(limit=10))  # dies inside the third block of 4
    assert not (broken / "labels.jsonl").exists()
    (partial,) = broken.glob(".labels.jsonl.*.partial")
    assert len(partial.read_text().splitlines()) == 8
    with open(partial, "a") as handle:
        handle.write('{"qid": "torn", "doc_ids": ["a"')  # a write cut off by the kill

    teacher = Killable()
    resumed = label(broken, config, teacher=teacher)
    qids = [r["qid"] for r in _lines(broken / "labels.jsonl")]
    assert teacher.calls == len(qids) - 8 and resumed["labels_resumed"] == 8
    assert len(qids) == len(set(qids)) == len(_lines(workdir / "candidates.jsonl"))
    for name in ("labels.jsonl", "train.jsonl", "dev.jsonl"):
        assert (broken / name).read_bytes() == (whole / name).read_bytes(), name
    assert {k: v for k, v in resumed.items() if k != "labels_resumed"} == {k: v for k, v in expected.items() if k != "labels_resumed"}
    assert not list(broken.glob(".labels.jsonl.*.partial"))


# --- the command line -----------------------------------------------------------------------


def test_cli_labels_skips_and_reports_one_line_errors(workdir, tmp_path):
    for name in ("corpus.jsonl", "queries.jsonl"):
        shutil.copyfile(workdir / name, tmp_path / name)
    assert_one_line_error(cli("label", "--workdir", str(tmp_path)), "candidates.jsonl: not found", "specialize mine")
    shutil.copyfile(workdir / "candidates.jsonl", tmp_path / "candidates.jsonl")
    assert_one_line_error(cli("label", "--workdir", str(tmp_path), "--teacher", "bm52"), "did you mean 'bm25'")

    args = ("label", "--workdir", str(tmp_path), "--teacher", "bm25", "--set", "label.dev_fraction=0.2", "--set", "label.dev_min_queries=0")
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert "done in" in result.stdout and "dropped_source_not_first" in result.stdout
    manifest = json.loads((tmp_path / "stages" / "label.json").read_text())
    counts = manifest["counts"]
    assert set(manifest["outputs"]) == {"labels.jsonl", "train.jsonl", "dev.jsonl"}
    assert counts["train"] == len(_lines(tmp_path / "train.jsonl")) and counts["dev"] == len(_lines(tmp_path / "dev.jsonl"))
    eligible = counts["labelled"] - counts["dropped_short_list"]  # every generated query has a source
    assert counts["dev"] == round(0.2 * eligible) and counts["kept"] >= 10 and counts["train"] <= counts["kept"]
    again = cli(*args)
    assert again.returncode == 0 and "skipped" in again.stdout
