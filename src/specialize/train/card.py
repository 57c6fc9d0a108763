"""The model card: our facts (base model, mode, teacher, loss, data, the publish gate, evaluation) atop sentence-transformers' card."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from specialize.artifacts import write_text
from specialize.selection import measured_columns

HEADING = "## Specialized with `specialize`"
MODES = {
    "full": "full fine-tune (queries and documents)",
    "query": "query side only: the document encoder is the unchanged base model",
}


def card_section(summary: Mapping[str, Any], workdir: Path) -> str:
    """Markdown for the facts of one training run (``summary`` is what ``train.json`` holds)."""
    hyper = summary["hyperparameters"]
    loss_args = ", ".join(f"{key}={value}" for key, value in summary["loss_parameters"].items())
    caching = f"; gradient caching in mini-batches of {hyper['mini_batch_size']}" if hyper["mini_batch_size"] else ""
    best = summary["best_dev_loss"]
    facts = [
        ("Base model", f"`{summary['student']}` ({summary['parameters'] / 1e6:.1f}M parameters)"),
        ("Teacher", f"`{summary['teacher']}`" if summary["teacher"] else "unknown (no labels.jsonl scored by the configured label.teacher)"),
        ("Mode", MODES[summary.get("mode", "full")]),
        ("Loss", f"`{summary['loss']}` ({loss_args})"),
        ("Learning rate", f"{hyper['learning_rate']:g} ({hyper['learning_rate_source']})"),
        ("Batch", f"{hyper['batch_size']} queries × {hyper['passages_per_query']} passages per device, {hyper['devices']} device(s){caching}"),
        ("Schedule", f"{summary['steps']} optimizer steps ({summary['epochs_run']:.2f} epochs); AdamW, warmup {hyper['warmup_steps']} steps then "
                     f"linear decay, weight decay {hyper['weight_decay']}, gradient clip {hyper['max_grad_norm']}"),
        ("Max length", f"query {hyper['query_max_length']}, passage {hyper['passage_max_length']} tokens"),
        ("Precision", hyper["precision"]),
        ("Best dev loss", f"{best:.4f} (step {summary['best_step']})" if best is not None else "no dev set"),
    ]
    lines = [HEADING, "", summary["verdict"], "", "| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in facts)]
    if summary.get("mode") == "query" and summary.get("published") == "trained":
        lines += query_side_usage(summary["student"])
    lines += ["", "### Training data", "", "| query type | train | dev |", "|---|---:|---:|"]
    types = sorted(set(summary["train_types"]) | set(summary["dev_types"]))
    lines += [f"| {kind} | {summary['train_types'].get(kind, 0):,} | {summary['dev_types'].get(kind, 0):,} |" for kind in types]
    lines += [f"| **total** | {summary['train_queries']:,} | {summary['dev_queries']:,} |"]
    lines += selection_table(summary.get("selection"))
    lines += gate_table(summary["gate"])
    lines += evaluation_table(workdir)
    return "\n".join(lines) + "\n"


def kept_base_section(summary: Mapping[str, Any], workdir: Path) -> str:
    """Markdown for a run that did not train: no teacher beat the student, so this is the base model."""
    lines = [HEADING, "", summary["verdict"], "", "| | |", "|---|---|", f"| Base model | `{summary['student']}` (unchanged) |",
             f"| Best teacher found | `{summary['selection']['chosen']}` |"]
    lines += selection_table(summary["selection"])
    lines += evaluation_table(workdir)
    return "\n".join(lines) + "\n"


def selection_table(selection: Mapping[str, Any] | None) -> list[str]:
    """Markdown lines: the teacher candidates, the choice and its margin over the student (``teacher.json``)."""
    if not selection:
        return []
    if not selection["candidates"]:
        return ["", "### Teacher selection", "", f"{selection['reason']}."]
    measured = measured_columns(selection)
    lines = ["", "### Teacher selection", "",
             f"Each candidate reranked the same candidate lists of {selection['fit_queries'] + selection['measure_queries']} "
             f"{selection['basis']} queries; fusion weights were chosen on {selection['fit_queries']} of them (fit), the margin "
             f"over the student measured on the other {selection['measure_queries']}. {selection['reason']}.", "",
             "| candidate | fit nDCG@10 | " + " | ".join(f"{name} nDCG@10" for name in measured) + " |", "|---|---:|" + "---:|" * len(measured)]
    lines += [f"| `{row['teacher']}` | {row['fit_ndcg@10']:.2f} | " + " | ".join(f"{row[name]:.2f}" for name in measured) + " |"
              for row in selection["candidates"]]
    lines += ["", "| member | cost probe | estimated s | scored in s |", "|---|---|---:|---:|"]
    lines += [f"| `{m['teacher']}` | {m['cost_probe']} | {m['estimated_seconds']:,} | {m.get('seconds', m.get('skipped'))} |"
              for m in selection["members"]]
    return lines


def gate_table(gate: Mapping[str, Any]) -> list[str]:
    """Markdown lines: the publish gate's evidence and decision."""
    confidence = f"{100 * gate['confidence']:.0f}% CI"
    basis = gate.get("basis", "held-out")
    relevant = ("the corpus's judgments (qrels) say which passages are relevant" if basis.startswith("judged")
                else "a query's relevant passage is the one it was written from")
    return [
        "", "### Publish gate", "",
        f"Base and trained model retrieve the {basis} queries (never trained on) from the whole corpus; {relevant}. "
        "The trained model is published only when the lower bound of "
        f"the paired bootstrap {confidence} on the nDCG@10 gain is above {gate['margin']:+.2f}.", "",
        f"| {basis} queries | base nDCG@10 | trained nDCG@10 | Δ | {confidence} | decision |", "|---:|---:|---:|---:|---|---|",
        f"| {gate['queries']} | {gate['base']:.2f} | {gate['trained']:.2f} | {gate['delta']:+.2f} | "
        f"{gate['ci_low']:+.2f} … {gate['ci_high']:+.2f} | {gate['decision']} |",
    ]


def query_side_usage(base: str) -> list[str]:
    """Markdown lines: which vectors changed in a query-side model, and how to use it."""
    return [
        "", "### Query side only", "",
        f"Only the query encoder was trained. Documents go through `{base}` unchanged, so `encode_document` gives the "
        "base model's vectors bit for bit: an index built with the base stays valid, and only queries use the new encoder.",
        "", "```python", "from sentence_transformers import SentenceTransformer", "",
        'model = SentenceTransformer("path/to/this/folder")',
        'query_vectors = model.encode_query(["your question"])  # the specialized query encoder',
        'doc_vectors = model.encode_document(["a passage"])  # identical to the base model\'s: keep your index', "```",
    ]


def evaluation_table(workdir: Path) -> list[str]:
    """Markdown lines for every model in ``<workdir>/eval/*.json``; none when nothing was evaluated."""
    rows = []
    for path in sorted((workdir / "eval").glob("*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        for model, metrics in result.get("models", {}).items():
            scores = " | ".join(f"{100 * metrics[key]:.2f}" for key in ("ndcg@10", "recall@100", "mrr@10"))
            rows.append(f"| {result['dataset']} ({result['split']}) | {model} | {scores} |")
    if not rows:
        return []
    header = ["", "### Evaluation", "", "| dataset | model | nDCG@10 | Recall@100 | MRR@10 |", "|---|---|---:|---:|---:|"]
    return header + rows


def add_to_card(folder: Path, section: str) -> None:
    """Put ``section`` into the folder's README.md before its first ``## `` heading (after the title), or at its end."""
    readme = folder / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    at = text.find("\n## ") + 1 or len(text)
    write_text(readme, f"{text[:at]}{section}\n{text[at:]}")
