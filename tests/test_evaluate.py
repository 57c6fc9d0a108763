"""Evaluation: metrics against hand-computed values, search against brute force, a real MiniLM run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from specialize import encoder as encoder_module
from specialize.config import EvaluateConfig
from specialize.datasets import load_dataset
from specialize.encoder import encode_corpus, load_encoder
from specialize.metrics import score_run
from specialize.retrieval import search
from specialize.stages.evaluate import evaluate, write_trec_run


def test_metrics_match_hand_computation():
    qrels = {"q1": {"d1": 1, "d2": 1}, "q2": {"d3": 2}}
    run = {"q1": {"d1": 0.9, "d4": 0.8, "d2": 0.7}, "q2": {"d5": 0.9, "d3": 0.5}}
    ndcg_q1 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    ndcg_q2 = (2 / math.log2(3)) / 2
    metrics = score_run(qrels, run)
    assert metrics["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2, abs=1e-4)
    assert metrics["recall@100"] == pytest.approx(1.0)
    assert metrics["mrr@10"] == pytest.approx((1 + 1 / 2) / 2)


def test_unanswered_judged_query_counts_as_zero():
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    assert score_run(qrels, {"q1": {"d1": 1.0}})["ndcg@10"] == pytest.approx(0.5)


def test_mrr_only_looks_at_the_top_ten():
    run = {"q1": {f"x{i}": 1 - i / 100 for i in range(10)} | {"d1": 0.5}}
    assert score_run({"q1": {"d1": 1}}, run)["mrr@10"] == 0.0


def test_search_matches_brute_force_and_drops_identical_ids():
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(500, 16)).astype(np.float32)
    queries = rng.normal(size=(70, 16)).astype(np.float32)
    doc_ids = [str(i) for i in range(500)]
    query_ids = [str(i) for i in range(70)]
    run = search(queries, docs, query_ids, doc_ids, top_k=10, ignore_identical_ids=False)
    expected = np.argsort(-(queries @ docs.T), axis=1)[:, :10]
    for qid, row in zip(query_ids, expected):
        assert list(run[qid]) == [doc_ids[i] for i in row]
    kept = search(queries, docs, query_ids, doc_ids, top_k=10, ignore_identical_ids=True)
    assert all(qid not in hits and len(hits) == 10 for qid, hits in kept.items())


def test_trec_run_format(tmp_path):
    write_trec_run(tmp_path / "r.trec", {"q": {"a": 0.1, "b": 0.9}}, "tag")
    assert (tmp_path / "r.trec").read_text().splitlines() == ["q Q0 b 1 0.900000 tag", "q Q0 a 2 0.100000 tag"]


@pytest.fixture(scope="module")
def minilm():
    return load_encoder("bundled:minilm", backend="torch")


def test_real_minilm_on_a_scifact_slice(tmp_path, scifact_slice, minilm, monkeypatch):
    config = EvaluateConfig(models=["bundled:minilm"], datasets=[str(scifact_slice)], backend="torch")
    results = evaluate(config, tmp_path)
    row = results[scifact_slice.name]["models"]["bundled:minilm"]
    assert row["ndcg@10"] > 0.6 and row["recall@100"] > 0.9  # real retrieval on an easy slice
    saved = json.loads((tmp_path / "eval" / f"{scifact_slice.name}.json").read_text())
    assert saved["models"]["bundled:minilm"]["ndcg@10"] == row["ndcg@10"] and saved["queries"] == 30
    lines = (tmp_path / row["run_file"]).read_text().splitlines()
    assert len(lines) == 30 * 100 and lines[0].split()[1:4:2] == ["Q0", "1"]

    # The same numbers again, and the corpus comes from the cache: no passage is encoded.
    calls = []
    original = encoder_module.Encoder.encode
    monkeypatch.setattr(encoder_module.Encoder, "encode", lambda self, texts, batch_size, kind: calls.append(kind) or original(self, texts, batch_size, kind))
    again = evaluate(config, tmp_path)[scifact_slice.name]["models"]["bundled:minilm"]
    assert again["ndcg@10"] == row["ndcg@10"] and calls == ["query"]


@pytest.mark.slow  # a kill and a resume, with the kills of test_kills.py
def test_killed_encode_resumes_from_its_last_chunk(scifact_slice, minilm, monkeypatch, tmp_path):
    monkeypatch.setenv("SPECIALIZE_CACHE", str(tmp_path))
    monkeypatch.setattr(encoder_module, "CHUNK_DOCS", 64)
    dataset = load_dataset(str(scifact_slice))
    ids, texts = dataset.doc_ids, dataset.doc_texts
    encoded = []
    original = encoder_module.Encoder.encode

    def failing(self, texts, batch_size, kind):
        if len(encoded) >= 128:
            raise KeyboardInterrupt  # the user hits Ctrl-C after two chunks
        encoded.extend(texts)
        return original(self, texts, batch_size, kind)

    monkeypatch.setattr(encoder_module.Encoder, "encode", failing)
    with pytest.raises(KeyboardInterrupt):
        encode_corpus(minilm, ids, texts, batch_size=32)
    assert len(encoded) == 128

    encoded.clear()
    monkeypatch.setattr(encoder_module.Encoder, "encode",
                        lambda self, texts, batch_size, kind: encoded.extend(texts) or original(self, texts, batch_size, kind))
    resumed = encode_corpus(minilm, ids, texts, batch_size=32)
    assert len(encoded) == len(texts) - 128  # only the unfinished chunks were encoded
    fresh = original(minilm, texts, 32, "passage")
    assert np.allclose(resumed, fresh, atol=1e-4)  # batch padding differs: float noise only


def test_a_dataset_folder_with_a_space_is_evaluated_through_the_stage(tmp_path, scifact_slice):
    """The pipeline names the eval file the stage writes (it once slugged the name and the stage did not: a folder
    with a space failed after the whole evaluation)."""
    import shutil

    from specialize.config import load_config
    from specialize.pipeline import run_stage
    from specialize.records import Evaluation
    from specialize.workdir import Workdir

    source = tmp_path / "my corpus"
    shutil.copytree(scifact_slice, source)
    cfg = load_config(None, {"workdir": str(tmp_path / "work"), "evaluate.models": ["bundled:minilm"], "evaluate.datasets": [str(source)],
                             "evaluate.backend": "torch"})
    manifest = run_stage(cfg, "evaluate")
    work = Workdir(cfg.workdir)
    assert list(manifest["outputs"]) == ["eval/my_corpus.json"] and work.eval_file("my corpus").is_file()
    result = Evaluation.read(work.eval_file("my corpus"))
    assert result.dataset == "my corpus" and result.models["bundled:minilm"].metric("ndcg@10") > 0.6
    assert manifest["counts"]["my corpus:bundled:minilm:ndcg@10"] == round(100 * result.models["bundled:minilm"].metric("ndcg@10"), 2)
    assert (work.root / result.models["bundled:minilm"].run_file) == work.run_file("my corpus", "bundled:minilm")
    assert run_stage(cfg, "evaluate")["skipped"] is True  # its outputs are where the manifest says
