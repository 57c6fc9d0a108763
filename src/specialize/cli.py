"""The `specialize` command line: one command per stage, plus run, demo, evaluate and report.

Every command reads an optional YAML config, applies its flags and ``--set key=value``
overrides on top, and writes the resolved config to ``<workdir>/config.yaml``. A user
mistake ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from specialize import __version__
from specialize.config import Config, load_config, parse_assignment, write_resolved
from specialize.errors import SpecializeError

app = typer.Typer(
    help="Make an embedding model specialize in one corpus.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()

ConfigOption = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file.")]
WorkdirOption = Annotated[Optional[Path], typer.Option("--workdir", "-w", help="Work directory [default: specialize-work].")]
SetOption = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override any config key: --set train.epochs=2 (repeatable).")
]
ForceOption = Annotated[bool, typer.Option("--force", help="Rerun even if the stage is up to date.")]


def _config(config: Path | None, workdir: Path | None, sets: list[str] | None, **flags: Any) -> Config:
    """Load the config, apply --set assignments, then explicit flags (dotted keys), and write it out."""
    overrides: dict[str, Any] = dict(parse_assignment(item) for item in sets or [])
    given = {"workdir": str(workdir) if workdir is not None else None, **flags}
    overrides.update({key: value for key, value in given.items() if value is not None})
    resolved = load_config(config, overrides)
    write_resolved(resolved)
    return resolved


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
    from specialize.artifacts import Workdir
    from specialize.corpus import prepare as run_prepare

    cfg = _config(
        config, workdir, sets,
        **{"prepare.corpus": corpus, "prepare.max_passages": max_passages, "prepare.max_chars": max_chars,
           "prepare.seed": seed, "prepare.skip_bad": skip_bad, "prepare.id_field": id_field,
           "prepare.title_field": title_field, "prepare.text_field": text_field},
    )
    p = cfg.prepare
    if p.corpus is None:
        raise SpecializeError("prepare: no corpus given (pass a path or set prepare.corpus in the config)")
    manifest = Workdir(cfg.workdir).run_stage(
        "prepare",
        p,
        inputs={"corpus": p.corpus, **{f"exclude_qrels_{i}": q for i, q in enumerate(p.exclude_qrels)}},
        outputs=["corpus.jsonl", "passages.jsonl"],
        body=lambda: run_prepare(
            p.corpus, Path(cfg.workdir), id_field=p.id_field, title_field=p.title_field, text_field=p.text_field,
            skip_bad=p.skip_bad, min_chars=p.min_chars, dedup=p.dedup, max_passages=p.max_passages,
            max_chars=p.max_chars, seed=p.seed, exclude_qrels=[Path(q) for q in p.exclude_qrels],
        ),
        force=force,
    )
    _print_counts("prepare", manifest, Path(cfg.workdir))


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
    results = run_evaluate(cfg.evaluate, Path(cfg.workdir), cfg.prefixes)
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
    console.print(f"results: {Path(cfg.workdir) / 'eval'}")


def _not_implemented(stage: str, issue: int) -> None:
    raise SpecializeError(f"{stage}: not implemented yet (tracked in issue {issue})")


@app.command()
def generate(
    model: Annotated[Optional[str], typer.Option(help="Instruct LLM: GGUF path, HF id, bundled:<alias>, or the model a server serves.")] = None,
    backend: Annotated[Optional[str], typer.Option(help="auto, llama_cpp, transformers, vllm or openai.")] = None,
    types: Annotated[Optional[str], typer.Option(help="Query types in the mixture, comma-separated: question,claim,...")] = None,
    base_url: Annotated[Optional[str], typer.Option(help="openai backend: the server's base URL, e.g. http://localhost:8000/v1.")] = None,
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
    sets: SetOption = None,
    force: ForceOption = False,
) -> None:
    """Write one synthetic query per sampled passage, of a type drawn from the mixture."""
    from specialize.artifacts import Workdir
    from specialize.generate.stage import generate as run_generate

    type_list = [name.strip() for name in types.split(",") if name.strip()] if types is not None else None
    cfg = _config(
        config, workdir, sets,
        **{"generate.model": model, "generate.llm.backend": backend, "generate.types": type_list, "generate.llm.base_url": base_url},
    )
    work = Path(cfg.workdir)
    if not (work / "passages.jsonl").is_file():
        raise SpecializeError(f"{work / 'passages.jsonl'}: not found; run `specialize prepare` first")
    manifest = Workdir(work).run_stage(
        "generate",
        cfg.generate,
        inputs={"passages": work / "passages.jsonl", **{f"prompts_{i}": path for i, path in enumerate(cfg.generate.prompts)}},
        outputs=["generations.jsonl", "queries.jsonl"],
        body=lambda: run_generate(work, cfg.generate),
        force=force,
    )
    _print_counts("generate", manifest, work)


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
    from specialize.artifacts import Workdir
    from specialize.mine import mine as run_mine

    cfg = _config(config, workdir, sets, **{"mine.retrievers": retrievers or None, "mine.top_k": top_k})
    work = Path(cfg.workdir)
    manifest = Workdir(work).run_stage(
        "mine",
        cfg.model_dump(mode="json", include={"mine", "prefixes"}),
        inputs={"corpus": work / "corpus.jsonl", "queries": work / "queries.jsonl"},
        outputs=["candidates.jsonl"],
        body=lambda: run_mine(work, cfg.mine, cfg.prefixes),
        force=force,
    )
    _print_counts("mine", manifest, work)


AUDIT_INPUTS = {"label": True, "prefixes": True, "mine": True, "train": {"student"}, "prepare": {"corpus"}}
"""The config the label stage depends on when it audits: the student, the retrievers and the corpus source too."""


@app.command()
def label(
    teacher: Annotated[Optional[str], typer.Option(help="bm25, bi-encoder:<model>, cross-encoder:<model>, monot5:<model>, rankt5:<model>, llm-judge:<model> or ensemble:<member>=<weight>,...")] = None,
    audit: Annotated[Optional[bool], typer.Option("--audit/--no-audit", help="Audit the teacher against the student [default: when the corpus has qrels].")] = None,
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
    sets: SetOption = None,
    force: ForceOption = False,
) -> None:
    """Score candidates with the teacher; normalize, filter and split into train/dev; audit the teacher."""
    from specialize.artifacts import Workdir
    from specialize.label import label as run_label
    from specialize.label import parse_teacher, wants_audit

    audit_mode = None if audit is None else ("always" if audit else "never")
    cfg = _config(config, workdir, sets, **{"label.teacher": teacher, "label.audit": audit_mode})
    parse_teacher(cfg.label.teacher)  # a bad spec fails before any input is read
    work = Path(cfg.workdir)
    for name, stage in (("corpus.jsonl", "prepare"), ("queries.jsonl", "generate"), ("candidates.jsonl", "mine")):
        if not (work / name).is_file():
            raise SpecializeError(f"{work / name}: not found; run `specialize {stage}` first")
    outputs = ["labels.jsonl", "train.jsonl", "dev.jsonl", *(["audit.json"] if wants_audit(cfg) else [])]
    manifest = Workdir(work).run_stage(
        "label",
        cfg.model_dump(mode="json", include=AUDIT_INPUTS if "audit.json" in outputs else {"label": True, "prefixes": True}),
        inputs={name: work / f"{name}.jsonl" for name in ("corpus", "queries", "candidates")},
        outputs=outputs,
        body=lambda: run_label(work, cfg.label, cfg.prefixes, audit_with=cfg),
        force=force,
    )
    _print_counts("label", manifest, work)
    _print_audit(work)


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
        Console(stderr=True).print(f"[bold red]WARNING:[/bold red] {report['warning']}", highlight=False, soft_wrap=True)


@app.command()
def train(config: ConfigOption = None, workdir: WorkdirOption = None) -> None:
    """Fine-tune the student with listwise distillation (or a baseline loss)."""
    _not_implemented("train", 5)


@app.command()
def report(workdir: Annotated[Optional[Path], typer.Argument()] = None) -> None:
    """Write report.md and report.html for a work directory."""
    _not_implemented("report", 6)


@app.command()
def run(config: ConfigOption = None) -> None:
    """Run every stage in order, skipping those already done."""
    _not_implemented("run", 6)


@app.command()
def demo() -> None:
    """The whole pipeline on the bundled SciFact with the bundled models, on a laptop CPU."""
    _not_implemented("demo", 6)


def _version(value: bool) -> None:
    if value:
        console.print(f"specialize {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    """Make an embedding model specialize in one corpus."""


def _print_counts(stage: str, manifest: dict, workdir: Path) -> None:
    state = "up to date, skipped (--force reruns it)" if manifest["skipped"] else f"done in {manifest['seconds']:.1f}s"
    console.print(f"[bold]{stage}[/bold]: {state}")
    for key, value in manifest["counts"].items():
        console.print(f"  {key}: {value:,}" if isinstance(value, int) else f"  {key}: {value}")
    console.print(f"  manifest: {workdir / 'stages' / f'{stage}.json'}")


def main() -> None:
    """Console entry point: user mistakes become one line on stderr and exit code 2."""
    try:
        app()
    except SpecializeError as exc:
        Console(stderr=True).print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted: finished work is saved; rerun to resume")
        sys.exit(130)
