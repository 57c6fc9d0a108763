"""The `specialize` command line: one command per stage, plus run, demo, evaluate and report.

Every command reads an optional YAML config (else the work directory's ``config.yaml``), applies its
flags and ``--set key=value`` overrides on top, and once it succeeds writes the resolved config to
``<workdir>/config.yaml``. A flag that sets a config key takes its help and its default from that key's
pydantic field (``_option``). A user mistake ends in one line on stderr and exit code 2.
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
from specialize.config import Config, config_field, field_default, load_config, parse_assignment
from specialize.counts import by_type, totals
from specialize.errors import SpecializeError
from specialize.progress import stderr
from specialize.progress import stdout as console
from specialize.workdir import Workdir

app = typer.Typer(
    help="Make an embedding model specialize in one corpus.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
BIGGER_PASSAGES = 1000
_VERBOSE = False



def _help(key: str, note: str = "", show_default: bool = True) -> str:
    """The help of a flag that sets the config key ``key``: the field's description, then ``note``, then the field's default
    when it says something (not None, a flag's False or an empty list); escaped, as typer reads help as rich markup."""
    description = config_field(key).description
    if not description:
        raise ValueError(f"config field {key!r} has no description to show as a flag's help")
    default = field_default(key)
    shown = ", ".join(map(str, default)) if isinstance(default, list) else default
    suffix = f" [default: {shown}]" if show_default and shown not in (None, "", False, True) else ""
    return escape(" ".join(filter(None, (description, note))) + suffix)


def _option(key: str, *names: str, note: str = "") -> Any:
    """A flag that sets the config key ``key``, its help from that field (see ``_help``); unset, it leaves the config as it is."""
    return typer.Option(*names, help=_help(key, note))


def _either(positional: Path | None, flag: Path | None, name: str) -> Path | None:
    """A path given positionally (the older form) or by the flag ``name``: either, or both when they agree."""
    if positional is not None and flag is not None and positional != flag:
        raise SpecializeError(f"{name} {flag} and the positional {positional} differ: give the path once")
    return flag if flag is not None else positional


ConfigOption = Annotated[Optional[Path], typer.Option(
    "--config", "-c", help="YAML config file; without it, the work directory's config.yaml when there is one.",
)]
WorkdirOption = Annotated[Optional[Path], _option("workdir", "--workdir", "-w")]
SetOption = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override any config key: --set train.epochs=2 (repeatable).")
]
ForceOption = Annotated[bool, typer.Option("--force", help="Rerun even if the stage is up to date.")]
ForceTrainOption = Annotated[Optional[bool], _option("train.force_train", "--force-train")]
QueriesOption = Annotated[Optional[str], _option("generate.queries", "--queries")]


def _config(config: Path | None, workdir: Path | None, sets: list[str] | None, **flags: Any) -> Config:
    """Load the config, apply --set assignments, then explicit flags (dotted keys).

    Without ``--config`` a command starts from the work directory's ``config.yaml`` when there is one,
    so what earlier commands were told stays told. The resolved config is written back only when the
    command succeeds.
    """
    if config is None:
        remembered = Workdir(workdir if workdir is not None else field_default("workdir")).config
        if remembered.is_file():
            config, workdir = remembered, remembered.parent
    overrides: dict[str, Any] = dict(parse_assignment(item) for item in sets or [])
    load_config(config, overrides)  # each --set checked as written, before a flag could replace what it names
    given = {"workdir": str(workdir) if workdir is not None else None, **flags}
    overrides.update({key: value for key, value in given.items() if value is not None})
    return load_config(config, overrides)


@app.command()
def prepare(
    corpus: Annotated[Optional[str], typer.Argument(help=_help("prepare.corpus"))] = None,
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
    max_passages: Annotated[Optional[int], _option("prepare.max_passages")] = None,
    max_chars: Annotated[Optional[int], _option("prepare.max_chars")] = None,
    seed: Annotated[Optional[int], _option("prepare.seed")] = None,
    skip_bad: Annotated[Optional[bool], _option("prepare.skip_bad", "--skip-bad")] = None,
    id_field: Annotated[Optional[str], _option("prepare.id_field")] = None,
    title_field: Annotated[Optional[str], _option("prepare.title_field")] = None,
    text_field: Annotated[Optional[str], _option("prepare.text_field")] = None,
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
    models: Annotated[Optional[list[str]], _option("evaluate.models", "--model", "-m", note="Repeatable.")] = None,
    datasets: Annotated[Optional[list[str]], _option("evaluate.datasets", "--dataset", "-d", note="Repeatable.")] = None,
    split: Annotated[Optional[str], _option("evaluate.split")] = None,
    backend: Annotated[Optional[str], _option("evaluate.backend")] = None,
    batch_size: Annotated[Optional[int], _option("evaluate.batch_size")] = None,
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
    sets: SetOption = None,
    force: ForceOption = False,
) -> None:
    """Compare models side by side on BEIR-format test sets (nDCG@10, Recall@100, MRR@10)."""
    cfg = _config(
        config, workdir, sets,
        **{"evaluate.models": models or None, "evaluate.datasets": datasets or None, "evaluate.split": split,
           "evaluate.backend": backend, "evaluate.batch_size": batch_size},
    )
    _stage(cfg, "evaluate", force)


def _print_evaluation(work: Workdir) -> None:
    """One table per test set: every model's nDCG@10, Recall@100 and MRR@10."""
    from specialize.records import Evaluation

    for path in work.eval_files():
        result = Evaluation.read(path)
        table = Table(title=f"{result.dataset} ({result.split}: {result.queries} queries, {result.docs:,} docs)")
        for column in ("model", "nDCG@10", "Recall@100", "MRR@10", "backend", "seconds"):
            table.add_column(column, justify="left" if column in ("model", "backend") else "right")
        for model_name, row in result.models.items():
            table.add_row(model_name, *(f"{100 * row.metric(key):.2f}" for key in ("ndcg@10", "recall@100", "mrr@10")), row.backend, f"{row.seconds:.0f}")
        console.print(table)
    console.print(f"results: {work.root / Workdir.EVAL}")


@app.command()
def generate(
    model: Annotated[Optional[str], _option("generate.model")] = None,
    backend: Annotated[Optional[str], _option("generate.llm.backend")] = None,
    types: Annotated[Optional[str], _option("generate.types", note="Comma-separated.")] = None,
    base_url: Annotated[Optional[str], _option("generate.llm.base_url")] = None,
    queries: QueriesOption = None,
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
    sets: SetOption = None,
    force: ForceOption = False,
) -> None:
    """Write synthetic queries for the sampled passages (generate.queries_per_passage each, of a type drawn from the mixture); or take your own (--queries)."""
    type_list = [name.strip() for name in types.split(",") if name.strip()] if types is not None else None
    cfg = _config(
        config, workdir, sets,
        **{"generate.model": model, "generate.llm.backend": backend, "generate.types": type_list, "generate.llm.base_url": base_url,
           "generate.queries": queries},
    )
    _stage(cfg, "generate", force)


@app.command()
def mine(
    retrievers: Annotated[Optional[list[str]], _option("mine.retrievers", "--retriever", "-r", note="Repeatable.")] = None,
    top_k: Annotated[Optional[int], _option("mine.top_k")] = None,
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
    teacher: Annotated[Optional[str], _option("label.teacher")] = None,
    audit: Annotated[Optional[bool], _option("label.audit", "--audit/--no-audit", note="--audit: always; --no-audit: never.")] = None,
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
    sets: SetOption = None,
    force: ForceOption = False,
) -> None:
    """Score candidates with the teacher; normalize, filter and split into train/dev; audit the teacher."""
    audit_mode = None if audit is None else ("always" if audit else "never")
    cfg = _config(config, workdir, sets, **{"label.teacher": teacher, "label.audit": audit_mode})
    _stage(cfg, "label", force)


def _print_audit(work: Workdir) -> None:
    """The audit table, and its warning in red when the teacher does not beat the student."""
    from specialize.records import Audit

    report = Audit.read_if_there(work.audit)
    if report is None:
        return
    table = Table(title=f"teacher audit: {report.teacher} vs student {report.student}")
    for column in ("queries", "n", "teacher nDCG@10", "student nDCG@10", "teacher MRR@10", "student MRR@10"):
        table.add_column(column, justify="left" if column == "queries" else "right")
    for part, title in ((report.synthetic, "synthetic (source passage)"), (report.qrels, "human (qrels)")):
        if part is not None:
            name = f"{title}, {part.split} split" if part.split else title
            scores = {"teacher": part.teacher, "student": part.student}
            table.add_row(name, str(part.queries), *(f"{scores[w][m]:.2f}" for m in ("ndcg@10", "mrr@10") for w in ("teacher", "student")))
    console.print(table)
    if report.warning:
        stderr.print(f"[bold red]WARNING:[/bold red] {escape(report.warning)}", highlight=False, soft_wrap=True)


def _print_selection(work: Path) -> None:
    """The teacher candidates' table and the choice; the no-headroom line in red."""
    from specialize.records import Selection

    selection = Selection.read_if_there(Workdir(work).selection)
    if selection is None:
        return
    if selection.candidates:
        measured = selection.measured_columns()
        table = Table(title=f"teacher selection on {selection.basis} queries (nDCG@10)")
        for column in ("candidate", "fit", *measured):
            table.add_column(column, justify="left" if column == "candidate" else "right", overflow="fold")
        for row in selection.candidates:
            table.add_row(row["teacher"], f"{row['fit_ndcg@10']:.2f}", *(f"{row[name]:.2f}" for name in measured))
        console.print(table)
    for member in selection.members:
        if member.get("skipped"):
            stderr.print(f"skipped {member['teacher']}: {member['skipped']}", highlight=False, soft_wrap=True, markup=False)
    style = "bold red" if selection.headroom is False else "bold"
    stderr.print(f"[{style}]teacher:[/{style}] {escape(selection.reason)}", highlight=False, soft_wrap=True)


@app.command()
def train(
    student: Annotated[Optional[str], _option("train.student")] = None,
    loss: Annotated[Optional[str], _option("train.loss")] = None,
    epochs: Annotated[Optional[float], _option("train.epochs")] = None,
    batch_size: Annotated[Optional[int], _option("train.batch_size")] = None,
    keep_worse: Annotated[Optional[bool], _option("train.keep_worse", "--keep-worse")] = None,
    force_train: ForceTrainOption = None,
    resume: Annotated[Optional[bool], _option("train.resume", "--resume")] = None,
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
def report(
    workdir_path: Annotated[Optional[Path], typer.Argument(metavar="WORKDIR", help="The same as --workdir.")] = None,
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
) -> None:
    """Write report.md and a self-contained report.html (funnel, teacher audit, losses, evaluation)."""
    from specialize.stages.report import report as write_report

    md, page = write_report(Path(_config(config, _either(workdir_path, workdir, "--workdir"), None).workdir))
    console.print(f"report: {md}\n        {page}")


@app.command()
def run(
    config_path: Annotated[Optional[Path], typer.Argument(metavar="CONFIG", help="The same as --config.")] = None,
    config: ConfigOption = None,
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
    config = _either(config_path, config, "--config")
    cfg = _config(config, workdir, sets, **{"generate.queries": queries, "train.force_train": force_train})
    rerun = " ".join(["specialize run", *(["--config", str(config)] if config else []), "--workdir", str(cfg.workdir)])
    _run_pipeline(cfg, start, stop, force, rerun, ablate_types)


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option("--workdir", "-w", help=_help("workdir", show_default=False))] = Path(field_default("workdir")) / "demo",
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
    from specialize.stages.report import result_lines

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
    if Workdir(work).report.is_file():
        console.print(f"[bold]report[/bold]: {Workdir(work).report}, {Workdir(work).report_html}", highlight=False, soft_wrap=True)


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
        _print_audit(Workdir(work))
    if name == "evaluate":
        _print_evaluation(Workdir(work))


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
        console.print(f"  manifest: {Workdir(workdir).manifest_path(manifest['stage'])}")


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
