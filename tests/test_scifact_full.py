"""The correctness bar: the bundled MiniLM on the full SciFact test split reproduces MTEB."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from specialize.config import EvaluateConfig
from specialize.encoder import CPU_DEFAULT_BACKEND, resolve_backend
from specialize.stages.evaluate import evaluate

RESULTS = Path(__file__).parents[1] / "benchmarks" / "results"


def test_cpu_default_is_the_measured_winner():
    measured = json.loads((RESULTS / "cpu_backends.json").read_text())
    assert CPU_DEFAULT_BACKEND == measured["default"]
    chosen = next(row for row in measured["rows"] if row["backend"] == measured["default"])
    assert chosen["ndcg_loss"] < measured["max_ndcg_loss"]


@pytest.mark.slow
def test_minilm_reproduces_mteb_on_scifact(tmp_path):
    """MTEB reports nDCG@10 = 64.51 for all-MiniLM-L6-v2 on SciFact; the bar is +-0.3 on the default backend."""
    result = evaluate(EvaluateConfig(models=["bundled:minilm"], datasets=["demo:scifact"]), tmp_path)["scifact"]
    row = result["models"]["bundled:minilm"]
    assert result["queries"] == 300 and result["docs"] == 5183
    assert row["backend"] == resolve_backend("auto")
    assert abs(100 * row["ndcg@10"] - 64.51) <= 0.3
    assert row["recall@100"] > 0.9
