"""`specialize demo` as a new user meets it: a fresh work directory, an empty embedding cache, the machine's cores.

Runs the CLI's ``specialize demo`` in a child process (what ``make demo`` runs after the set-up) with
``SPECIALIZE_CACHE`` pointing to an empty folder, the bundled model files linked in (a fresh machine gets
them from ``make install``; nothing else is reused: no corpus embedding, no file hash). Then reads what the run
wrote: its wall time, each stage's seconds (manifests), the base and the published model on SciFact's 300
test claims (``eval/scifact.json``, with a paired t-test over the claims), and the publish gate's decision and
numbers (``train.json``). Writes ``results/demo.json`` (the last run; earlier runs are kept under ``history``).

    python benchmarks/demo.py [--set prepare.max_passages=300 ...] [--label "what changed"]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, paired_t, per_query_ndcg, save  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run_demo(work: Path, cache: Path, sets: list[str]) -> float:
    """``specialize demo`` in a child process with an empty cache; its wall seconds. Its output goes to ``work/demo.log``."""
    (cache / "models").symlink_to(Path.home() / ".cache" / "specialize" / "models")
    command = [str(Path(sys.executable).with_name("specialize")), "demo", "--workdir", str(work), *(arg for value in sets for arg in ("--set", value))]
    started = time.perf_counter()
    with open(work.parent / "demo.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "SPECIALIZE_CACHE": str(cache)})
    return time.perf_counter() - started


def read_results(work: Path, wall: float) -> dict:
    """demo.json's record from the work directory the demo wrote."""
    from specialize.datasets import load_qrels, resolve_dataset

    stages = {path.stem: json.loads(path.read_text())["seconds"] for path in sorted((work / "stages").glob("*.json"))}
    summary = json.loads((work / "train.json").read_text())
    evaluation = json.loads((work / "eval" / "scifact.json").read_text())
    base_name, published_name = list(evaluation["models"])
    base, published = evaluation["models"][base_name], evaluation["models"][published_name]
    qrels = load_qrels(resolve_dataset("demo:scifact"), "test")
    delta, p = paired_t(per_query_ndcg(work / published["run_file"], qrels), per_query_ndcg(work / base["run_file"], qrels))
    gate = summary["gate"]
    metrics = lambda row: {"ndcg@10": round(100 * row["ndcg@10"], 2), "recall@100": round(100 * row["recall@100"], 2)}  # noqa: E731
    return {
        "wall_s": round(wall, 1), "stages": stages,
        "base": metrics(base), "published": summary["published"],
        "specialized": {**metrics(published), "delta": round(100 * delta, 2), "p_value": round(p, 4),
                        "train_queries": summary["train_queries"], "mode": summary["mode"]},
        "gate": {"delta": round(gate["delta"], 2), "ci_low": round(gate["ci_low"], 2), "ci_high": round(gate["ci_high"], 2),
                 "queries": gate["queries"], "reason": gate["reason"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="a demo setting, as `specialize demo --set`")
    parser.add_argument("--label", default="", help="what this run changed, saved with it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="specialize-demo-") as folder:
        work, cache = Path(folder) / "work", Path(folder) / "cache"
        cache.mkdir()
        wall = run_demo(work, cache, args.sets)
        result = {"label": args.label, "sets": args.sets, "cpus": os.cpu_count(), **read_results(work, wall)}
        log = (Path(folder) / "demo.log").read_text()
    path = RESULTS / "demo.json"
    history = json.loads(path.read_text()).get("history", []) if path.is_file() else []
    previous = json.loads(path.read_text()) if path.is_file() else None
    if previous is not None:
        history.append({key: value for key, value in previous.items() if key not in ("history", "benchmark", "when", "machine")})
    save("demo", {**result, "history": history})
    print(log[-3000:])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
