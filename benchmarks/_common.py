"""Helpers shared by the benchmark scripts: peak memory, a result file, a printed table."""

from __future__ import annotations

import json
import platform
import resource
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    import os

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def save(name: str, payload: dict) -> Path:
    """Write ``benchmarks/results/<name>.json`` with the machine facts and a timestamp."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "when": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def print_table(title: str, rows: list[dict]) -> None:
    table = Table(title=title)
    for column in rows[0]:
        table.add_column(column, justify="left" if isinstance(rows[0][column], str) else "right")
    for row in rows:
        table.add_row(*(f"{v:,.2f}" if isinstance(v, float) else str(v) for v in row.values()))
    Console(width=160).print(table)  # wide enough that headers are not cut in logs


def per_query_ndcg(run_file: Path, qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """nDCG@10 of each judged query in a TREC run file (0 for a query without results)."""
    from specialize.metrics import per_query_ndcg as ndcg_of_run

    run: dict[str, dict[str, float]] = {}
    for line in run_file.read_text().splitlines():
        qid, _, doc, _, score, _ = line.split()
        run.setdefault(qid, {})[doc] = float(score)
    return ndcg_of_run(qrels, run)


def paired_t(scores: dict[str, float], base: dict[str, float]) -> tuple[float, float]:
    """Mean per-query difference of ``scores`` over ``base`` (same queries) and its paired t-test p-value (1 when equal)."""
    from scipy.stats import ttest_rel

    qids = sorted(base)
    delta = [scores[q] - base[q] for q in qids]
    p = float(ttest_rel([scores[q] for q in qids], [base[q] for q in qids]).pvalue) if any(delta) else 1.0
    return sum(delta) / len(delta), p
