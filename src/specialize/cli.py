"""The `specialize` command line: one command per stage, plus run, demo, evaluate and report.

Every command reads an optional YAML config (else the work directory's ``config.yaml``), applies its
flags and ``--set key=value`` overrides on top, and once it succeeds writes the resolved config to
``<workdir>/config.yaml``. A user mistake ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table

from specialize import __version__
from specialize.config import Config, load_config, parse_assignment, write_resolved
from specialize.counts import by_type, totals
from specialize.errors import SpecializeError
from specialize.progress import stderr
from specialize.progress import stdout as console

app = typer.Typer(
    help="Make an embedding model specialize in one corpus.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
BIGGER_PASSAGES = 1000
_VERBOSE = False

ConfigOption = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file.")]
WorkdirOption = Annotated[Optional[Path], typer.Option("--workdir", "-w", help="Work directory [default: specialize-work].")]
SetOption = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override any config key: --set train.epochs=2 (repeatable).")
]
ForceOption = Annotated[bool, typer.Option("--force", help="Rerun even if the stage is up to date.")]
ForceTrainOption = Annotated[Optional[bool], typer.Option(
    "--force-train", help="Train even when the teacher selection found no teacher that beats the student.",
)]
QueriesOption = Annotated[Optional[str], typer.Option(
    "--queries", help="Your own queries instead of generation: .jsonl, .csv/.tsv (id and text fields) or .txt (one per line); no LLM.",
)]


def _config(config: Path | None, workdir: Path | None, sets: list[str] | None, **flags: Any) -> Config:
    """Load the config, apply --set assignments, then explicit flags (dotted keys).

    Without ``--config`` a command starts from the work directory's ``config.yaml`` when there is one,
    so what earlier commands were told stays told. The resolved config is written back only when the
    command succeeds.
    """
    if config is None:
        remembered = (workdir if workdir is not None else Path(Config().workdir)) / "config.yaml"
        if remembered.is_file():
            config, workdir = remembered, remembered.parent
    overrides: dict[str, Any] = dict(parse_assignment(item) for item in sets or [])
    load_config(config, overrides)  # each --set checked as written, before a flag could replace what it names
    given = {"workdir": str(workdir) if workdir is not None else None, **flags}
    overrides.update({key: value for key, value in given.items() if value is not None})
    return load_config(config, overrides)


@app.command()
def prepare(
    corpus: Annotated[Optional[str], typer.Argument(help="Corpus: BEIR folder, JSONL/JSON, CSV/TSV, Parquet, .txt/.md folder, saved HF dataset, demo:<name>, beir:<name>.")] = None,
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
    max_passages: Annotated[Optional[int], typer.Option(help="Source passages to sample.")] = None,
    max_chars: Annotated[Optional[int], typer.Option(help="Cut source passages at this many characters.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Sampling seed.")] = None,
    skip_bad: Annotated[Optional[bool], typer.Option("--skip-bad", help="Skip and count bad records.")] = None,
    id_field: Annotated[Optional[str], typer.Option(help="Field holding the document id.")] = None,
    title_field: Annotated[Optional[str], typer.Option(help="Field holding the title.")] = None,
    text_field: Annotated[Optional[str], typer.Option(help="Field holding the text.")] = None,
    sets: SetOption = None,
    force: ForceOption = False,
) -> None:
    """Load, validate and deduplicate a corpus; sample the source passages."""
    cfg = _config(
        config, workdir, sets,
        **{"prepare.corpus": corpus, "prepare.max_passages": max_passages, "prepare.max_chars": max_chars,
           "prepare.seed": seed, "prepare.skip_bad": skip_bad, "prepare.id_field": id_field,
           "prepare.title_field": title_field, "prepare.text_field": text_field},
    )
    _stage(cfg, "prepare", force)


@app.command()
def evaluate(
    models: Annotated[Optional[list[str]], typer.Option("--model", "-m", help="Model: HF id, path or bundled:<alias> (repeatable).")] = None,
    datasets: Annotated[Optional[list[str]], typer.Option("--dataset", "-d", help="BEIR folder, demo:<name> or beir:<name> (repeatable).")] = None,
    split: Annotated[Optional[str], typer.Option(help="Qrels split to evaluate on.")] = None,
    backend: Annotated[Optional[str], typer.Option(help="auto, torch or torch-int8.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Encoding batch size.")] = None,
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
    sets: SetOption = None,
) -> None:
    """Compare models side by side on BEIR-format test sets (nDCG@10, Recall@100, MRR@10)."""
    from specialize.evaluate import evaluate as run_evaluate

    cfg = _config(
        config, workdir, sets,
        **{"evaluate.models": models or None, "evaluate.datasets": datasets or None, "evaluate.split": split,
           "evaluate.backend": backend, "evaluate.batch_size": batch_size},
    )
    from specialize.pipeline import evaluation_targets

    targets, sets_ = evaluation_targets(cfg, Path(cfg.workdir))
    if not sets_:
        raise SpecializeError("evaluate: no test set given (pass --dataset; the prepared corpus has no test qrels)")
    results = run_evaluate(cfg.evaluate.model_copy(update={"models": targets, "datasets": sets_}), Path(cfg.workdir), cfg.prefixes)
    write_resolved(cfg)
    _print_evaluation(results)
    console.print(f"results: {Path(cfg.workdir) / 'eval'}")


def _print_evaluation(results: dict) -> None:
    """One table per test set: every model's nDCG@10, Recall@100 and MRR@10."""
    for name, result in results.items():
        table = Table(title=f"{name} ({result['split']}: {result['queries']} queries, {result['docs']:,} docs)")
        for column in ("model", "nDCG@10", "Recall@100", "MRR@10", "backend", "seconds"):
            table.add_column(column, justify="left" if column in ("model", "backend") else "right")
        for model_name, row in result["models"].items():
            table.add_row(
                model_name, *(f"{100 * row[key]:.2f}" for key in ("ndcg@10", "recall@100", "mrr@10")),
                row["backend"], f"{row['seconds']:.0f}",
            )
        console.print(table)


@app.command()
def generate(
    model: Annotated[Optional[str], typer.Option(help="Instruct LLM: GGUF path, HF id, bundled:<alias>, or the model a server serves.")] = None,
    backend: Annotated[Optional[str], typer.Option(help="auto, llama_cpp, transformers, vllm or openai.")] = None,
    types: Annotated[Optional[str], typer.Option(help="Query types in the mixture, comma-separated: question,claim,...")] = None,
    base_url: Annotated[Optional[str], typer.Option(help="openai backend: the server's base URL, e.g. http://localhost:8000/v1.")] = None,
    queries: QueriesOption = None,
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
    sets: SetOption = None,
    force: ForceOption = False,
) -> None:
    """Write one synthetic query per sampled passage, of a type drawn from the mixture; or take your own (--queries)."""
    type_list = [name.strip() for name in types.split(",") if name.strip()] if types is not None else None
    cfg = _config(
        config, workdir, sets,
        **{"generate.model": model, "generate.llm.backend": backend, "generate.types": type_list, "generate.llm.base_url": base_url,
           "generate.queries": queries},
    )
    _stage(cfg, "generate", force)


@app.command()
def mine(
    retrievers: Annotated[Optional[list[str]], typer.Option("--retriever", "-r", help="bm25 or a dense model: HF id, path or bundled:<alias> (repeatable).")] = None,
    top_k: Annotated[Optional[int], typer.Option(help="Fused candidates kept per query.")] = None,
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
    sets: SetOption = None,
    force: ForceOption = False,
) -> None:
    """Retrieve and fuse candidate passages for each query; keep round-trip queries."""
    cfg = _config(config, workdir, sets, **{"mine.retrievers": retrievers or None, "mine.top_k": top_k})
    _stage(cfg, "mine", force)


@app.command()
def label(
    teacher: Annotated[Optional[str], typer.Option(help="auto (chosen by measurement), bm25, bi-encoder:<model>, cross-encoder:<model>, monot5:<model>, rankt5:<model>, llm-judge:<model> or ensemble:<member>=<weight>,...")] = None,
    audit: Annotated[Optional[bool], typer.Option("--audit/--no-audit", help="Audit the teacher against the student [default: when the corpus has qrels].")] = None,
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
    sets: SetOption = None,
    force: ForceOption = False,
) -> None:
    """Score candidates with the teacher; normalize, filter and split into train/dev; audit the teacher."""
    audit_mode = None if audit is None else ("always" if audit else "never")
    cfg = _config(config, workdir, sets, **{"label.teacher": teacher, "label.audit": audit_mode})
    _stage(cfg, "label", force)


def _print_audit(work: Path) -> None:
    """The audit table, and its warning in red when the teacher does not beat the student."""
    import json

    path = work / "audit.json"
    if not path.is_file():
        return
    report = json.loads(path.read_text())
    table = Table(title=f"teacher audit: {report['teacher']} vs student {report['student']}")
    for column in ("queries", "n", "teacher nDCG@10", "student nDCG@10", "teacher MRR@10", "student MRR@10"):
        table.add_column(column, justify="left" if column == "queries" else "right")
    for basis, title in (("synthetic", "synthetic (source passage)"), ("qrels", "human (qrels)")):
        if report.get(basis):
            row = report[basis]
            name = f"{title}, {row['split']} split" if basis == "qrels" else title
            table.add_row(name, str(row["queries"]), *(f"{row[w][m]:.2f}" for m in ("ndcg@10", "mrr@10") for w in ("teacher", "student")))
    console.print(table)
    if report.get("warning"):
        stderr.print(f"[bold red]WARNING:[/bold red] {escape(report['warning'])}", highlight=False, soft_wrap=True)


def _print_selection(work: Path) -> None:
    """The teacher candidates' table and the choice; the no-headroom line in red."""
    from specialize.selection import measured_columns, read_selection

    selection = read_selection(work)
    if selection is None:
        return
    if selection["candidates"]:
        measured = measured_columns(selection)
        table = Table(title=f"teacher selection on {selection['basis']} queries (nDCG@10)")
        for column in ("candidate", "fit", *measured):
            table.add_column(column, justify="left" if column == "candidate" else "right", overflow="fold")
        for row in selection["candidates"]:
            table.add_row(row["teacher"], f"{row['fit_ndcg@10']:.2f}", *(f"{row[name]:.2f}" for name in measured))
        console.print(table)
    for member in selection["members"]:
        if member.get("skipped"):
            stderr.print(f"skipped {member['teacher']}: {member['skipped']}", highlight=False, soft_wrap=True, markup=False)
    style = "bold red" if selection["headroom"] is False else "bold"
    stderr.print(f"[{style}]teacher:[/{style}] {escape(selection['reason'])}", highlight=False, soft_wrap=True)


@app.command()
def train(
    student: Annotated[Optional[str], typer.Option(help="The model to specialize: HF id, path or bundled:<alias>.")] = None,
    loss: Annotated[Optional[str], typer.Option(help="listwise (default), infonce or marginmse.")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Training epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Queries per optimizer step on each device.")] = None,
    keep_worse: Annotated[Optional[bool], typer.Option("--keep-worse", help="Publish the trained model even if it ranks the dev lists worse than the base model.")] = None,
    force_train: ForceTrainOption = None,
    resume: Annotated[Optional[bool], typer.Option("--resume", help="Continue from the last checkpoint of an interrupted run.")] = None,
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
    sets: SetOption = None,
    force: ForceOption = False,
) -> None:
    """Fine-tune the student with listwise distillation (or a baseline loss); publish it only if it got better."""
    cfg = _config(
        config, workdir, sets,
        **{"train.student": student, "train.loss": loss, "train.epochs": epochs, "train.batch_size": batch_size,
           "train.keep_worse": keep_worse, "train.force_train": force_train, "train.resume": resume},
    )
    _stage(cfg, "train", force)


@app.command()
def report(workdir: Annotated[Path, typer.Argument(help="The work directory to report on.")] = Path("specialize-work")) -> None:
    """Write report.md and a self-contained report.html (funnel, teacher audit, losses, evaluation)."""
    from specialize.report import report as write_report

    md, page = write_report(workdir)
    console.print(f"report: {md}\n        {page}")


@app.command()
def run(
    config: Annotated[Optional[Path], typer.Argument(help="YAML config file.")] = None,
    workdir: WorkdirOption = None,
    start: Annotated[Optional[str], typer.Option("--from", help="First stage to run: prepare, generate, mine, label, train or evaluate.")] = None,
    stop: Annotated[Optional[str], typer.Option("--to", help="Last stage to run.")] = None,
    sets: SetOption = None,
    force: ForceOption = False,
    ablate_types: Annotated[bool, typer.Option(
        "--ablate-types", help="Also train one model per query type and one on the mixture cut to a type's size, and evaluate them side by side.",
    )] = False,
    queries: QueriesOption = None,
    force_train: ForceTrainOption = None,
) -> None:
    """Run every stage in order, skipping those already done; then write the report."""
    cfg = _config(config, workdir, sets, **{"generate.queries": queries, "train.force_train": force_train})
    rerun = " ".join(["specialize run", *([str(config)] if config else []), "--workdir", str(cfg.workdir)])
    _run_pipeline(cfg, start, stop, force, rerun, ablate_types)


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option("--workdir", "-w", help="Work directory.")] = Path("specialize-work/demo"),
    sets: SetOption = None,
    force: ForceOption = False,
) -> None:
    """The whole pipeline on the bundled SciFact with the bundled models, sized for a laptop CPU."""
    from specialize.pipeline import DEMO_CONFIG

    _run_pipeline(_config(DEMO_CONFIG, workdir, sets), None, None, force, f"specialize demo --workdir {workdir}")


def _run_pipeline(cfg: Config, start: str | None, stop: str | None, force: bool, bigger: str, ablate_types: bool = False) -> None:
    """Run the stages, print each one's counts, then the result (``bigger``: the command that reruns it, for the hint)."""
    from specialize.pipeline import Pipeline

    Pipeline(cfg).run(start, stop, force, on_stage=_report_stage, ablate_types=ablate_types)
    _print_result(cfg, bigger)


def _print_result(cfg: Config, bigger: str) -> None:
    """The end of a run: the result against the base, where the model is, how to use it, how to make the run bigger."""
    from specialize.report import result_lines

    work = Path(cfg.workdir)
    model = work / cfg.train.output
    lines = result_lines(work)
    if lines:
        console.rule("[bold]result")
        for line in lines:
            console.print(line, highlight=False, soft_wrap=True)
        console.print(f"[bold]model[/bold]: {model}", highlight=False, soft_wrap=True)
        console.print("[bold]use it[/bold]:", highlight=False)
        console.print(f"  from sentence_transformers import SentenceTransformer\n  model = SentenceTransformer({str(model)!r})\n"
                      "  queries, docs = model.encode_query([\"a question\"]), model.encode_document([\"a passage\"])",
                      highlight=False, soft_wrap=True, markup=False)
        console.print(f"[bold]bigger[/bold]: {bigger} --set prepare.max_passages={BIGGER_PASSAGES}  "
                      "(more queries; the method pays from about a thousand)", highlight=False, soft_wrap=True)
    if (work / "report.md").is_file():
        console.print(f"[bold]report[/bold]: {work / 'report.md'}, {work / 'report.html'}", highlight=False, soft_wrap=True)


def _stage(cfg: Config, name: str, force: bool) -> None:
    """Run one stage through the pipeline's definition of it, and print what it did."""
    from specialize.pipeline import run_stage

    _report_stage(name, run_stage(cfg, name, force), Path(cfg.workdir))


def _report_stage(name: str, manifest: dict, work: Path) -> None:
    """A stage's counts (and the audit after label, the tables after evaluate), from the first process only."""
    if os.environ.get("RANK", "0") != "0":  # under torchrun, the first process speaks for all
        return
    _print_counts(name, manifest, work)
    if name == "label":
        _print_selection(work)
        _print_audit(work)
    if name == "evaluate":
        import json

        _print_evaluation({path.stem: json.loads(path.read_text()) for path in sorted((work / "eval").glob("*.json"))})


def _version(value: bool) -> None:
    if value:
        console.print(f"specialize {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print every count of every stage, zeros too.")] = False,
) -> None:
    """Make an embedding model specialize in one corpus."""
    global _VERBOSE
    _VERBOSE = verbose


def _print_counts(stage: str, manifest: dict, workdir: Path) -> None:
    """A stage's state, its non-zero totals on a few lines and its per-type counts as one table (types as columns);
    with --verbose every count, zeros too, and the manifest's path."""
    state = "up to date, skipped (--force reruns it)" if manifest["skipped"] else f"done in {manifest['seconds']:.1f}s"
    console.print(f"[bold]{stage}[/bold]: {state}")
    table = by_type(manifest["counts"])
    outcomes = list(dict.fromkeys(outcome for row in table.values() for outcome in row))
    shown = [outcome for outcome in outcomes if _VERBOSE or any(row.get(outcome) for row in table.values())]
    plain = {key: value for key, value in totals(manifest["counts"]).items()
             if _VERBOSE or (key not in outcomes and value not in (0, 0.0, None))}
    if plain and (stage != "evaluate" or _VERBOSE):  # evaluate's numbers follow as their own table
        cells = [(key, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)) for key, value in plain.items()]
        width = max(len(key) + len(value) for key, value in cells) + 4
        per_line = max(1, (console.width - 2) // width)
        for start in range(0, len(cells), per_line):
            line = [f"{escape(key)} [bold]{escape(value)}[/bold]" + " " * (width - 1 - len(key) - len(value)) for key, value in cells[start : start + per_line]]
            console.print(("  " + "".join(line)).rstrip(), highlight=False, soft_wrap=True)
    if shown:
        types = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1), pad_edge=False)
        for column in ("", *table, "all"):
            types.add_column(column, justify="left" if not column else "right")
        for outcome in shown:
            values = [int(row.get(outcome, 0)) for row in table.values()]
            types.add_row(outcome, *(f"{value:,}" for value in values), f"{sum(values):,}")
        console.print(Padding(types, (0, 0, 0, 2), expand=False))
    if _VERBOSE:
        path = workdir / "stages" / f"{manifest['stage']}.json"
        console.print(f"  manifest: {path}")


def main() -> None:
    """Console entry point: user mistakes become one line on stderr and exit code 2."""
    if len(sys.argv) == 1:
        sys.argv.append("--help")
    os.environ.setdefault("TQDM_DISABLE", "1")  # the libraries' own tqdm bars: our bars and lines report the work
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # a bad flag or value: one line, as for every other mistake
        context = getattr(exc, "ctx", None)
        command = context.command_path if context is not None else "specialize"
        stderr.print(f"[bold red]error:[/bold red] {escape(command)}: {escape(exc.format_message())} (see {escape(command)} --help)",
                     highlight=False, soft_wrap=True)
        sys.exit(2)
    except SpecializeError as exc:
        stderr.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as exc:  # a path of the user's that cannot be written or read: not a directory, read-only, disk full
        if exc.filename is None:
            raise
        stderr.print(f"[bold red]error:[/bold red] {escape(str(exc.filename))}: {escape(exc.strerror or str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        stderr.print("interrupted: finished work is saved; rerun to resume")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
