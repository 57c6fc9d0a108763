"""The report: every section built from the work directory's records, numbers carried through."""

from __future__ import annotations

import base64

import pytest
from test_cli import assert_one_line_error, cli

from specialize.records import Audit, AuditPart, Evaluation, Gate, Manifest, ModelScores, TrainLog, TrainSummary
from specialize.stages.report import funnel, report
from specialize.workdir import Workdir


def _manifest(work: Workdir, stage: str, counts: dict) -> None:
    Manifest(stage=stage, version="test", config_hash="0", inputs={}, outputs={}, counts=counts, seconds=1.0,
             finished_at="2026-12-03T10:00:00+0000").write(work.manifest_path(stage))


@pytest.fixture
def workdir(tmp_path):
    """A work directory written through the records the stages write (a field the product does not write is refused)."""
    work = Workdir(tmp_path)
    _manifest(work, "prepare", {"passages": 40})
    _manifest(work, "generate", {"generated": 40, "kept": 33, "generated_now": 40, "by_type": {
        "claim": {"generated": 20, "kept": 18}, "title": {"generated": 20, "kept": 15}}})
    _manifest(work, "mine", {"kept": 27, "by_type": {"claim": {"kept": 16}, "title": {"kept": 11}}})
    _manifest(work, "label", {"kept": 19, "by_type": {"claim": {"kept": 12, "train": 11}, "title": {"kept": 7, "train": 6}}})
    Audit(teacher="bm25", student="bundled:minilm", warning="the teacher (bm25) does not beat it", qrels=None,
          synthetic=AuditPart(queries=27, teacher={"ndcg@10": 81.25, "mrr@10": 77.5}, student={"ndcg@10": 83.5, "mrr@10": 80.0})).write(work.audit)
    gate = Gate(queries=52, basis="held-out", base=71.4, trained=74.9, delta=3.5, ci_low=0.8, ci_high=6.1, confidence=0.95, margin=0.0,
                decision="trained", reason="published the trained model: +3.50 nDCG@10 on 52 held-out queries, 95% CI +0.80 … +6.10")
    TrainSummary(student="bundled:minilm", parameters=22_713_216, trained_parameters=22_713_216, teacher="bm25", mode="query", loss="listwise",
                 output="models/student", steps=6, published="trained", gate=gate, verdict=f"Publish gate: {gate.reason}.", train_queries=17,
                 dev_queries=52, train_types={"claim": 11, "title": 6}, dev_types={"claim": 30, "title": 22},
                 hyperparameters={"learning_rate": 1e-4, "batch_size": 16}).write(work.summary)
    TrainLog([{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.1}, {"step": 2, "eval_loss": 2.3}, {"step": 4, "eval_loss": 2.2}]).write(work.train_log)
    rows = {"bundled:minilm": (0.6451, 0.925, 0.6047), str(tmp_path / "models" / "student"): (0.6612, 0.93, 0.62),
            str(tmp_path / "variants" / "type-claim" / "models" / "student"): (0.6533, 0.92, 0.61)}
    Evaluation(dataset="scifact", split="test", queries=300, docs=5183, models={
        name: ModelScores(**{"ndcg@10": n, "recall@100": r, "mrr@10": m}, seconds=1.0, backend="torch", max_seq_length=256, run_file="runs/x.trec")
        for name, (n, r, m) in rows.items()}).write(work.eval_file("scifact"))
    return tmp_path


def test_funnel_reads_each_stage(workdir):
    types, steps, per_type = funnel(workdir)
    assert types == ["claim", "title"]
    assert steps == ["generated", "after cleaning", "after round trip", "after teacher filters", "train"]
    assert per_type == {"claim": [20, 18, 16, 12, 11], "title": [20, 15, 11, 7, 6]}


def test_report_holds_the_workdir_numbers(workdir):
    md_path, html_path = report(workdir)
    md = md_path.read_text()
    assert md.split("\n## ")[1].startswith("Result\n\nscifact test (300 queries): nDCG@10 64.51 for the base bundled:minilm, 66.12 specialized (+1.61).")
    for fragment in ("| claim | 20 | 18 | 16 | 12 | 11 |", "| all | 40 | 33 | 27 | 19 | 17 |", "40 passages were sampled",
                     "| synthetic queries (source passage) | 27 | 81.25 | 83.50 | 77.50 | 80.00 |", "**Warning:** the teacher (bm25)",
                     "| 52 | 71.40 | 74.90 | +3.50 | +0.80 … +6.10 | trained |", "Publish gate: published the trained model: +3.50",
                     "| mode | query |", "| gate · base | 71.40 |", "| gate · trained | 74.90 |", "| hyperparameters · learning_rate | 0.0001 |",
                     "| bundled:minilm | 64.51 | 92.50 | 60.47 |", "| models/student | 66.12 | 93.00 | 62.00 |",
                     "| variants/type-claim/models/student | 65.33 | 92.00 | 61.00 |",
                     "![Training](report/loss.png)", "300 queries over 5,183 documents"):
        assert fragment in md, fragment
    for png in ("funnel.png", "audit.png", "loss.png", "eval-scifact.png"):
        assert (workdir / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = html_path.read_text()
    images = page.count('src="data:image/png;base64,')
    assert images == 4 and "report/" not in page  # self-contained: no file links
    first = page.split('src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(first) == (workdir / "report" / "funnel.png").read_bytes()
    assert "<td>66.12</td>" in page and "Warning:" in page


def test_report_of_a_partial_workdir_and_the_cli(workdir, tmp_path):
    for name in ("train.json", "train_log.json", "audit.json"):
        (workdir / name).unlink()
    md, _ = report(workdir)
    assert "Training" not in md.read_text() and "Funnel" in md.read_text()
    result = cli("report", str(workdir))
    assert result.returncode == 0 and "report.html" in result.stdout
    assert_one_line_error(cli("report", str(tmp_path / "nothing")), "not a work directory")


def test_a_record_that_is_not_what_its_writer_writes_is_one_line_naming_the_file(workdir):
    (workdir / "train.json").write_text('{"student": "bundled:minilm", "published": "trained"}')  # fields missing
    assert_one_line_error(cli("report", str(workdir)), "train.json: not a valid TrainSummary record", "Field required")
