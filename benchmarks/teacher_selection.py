"""The teacher chosen by measurement (``label.teacher: auto``) on SciFact and MED, against today's default teacher.

For one dataset, on the committed generated-query fixture (``benchmarks/data/<dataset>/queries.jsonl``):

1. prepare, mine and label with ``label.teacher: auto`` and the product's selection defaults (the student, BM25 and
   MPNet, their fusions; MPNet skipped where its measured cost exceeds ``label.max_teacher_hours``). The choice reads
   synthetic queries and, for SciFact, its train claims; never a test claim.
2. Every candidate of ``teacher.json`` (each member alone and its best fusion) reranks the test queries' candidate
   lists (mined exactly as for a synthetic query): the test score, read once, for this table only. How well do the
   synthetic (and human) rankings of the candidates agree with the test ranking? Spearman's rho and Kendall's tau.
3. The same query-side recipe trained on the labels of the chosen teacher and of today's default teacher
   (``ensemble:bm25=1,bi-encoder:bundled:minilm=1``, labelled in a second work directory), both published whatever the
   gate says (the chosen one trained even without headroom, to show what the stop avoided); full-corpus test
   nDCG@10 with a paired t-test against the base and against each other. ``product`` says what ``specialize run``
   publishes: the base when the selection finds no headroom, else what the gate decides.

    python benchmarks/teacher_selection.py med
    python benchmarks/teacher_selection.py scifact

Each run replaces its dataset's entry in ``results/teacher_selection.json`` and rewrites ``teacher_selection.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, machine, paired_t, per_query_ndcg, save  # noqa: E402
from query_side import RECIPES, SOURCES, labelled_workdir, train_recipe  # noqa: E402

DEFAULT_TEACHER = "ensemble:bm25=1,bi-encoder:bundled:minilm=1"
RECIPE = "query-listwise-t0.05"
"""The query-side recipe of query_side.py's generated rows (lr 1e-4, 3 epochs, teacher temperature 0.05)."""


def test_rerank(cfg, selection: dict, extra: tuple[str, ...] = ()) -> dict[str, float]:
    """Each candidate's (and each ``extra`` fusion of the same members') mean nDCG@10 reranking the test queries' mined
    candidate lists (0-100)."""
    import numpy as np

    from specialize.records import read_corpus
    from specialize.stages.label.audit import judged_lists
    from specialize.stages.label.selection import Basis, fused_ndcg
    from specialize.teachers import NORMALIZERS, load_teacher, parse_teacher, score_many

    ids, texts = read_corpus(Path(cfg.workdir) / "corpus.jsonl")
    split, queries, qrels, lists = judged_lists(cfg, ids, texts, 10**6, splits=("test",))
    qids = sorted(lists)
    basis = Basis("test", {q: queries[q] for q in qids}, {q: qrels[q] for q in qids}, lists, [], qids)
    text = dict(zip(ids, texts))
    members = [m["teacher"] for m in selection["members"] if "skipped" not in m]
    normalize = NORMALIZERS[cfg.label.ensemble_normalization]
    scores = []
    for member in members:
        teacher = load_teacher(member, cfg.label, (ids, texts), cfg.prefixes)
        raw = score_many(teacher, [(queries[q], [text[d] for d in lists[q]]) for q in qids])
        scores.append({q: normalize(s) for q, s in zip(qids, raw)})
    out = {}
    for name in [row["teacher"] for row in selection["candidates"]] + list(extra):
        spec = parse_teacher(name)
        weights = dict((str(m), w) for m, w in spec.members) if spec.kind == "ensemble" else {str(spec): 1.0}
        vector = [weights.get(member, 0.0) for member in members]
        out[name] = round(float(np.mean(list(fused_ndcg(basis, scores, vector, qids).values()))), 2)
    return out


def rank_agreement(first: list[float], second: list[float]) -> dict[str, float | None]:
    """Spearman's rho and Kendall's tau of two scorings of the same candidates (None below 3 candidates)."""
    from scipy.stats import kendalltau, spearmanr

    if len(first) < 3:
        return {"spearman": None, "kendall": None}
    return {"spearman": round(float(spearmanr(first, second).statistic), 3), "kendall": round(float(kendalltau(first, second).statistic), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(SOURCES))
    parser.add_argument("--workdir", type=Path, default=None, help="default: benchmarks/.teacher-selection-work/<dataset>")
    args = parser.parse_args()

    from specialize.config import EvaluateConfig
    from specialize.datasets import load_dataset
    from specialize.stages.evaluate import evaluate
    from specialize.workdir import Workdir

    root = args.workdir or Path(__file__).parent / ".teacher-selection-work" / args.dataset
    started = time.perf_counter()
    cfg, counts = labelled_workdir(args.dataset, "generated", root / "auto", {"label.teacher": "auto"})
    label_seconds = round(time.perf_counter() - started, 1)
    selection = json.loads((root / "auto" / "teacher.json").read_text())
    default_cfg, _ = labelled_workdir(args.dataset, "generated", root / "default", {"label.teacher": DEFAULT_TEACHER})
    test = test_rerank(cfg, selection, extra=(DEFAULT_TEACHER,))

    measured = [name for name in selection["candidates"][0] if name not in ("teacher", "members", "fit_ndcg@10")]
    rows = [{"teacher": row["teacher"], "chosen": row["teacher"] == selection["chosen"], "fit": row["fit_ndcg@10"],
             **{name: row[name] for name in measured}, "test (rerank)": test[row["teacher"]]} for row in selection["candidates"]]
    agreement = {name: rank_agreement([row[name] for row in rows], [row["test (rerank)"] for row in rows]) for name in ["fit", *measured]}

    trained = {
        "chosen": train_recipe(cfg, f"{RECIPE}-chosen", {**RECIPES[RECIPE], "force_train": True}),
        "default": train_recipe(default_cfg, f"{RECIPE}-default", RECIPES[RECIPE]),
    }
    models = {"base": cfg.train.student, **{name: str(folder / cfg.train.output) for name, (folder, _) in trained.items()}}
    results = evaluate(EvaluateConfig(models=list(models.values()), datasets=[SOURCES[args.dataset]]), root / "auto", cfg.prefixes)
    dataset = load_dataset(SOURCES[args.dataset], "test")
    runs = Workdir(root / "auto")
    ndcg = {name: per_query_ndcg(runs.run_file(dataset.name, model), dataset.qrels) for name, model in models.items()}
    metrics = next(iter(results.values()))["models"]
    training = []
    for name, model in models.items():
        delta, p = paired_t(ndcg[name], ndcg["base"])
        versus, p_versus = paired_t(ndcg[name], ndcg["default"])
        summary = json.loads((trained[name][0] / "train.json").read_text()) if name in trained else None
        training.append({"model": name, "teacher": summary["teacher"] if summary else "-", "train_queries": summary["train_queries"] if summary else 0,
                         "ndcg@10": round(100 * metrics[model]["ndcg@10"], 2), "delta_vs_base": round(100 * delta, 2), "p_vs_base": round(p, 4),
                         "delta_vs_default": round(100 * versus, 2), "p_vs_default": round(p_versus, 4),
                         "gate": summary["gate"]["decision"] if summary else "-"})
    chosen_gate = training[1]["gate"]
    product = "base (no headroom: not trained)" if selection["headroom"] is False else ("trained" if chosen_gate == "trained" else "base (gate)")
    payload = {"selection": {k: selection[k] for k in ("chosen", "basis", "fit_queries", "measure_queries", "margin", "ci_low", "ci_high",
                                                       "headroom", "reason", "members", "bases")},
               "candidates": rows, "default_test_rerank": test[DEFAULT_TEACHER], "rank_agreement_with_test": agreement,
               "training": training, "product_publishes": product,
               "label_seconds": label_seconds, "stage_counts": counts, "machine": machine()}
    record(args.dataset, payload)


def record(dataset: str, payload: dict) -> None:
    """Replace this dataset's entry in teacher_selection.json; rewrite teacher_selection.md from all entries."""
    path = RESULTS / "teacher_selection.json"
    previous = json.loads(path.read_text()) if path.is_file() else {"datasets": {}}
    previous["datasets"][dataset] = payload
    save("teacher_selection", {"datasets": previous["datasets"]})
    lines = ["# The teacher chosen by measurement", "", "Generated by `benchmarks/teacher_selection.py`: candidates reranking the same mined lists "
             "(nDCG@10, 0-100); `fit` is the half the choice was made on; `test (rerank)` is read once, for this table only. "
             "Training: the query-side recipe `query-listwise-t0.05` on each teacher's labels, full-corpus test nDCG@10, paired t-tests.", ""]
    for name, entry in previous["datasets"].items():
        header = list(entry["candidates"][0])
        lines += [f"## {name}", "", entry["selection"]["reason"] + ".", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(v) for v in row.values()) + " |" for row in entry["candidates"]]
        lines += ["", f"The default teacher `{DEFAULT_TEACHER}` reranks test at {entry.get('default_test_rerank', '-')}.",
                  "", "Skipped: " + ("; ".join(f"`{m['teacher']}` {m['skipped']}" for m in entry["selection"]["members"] if "skipped" in m) or "none"),
                  "", "Rank agreement with test: " + ", ".join(f"{basis}: rho {v['spearman']}, tau {v['kendall']}"
                                                             for basis, v in entry["rank_agreement_with_test"].items()), ""]
        header = list(entry["training"][0])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(v) for v in row.values()) + " |" for row in entry["training"]]
        lines += ["", f"`specialize run` publishes: {entry['product_publishes']}.", ""]
    (RESULTS / "teacher_selection.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
