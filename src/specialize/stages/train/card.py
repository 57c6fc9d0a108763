"""The model card: our facts (base model, mode, teacher, loss, data, the publish gate, evaluation) atop sentence-transformers' card."""

from __future__ import annotations

from pathlib import Path

from specialize.artifacts import write_text
from specialize.records import Evaluation, Gate, Selection, TrainSummary
from specialize.workdir import Workdir

HEADING = "## Specialized with `specialize`"
MODES = {
    "full": "full fine-tune (queries and documents)",
    "query": "query side only: the document encoder is the unchanged base model",
}


def card_section(summary: TrainSummary, selection: Selection | None, work: Workdir) -> str:
    """Markdown for the facts of one training run (``summary``: what ``train.json`` will hold; ``selection``: ``teacher.json``)."""
    hyper, gate = summary.hyperparameters or {}, summary.gate
    assert gate is not None, "a trained run has a gate"
    loss_args = ", ".join(f"{key}={value}" for key, value in (summary.loss_parameters or {}).items())
    caching = f"; gradient caching in mini-batches of {hyper['mini_batch_size']}" if hyper["mini_batch_size"] else ""
    best = summary.best_dev_loss
    facts = [
        ("Base model", f"`{summary.student}` ({summary.parameters / 1e6:.1f}M parameters)"),
        ("Teacher", f"`{summary.teacher}`" if summary.teacher else "unknown (no labels.jsonl scored by the configured label.teacher)"),
        ("Mode", MODES[summary.mode]),
        ("Loss", f"`{summary.loss}` ({loss_args})"),
        ("Learning rate", f"{hyper['learning_rate']:g} ({hyper['learning_rate_source']})"),
        ("Batch", f"{hyper['batch_size']} queries × {hyper['passages_per_query']} passages per device, {hyper['devices']} device(s){caching}"),
        ("Schedule", f"{summary.steps} optimizer steps ({summary.epochs_run or 0:.2f} epochs); AdamW, warmup {hyper['warmup_steps']} steps then "
                     f"linear decay, weight decay {hyper['weight_decay']}, gradient clip {hyper['max_grad_norm']}"),
        ("Max length", f"query {hyper['query_max_length']}, passage {hyper['passage_max_length']} tokens"),
        ("Precision", hyper["precision"]),
        ("Best dev loss", f"{best:.4f} (step {summary.best_step})" if best is not None else "no dev set"),
    ]
    lines = [HEADING, "", summary.verdict, "", "| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in facts)]
    if summary.mode == "query" and summary.published == "trained":
        lines += query_side_usage(summary.student)
    lines += ["", "### Training data", "", "| query type | train | dev |", "|---|---:|---:|"]
    types = sorted(set(summary.train_types) | set(summary.dev_types))
    lines += [f"| {kind} | {summary.train_types.get(kind, 0):,} | {summary.dev_types.get(kind, 0):,} |" for kind in types]
    lines += [f"| **total** | {summary.train_queries:,} | {summary.dev_queries:,} |"]
    lines += selection_table(selection)
    lines += gate_table(gate)
    lines += evaluation_table(work)
    return "\n".join(lines) + "\n"


def kept_base_section(summary: TrainSummary, work: Workdir) -> str:
    """Markdown for a run that did not train: no teacher beat the student, so this is the base model."""
    assert summary.selection is not None, "only the teacher selection keeps the base untrained"
    lines = [HEADING, "", summary.verdict, "", "| | |", "|---|---|", f"| Base model | `{summary.student}` (unchanged) |",
             f"| Best teacher found | `{summary.selection.chosen}` |"]
    lines += selection_table(summary.selection)
    lines += evaluation_table(work)
    return "\n".join(lines) + "\n"


def selection_table(selection: Selection | None) -> list[str]:
    """Markdown lines: the teacher candidates, the choice and its margin over the student (``teacher.json``)."""
    if selection is None:
        return []
    if not selection.candidates:
        return ["", "### Teacher selection", "", f"{selection.reason}."]
    measured = selection.measured_columns()
    lines = ["", "### Teacher selection", "",
             f"Each candidate reranked the same candidate lists of {selection.fit_queries + selection.measure_queries} "
             f"{selection.basis} queries; fusion weights were chosen on {selection.fit_queries} of them (fit), the margin "
             f"over the student measured on the other {selection.measure_queries}. {selection.reason}.", "",
             "| candidate | fit nDCG@10 | " + " | ".join(f"{name} nDCG@10" for name in measured) + " |", "|---|---:|" + "---:|" * len(measured)]
    lines += [f"| `{row['teacher']}` | {row['fit_ndcg@10']:.2f} | " + " | ".join(f"{row[name]:.2f}" for name in measured) + " |"
              for row in selection.candidates]
    lines += ["", "| member | cost probe | estimated s | scored in s |", "|---|---|---:|---:|"]
    lines += [f"| `{m['teacher']}` | {m['cost_probe']} | {m['estimated_seconds']:,} | {m.get('seconds', m.get('skipped'))} |"
              for m in selection.members]
    return lines


def gate_table(gate: Gate) -> list[str]:
    """Markdown lines: the publish gate's evidence and decision."""
    confidence = f"{100 * gate.confidence:.0f}% CI"
    relevant = ("the corpus's judgments (qrels) say which passages are relevant" if gate.basis.startswith("judged")
                else "a query's relevant passage is the one it was written from")
    return [
        "", "### Publish gate", "",
        f"Base and trained model retrieve the {gate.basis} queries (never trained on) from the whole corpus; {relevant}. "
        "The trained model is published only when the lower bound of "
        f"the paired bootstrap {confidence} on the nDCG@10 gain is above {gate.margin:+.2f}.", "",
        f"| {gate.basis} queries | base nDCG@10 | trained nDCG@10 | Δ | {confidence} | decision |", "|---:|---:|---:|---:|---|---|",
        f"| {gate.queries} | {gate.base:.2f} | {gate.trained:.2f} | {gate.delta:+.2f} | {gate.ci_low:+.2f} … {gate.ci_high:+.2f} | {gate.decision} |",
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


def evaluation_table(work: Workdir) -> list[str]:
    """Markdown lines for every model in ``<workdir>/eval/*.json``; none when nothing was evaluated."""
    rows = []
    for path in work.eval_files():
        result = Evaluation.read(path)
        for model, scores in result.models.items():
            cells = " | ".join(f"{100 * scores.metric(key):.2f}" for key in ("ndcg@10", "recall@100", "mrr@10"))
            rows.append(f"| {result.dataset} ({result.split}) | {model} | {cells} |")
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
