"""The run report: ``report.md`` and a self-contained ``report.html`` with PNG plots.

Everything comes from the work directory's own records: stage manifests (``stages/*.json``),
``audit.json``, ``train.json`` / ``train_log.json`` and ``eval/*.json``. Sections whose records
are missing are left out, so a report can be written after any stage.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specialize.artifacts import write_text
from specialize.counts import by_type
from specialize.errors import SpecializeError
from specialize.records import Audit, Evaluation, Selection, TrainLog, TrainSummary
from specialize.workdir import Workdir

Row = Sequence[Any]


@dataclass
class Section:
    """One report section: a title, prose, a table, and the PNG plot it shows (if any)."""

    title: str
    text: str = ""
    header: Row = ()
    rows: Sequence[Row] = field(default_factory=list)
    plot: Path | None = None


def _counts(work: Workdir, stage: str) -> Mapping[str, Any]:
    manifest = work.manifest(stage)
    return manifest["counts"] if manifest else {}


def funnel(workdir: Path) -> tuple[list[str], list[str], dict[str, list[int]]]:
    """(query types, steps, counts per type per step): generated → cleaned → round trip → labelled → train.

    With the user's own queries: from the file → mined (no round trip) → labelled → train.
    """
    generate, mine, label = (_counts(Workdir(workdir), stage) for stage in ("generate", "mine", "label"))
    types = list(by_type(generate))
    if "user_queries" in generate:
        first = [("from your queries file", generate, "kept"), ("mined (no round trip)", mine, "kept")]
    else:
        first = [("generated", generate, "generated"), ("after cleaning", generate, "kept"), ("after round trip", mine, "kept")]
    steps = [*first, ("after teacher filters", label, "kept"), ("train", label, "train")]
    present = [(name, by_type(counts), key) for name, counts, key in steps if counts]
    return types, [name for name, _, _ in present], {t: [int(table.get(t, {}).get(key, 0)) for _, table, key in present] for t in types}


def _funnel_section(workdir: Path, plots: Path) -> Section | None:
    types, steps, per_type = funnel(workdir)
    if not types:
        return None
    rows = [[t, *per_type[t]] for t in types] + [["all", *(sum(per_type[t][i] for t in types) for i in range(len(steps)))]]
    user = _counts(Workdir(workdir), "generate").get("user_queries")
    if user is not None:
        text = (f"{user:,} queries came from your queries file (`generate.queries`), without a source passage: the round-trip "
                "filter (mine) and `require_source_first` (label) stepped aside for them; the teacher's other filters still apply.")
    else:
        passages = _counts(Workdir(workdir), "prepare").get("passages")
        text = f"{passages:,} passages were sampled; one query was asked of each." if passages else ""
    return Section("Funnel: queries kept after each filter", text, ["type", *steps], rows, _bar_plot(plots / "funnel.png", steps, per_type, "queries"))


def _documents_section(workdir: Path) -> Section | None:
    """Document files → pages → passages per format, and the files skipped, when the corpus was a folder of files."""
    counts = _counts(Workdir(workdir), "prepare")
    formats = by_type(counts)
    if not formats:
        return None
    rows = [[kind, row.get("files", 0), row.get("pages", 0) or "", row.get("passages", 0)] for kind, row in formats.items()]
    skipped = {key.removeprefix("skipped_"): n for key, n in counts.items() if key.startswith("skipped_") and n}
    text = ("Files skipped (`--skip-bad`): " + ", ".join(f"{n:,} {reason.replace('_', ' ')}" for reason, n in skipped.items()) + ". "
            if skipped else "")
    text += "Passages are counted before deduplication; pages only for PDF."
    return Section("Documents: files, pages and passages per format", text, ["format", "files", "pages", "passages"], rows)


def _audit_section(workdir: Path, plots: Path) -> Section | None:
    report = Audit.read_if_there(Workdir(workdir).audit)
    if report is None:
        return None
    rows, bars = [], {}
    for part, title in ((report.synthetic, "synthetic queries (source passage)"), (report.qrels, "human queries (qrels)")):
        if part is not None:
            name = f"{title}, {part.split} split" if part.split else title
            rows.append([name, part.queries, part.teacher["ndcg@10"], part.student["ndcg@10"], part.teacher["mrr@10"], part.student["mrr@10"]])
            bars[name] = [part.teacher["ndcg@10"], part.student["ndcg@10"]]
    text = f"Teacher `{report.teacher}` vs student `{report.student}`, reranking the same candidates."
    if report.warning:
        text += f"\n\n**Warning:** {report.warning}"
    header = ["queries", "n", "teacher nDCG@10", "student nDCG@10", "teacher MRR@10", "student MRR@10"]
    return Section("Teacher audit", text, header, rows, _bar_plot(plots / "audit.png", ["teacher", "student"], bars, "nDCG@10"))


def _selection_section(workdir: Path) -> Section | None:
    """The teacher candidates (``teacher.json``): each one's nDCG@10 on the choice's queries, the choice and its margin."""
    selection = Selection.read_if_there(Workdir(workdir).selection)
    if selection is None:
        return None
    if not selection.candidates:
        return Section("Teacher selection", f"{selection.reason}.")
    measured = selection.measured_columns()
    rows = [[f"`{row['teacher']}`", row["fit_ndcg@10"], *(row[name] for name in measured)] for row in selection.candidates]
    costs = "; ".join(f"`{m['teacher']}`: {m.get('skipped') or m['cost_probe']}" for m in selection.members)
    text = (f"{selection.reason}.\n\nFusion weights chosen on {selection.fit_queries} {selection.basis} queries (fit), the margin "
            f"measured on the other {selection.measure_queries}. Cost probes: {costs}.")
    return Section("Teacher selection", text, ["candidate", "fit nDCG@10", *(f"{name} nDCG@10" for name in measured)], rows)


def result_lines(workdir: Path) -> list[str]:
    """The run's result in plain sentences: on each test set the base and the published model side by side, then what
    was published and why (the publish gate's verdict, or why nothing was trained). Empty before ``train``."""
    work = Workdir(workdir)
    summary = TrainSummary.read_if_there(work.summary)
    if summary is None:
        return []
    published = work.model(summary.output).resolve()
    lines = []
    for path in work.eval_files():
        result = Evaluation.read(path)
        base = result.models.get(summary.student)
        mine = next((row for name, row in result.models.items() if Path(name).resolve() == published), None)
        if base is None or mine is None:
            continue
        where = f"{result.dataset} {result.split} ({result.queries:,} queries)"
        before, after = 100 * base.metric("ndcg@10"), 100 * mine.metric("ndcg@10")
        if summary.published == "base":
            lines.append(f"{where}: nDCG@10 {before:.2f}; the published model is the base {summary.student}, unchanged.")
        else:
            lines.append(f"{where}: nDCG@10 {before:.2f} for the base {summary.student}, {after:.2f} specialized ({after - before:+.2f}).")
    return [*lines, summary.verdict]


def _result_section(workdir: Path) -> Section | None:
    lines = result_lines(workdir)
    return Section("Result", "\n\n".join(lines)) if lines else None


def _gate_section(workdir: Path) -> Section | None:
    """The publish decision first: the gate's held-out evidence and its one-line verdict (or why nothing was trained)."""
    summary = TrainSummary.read_if_there(Workdir(workdir).summary)
    if summary is None:
        return None
    gate = summary.gate
    if gate is None:
        return Section("Publish decision", summary.verdict)
    header = [f"{gate.basis} queries", "base nDCG@10", "trained nDCG@10", "Δ", f"{100 * gate.confidence:.0f}% CI", "published"]
    row = [gate.queries, round(gate.base, 2), round(gate.trained, 2), f"{gate.delta:+.2f}", f"{gate.ci_low:+.2f} … {gate.ci_high:+.2f}", summary.published]
    return Section("Publish gate", summary.verdict, header, [row])


def training_facts(summary: TrainSummary) -> list[list[Any]]:
    """The training table's rows: every fact of ``train.json``, a nested one (the gate's, the hyperparameters) as
    ``<group> · <fact>``; the teacher selection has a section of its own."""
    rows: list[list[Any]] = []
    for key, value in summary.model_dump(exclude={"selection"}).items():
        if isinstance(value, dict):
            rows += [[f"{key} · {inner}", item] for inner, item in value.items() if not isinstance(item, (dict, list))]
        elif not isinstance(value, list):
            rows.append([key, value])
    return rows


def _training_section(workdir: Path, plots: Path) -> Section | None:
    work = Workdir(workdir)
    summary, log = TrainSummary.read_if_there(work.summary), TrainLog.read(work.train_log).root if work.train_log.is_file() else []
    if summary is None and not log:
        return None
    rows = training_facts(summary) if summary is not None else []
    plot = None
    if log:
        train = [(entry["step"], entry["loss"]) for entry in log if "loss" in entry]
        dev = [(entry["step"], entry["eval_loss"]) for entry in log if "eval_loss" in entry]
        plot = _line_plot(plots / "loss.png", {"training loss": train, "dev loss": dev}, "step", "loss")
    return Section("Training", "", ["fact", "value"], rows, plot)


def _evaluation_sections(workdir: Path, plots: Path) -> list[Section]:
    sections = []
    for path in Workdir(workdir).eval_files():
        result = Evaluation.read(path)
        if not result.models:
            continue
        models = {_model_label(name, workdir): row for name, row in result.models.items()}
        rows = [[name, *(round(100 * row.metric(m), 2) for m in ("ndcg@10", "recall@100", "mrr@10"))] for name, row in models.items()]
        bars = {name: [100 * row.metric("ndcg@10"), 100 * row.metric("recall@100")] for name, row in models.items()}
        text = f"{result.dataset}, {result.split} split: {result.queries:,} queries over {result.docs:,} documents."
        plot = _bar_plot(plots / f"eval-{path.stem}.png", ["nDCG@10", "Recall@100"], bars, "score")
        sections.append(Section(f"Evaluation: {result.dataset}", text, ["model", "nDCG@10", "Recall@100", "MRR@10"], rows, plot))
    return sections


def _model_label(name: str, workdir: Path) -> str:
    """A model's name, relative to the work directory when it was trained there."""
    path = Path(name)
    return str(path.relative_to(workdir)) if path.is_relative_to(workdir) else name


def _bar_plot(path: Path, groups: Sequence[str], series: Mapping[str, Sequence[float]], ylabel: str) -> Path:
    """Grouped bars: one group per entry of ``groups``, one bar per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(groups) + 2), 3.4))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(np.arange(len(groups)) + i * width - 0.4 + width / 2, values, width, label=name)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, ncols=min(3, len(series)))
    return _save(fig, path)


def _line_plot(path: Path, series: Mapping[str, Sequence[tuple[float, float]]], xlabel: str, ylabel: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    for name, points in series.items():
        if points:
            ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cell(value: Any) -> str:
    """A table cell: floats to two decimals (a small one, such as a learning rate, in two significant digits), ints with commas."""
    if isinstance(value, float):
        return f"{value:,.2f}" if value == 0 or abs(value) >= 0.01 else f"{value:.2g}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def to_markdown(title: str, sections: Sequence[Section], root: Path) -> str:
    out = [f"# {title}", ""]
    for section in sections:
        out += [f"## {section.title}", ""]
        if section.text:
            out += [section.text, ""]
        if section.rows:
            out.append("| " + " | ".join(map(str, section.header)) + " |")
            out.append("|" + "---|" * len(section.header))
            out += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in section.rows]
            out.append("")
        if section.plot:
            out += [f"![{section.title}]({section.plot.relative_to(root).as_posix()})", ""]
    return "\n".join(out)


def to_html(title: str, sections: Sequence[Section]) -> str:
    """One HTML file with the plots inlined as base64 PNGs, so it can be mailed or attached alone."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        for paragraph in filter(None, section.text.split("\n\n")):
            body.append(f"<p>{html.escape(paragraph).replace('**Warning:**', '<strong class=warn>Warning:</strong>')}</p>")
        if section.rows:
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in section.header)
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>" for row in section.rows)
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
        if section.plot:
            data = base64.b64encode(section.plot.read_bytes()).decode()
            body.append(f'<img alt="{html.escape(section.title)}" src="data:image/png;base64,{data}">')
    style = ("body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}"
             "td:first-child,th:first-child{text-align:left}img{max-width:100%}.warn{color:#b00}")
    head = f"<meta charset=utf-8><title>{html.escape(title)}</title><style>{style}</style>"
    return f"<!doctype html><html><head>{head}</head><body>{''.join(body)}</body></html>\n"


def report(workdir: Path) -> tuple[Path, Path]:
    """Write ``report.md``, ``report/*.png`` and ``report.html`` for a work directory; return the two report paths."""
    workdir = Path(workdir)
    work = Workdir(workdir)
    if not work.manifest_paths() and not work.eval_files():
        raise SpecializeError(f"{workdir}: not a work directory (no stages/ or eval/ inside); run a stage first")
    plots = work.plots
    candidates = [_result_section(workdir), _gate_section(workdir), _documents_section(workdir), _funnel_section(workdir, plots),
                  _selection_section(workdir), _audit_section(workdir, plots), _training_section(workdir, plots), *_evaluation_sections(workdir, plots)]
    sections = [section for section in candidates if section is not None]
    title = f"specialize report: {workdir.resolve().name}"
    md, page = work.report, work.report_html
    write_text(md, to_markdown(title, sections, workdir))
    write_text(page, to_html(title, sections))
    return md, page
