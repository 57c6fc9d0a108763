"""Teacher audit: the metric by hand, the sample, both audits on a real SciFact slice, the CLI warning."""

from __future__ import annotations

import json
import shutil

from test_cli import cli
from test_label import _copy_inputs, workdir  # noqa: F401  (the module fixture)

from specialize.config import Config, LabelConfig, load_config
from specialize.datasets import judged_queries
from specialize.metrics import rerank_metrics
from specialize.records import AuditPart
from specialize.stages.label.audit import audit_warning, seeded_sample
from specialize.stages.label.stage import label


def test_rerank_metrics_by_hand():
    qrels = {"q1": {"b": 1}, "q2": {"x": 1}}
    lists = {"q1": ["a", "b", "c"], "q2": ["x", "y"]}
    scores = {"q1": [0.9, 0.5, 0.1], "q2": [0.2, 0.2]}  # q2 ties: candidate order decides
    # q1: relevant at rank 2 -> nDCG 1/log2(3), RR 1/2; q2: rank 1 -> 1 and 1.
    expected_ndcg = (1 / __import__("math").log2(3) + 1) / 2
    assert rerank_metrics(qrels, lists, scores) == {"ndcg@10": round(100 * expected_ndcg, 2), "mrr@10": 75.0}


def test_sample_is_seeded_and_order_free():
    qids = [f"q{i}" for i in range(50)]
    chosen = seeded_sample(qids, 10, seed=1)
    assert len(chosen) == 10 and chosen == seeded_sample(list(reversed(qids)), 10, seed=1)
    assert set(seeded_sample(qids[:25] + ["extra"], 50, seed=1)) == set(qids[:25] + ["extra"])
    assert chosen != seeded_sample(qids, 10, seed=2)


def test_the_audit_warns_only_when_the_teacher_loses():
    synthetic = AuditPart(queries=40, teacher={"ndcg@10": 71.0}, student={"ndcg@10": 64.5})
    assert audit_warning("bm25", "bundled:minilm", synthetic, None) is None
    qrels = AuditPart(split="train", queries=30, teacher={"ndcg@10": 60.0}, student={"ndcg@10": 62.5})
    warning = audit_warning("bm25", "bundled:minilm", synthetic, qrels)  # judged queries outrank synthetic ones
    assert warning is not None
    assert "does not beat" in warning and "60.00 vs 62.50" in warning and "30 judged queries (train split)" in warning


def test_audit_on_a_real_slice_with_qrels(workdir, tmp_path, scifact_slice):  # noqa: F811
    _copy_inputs(workdir, tmp_path)
    assert judged_queries(str(scifact_slice))[0] == "test"  # the slice has no dev or train qrels
    assert judged_queries(str(tmp_path / "corpus.jsonl")) is None  # a plain file: nothing to audit on
    config = load_config(None, {"workdir": str(tmp_path), "prepare.corpus": str(scifact_slice), "label.audit_queries": 12,
                                "mine.retrievers": ["bm25"], "mine.top_k": 20, "mine.depth": 20, "mine.roundtrip_depth": 20})
    counts = label(tmp_path, LabelConfig(teacher="bm25", backend="torch", audit_queries=12), audit_with=config)
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["teacher"] == "bm25" and report["student"] == "bundled:minilm"
    for basis in ("synthetic", "qrels"):
        assert report[basis]["queries"] == 12
        assert all(0 <= report[basis][w][m] <= 100 for w in ("teacher", "student") for m in ("ndcg@10", "mrr@10"))
        assert counts[f"audit_{basis}_teacher_ndcg@10"] == report[basis]["teacher"]["ndcg@10"]
    assert report["qrels"]["split"] == "test"
    # The candidates are BM25's own top 20, so BM25 as teacher keeps mine's order: its audit is that order's quality.
    assert report["synthetic"]["teacher"]["ndcg@10"] > 50
    assert (report["warning"] is None) == (report["qrels"]["teacher"]["ndcg@10"] > report["qrels"]["student"]["ndcg@10"])
    # audit: never -> no audit.json left behind from an earlier run.
    label(tmp_path, LabelConfig(teacher="bm25"), audit_with=Config.model_validate({**config.model_dump(), "label": {"audit": "never"}}))
    assert not (tmp_path / "audit.json").exists()


def test_cli_audit_warns_when_the_teacher_is_the_student(workdir, tmp_path):  # noqa: F811
    for name in ("corpus.jsonl", "queries.jsonl", "candidates.jsonl"):
        shutil.copyfile(workdir / name, tmp_path / name)
    args = ("label", "--workdir", str(tmp_path), "--audit", "--teacher", "bi-encoder:bundled:minilm",
            "--set", "label.audit_queries=10", "--set", "label.backend=torch")
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert "teacher audit" in result.stdout and "synthetic (source passage)" in result.stdout
    # The same model as teacher and student ties: no better, so the user is warned before training.
    assert "WARNING:" in result.stderr and "does not beat the student" in result.stderr
    manifest = json.loads((tmp_path / "stages" / "label.json").read_text())
    assert "audit.json" in manifest["outputs"]
