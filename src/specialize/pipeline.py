"""The pipeline: every stage's inputs, outputs and body in one place, run one by one or all at once.

    from specialize import Pipeline
    Pipeline("config.yaml").run()                  # every stage, skipping those already done
    Pipeline(config).run(start="label", stop="train")

``specialize run`` and each stage command of the CLI go through the same definitions, so a
stage run alone and the same stage inside ``run`` are the same work with the same manifest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specialize.artifacts import Workdir
from specialize.config import Config, build_config, load_config, write_resolved
from specialize.errors import SpecializeError

STAGES = ("prepare", "generate", "mine", "label", "train", "evaluate")
DEMO_CONFIG = Path(__file__).parent / "data" / "demo.yaml"
AUDIT_INPUTS = {"label": True, "prefixes": True, "mine": True, "train": {"student"}, "prepare": {"corpus"}}
"""The config the label stage depends on when it audits: the student, the retrievers and the corpus source too."""


@dataclass(frozen=True)
class StagePlan:
    """What one stage reads, writes and runs, for ``Workdir.run_stage``."""

    name: str
    config: Any
    inputs: Mapping[str, str | Path]
    outputs: list[str]
    body: Callable[[], Mapping[str, Any]]
    needs: tuple[tuple[str, str], ...] = ()
    """(file in the work directory, stage that writes it), checked before the stage starts."""


def _prepare(cfg: Config, work: Path) -> StagePlan:
    from specialize.chunking import Chunker
    from specialize.corpus import is_beir_source, prepare

    p = cfg.prepare
    if p.corpus is None:
        raise SpecializeError("prepare: no corpus given (pass a path or set prepare.corpus in the config)")
    chunk = p.chunk if p.chunk is not None else not is_beir_source(p.corpus)
    # What the passages depend on: whether documents are cut, and then by which tokenizer.
    p = p.model_copy(update={"chunk": chunk, "chunk_tokenizer": (p.chunk_tokenizer or cfg.train.student) if chunk else None})
    body = lambda: prepare(  # noqa: E731
        p.corpus, work, id_field=p.id_field, title_field=p.title_field, text_field=p.text_field, skip_bad=p.skip_bad,
        min_chars=p.min_chars, dedup=p.dedup, max_passages=p.max_passages, max_chars=p.max_chars, seed=p.seed,
        exclude_qrels=[Path(q) for q in p.exclude_qrels],
        chunker=Chunker(p.chunk_tokenizer, p.chunk_tokens, p.chunk_max_tokens, p.chunk_overlap) if chunk else None,
    )
    inputs = {"corpus": p.corpus, **{f"exclude_qrels_{i}": q for i, q in enumerate(p.exclude_qrels)}}
    return StagePlan("prepare", p, inputs, ["corpus.jsonl", "passages.jsonl"], body)


def _generate(cfg: Config, work: Path) -> StagePlan:
    from specialize.generate.stage import generate

    if cfg.generate.queries is not None:  # the user's own queries: the file is the only input, no LLM setting matters
        return StagePlan("generate", cfg.model_dump(mode="json", include={"generate": {"queries"}}), {"queries": cfg.generate.queries},
                         ["queries.jsonl"], lambda: generate(work, cfg.generate))
    inputs = {"passages": work / "passages.jsonl", **{f"prompts_{i}": path for i, path in enumerate(cfg.generate.prompts)}}
    return StagePlan("generate", cfg.generate, inputs, ["generations.jsonl", "queries.jsonl"],
                     lambda: generate(work, cfg.generate), needs=(("passages.jsonl", "prepare"),))


def _mine(cfg: Config, work: Path) -> StagePlan:
    from specialize.mine import mine

    return StagePlan(
        "mine", cfg.model_dump(mode="json", include={"mine", "prefixes"}),
        {"corpus": work / "corpus.jsonl", "queries": work / "queries.jsonl"}, ["candidates.jsonl"],
        lambda: mine(work, cfg.mine, cfg.prefixes), needs=(("corpus.jsonl", "prepare"), ("queries.jsonl", "generate")),
    )


def _label(cfg: Config, work: Path) -> StagePlan:
    from specialize.label import label, parse_teacher, wants_audit
    from specialize.selection import AUTO, SELECTION

    auto = cfg.label.teacher == AUTO
    for spec in cfg.label.candidates if auto else [cfg.label.teacher]:
        parse_teacher(spec)  # a bad spec fails before any input is read
    auditing = wants_audit(cfg)
    return StagePlan(
        "label", cfg.model_dump(mode="json", include=AUDIT_INPUTS if auditing or auto else {"label": True, "prefixes": True}),
        {name: work / f"{name}.jsonl" for name in ("corpus", "queries", "candidates")},
        ["labels.jsonl", "train.jsonl", "dev.jsonl", *(["audit.json"] if auditing else []), *([SELECTION] if auto else [])],
        lambda: label(work, cfg.label, cfg.prefixes, audit_with=cfg),
        needs=(("corpus.jsonl", "prepare"), ("queries.jsonl", "generate"), ("candidates.jsonl", "mine")),
    )


def _train(cfg: Config, work: Path) -> StagePlan:
    from specialize.audit import judged_queries
    from specialize.selection import JUDGED_SPLITS, SELECTION
    from specialize.train.stage import LOG, SUMMARY, labels_teacher, train

    inputs = {name: work / f"{name}.jsonl" for name in ("corpus", "train", "dev")}
    if (work / SELECTION).is_file():  # the teacher selection decides whether to train at all
        inputs["selection"] = work / SELECTION
    # The corpus source's judged dev/train queries, when it has them, are the publish gate's.
    body = lambda: train(work, cfg.train, cfg.prefixes, teacher=labels_teacher(work, cfg.label.teacher),  # noqa: E731
                         judged=judged_queries(cfg.prepare.corpus, JUDGED_SPLITS))
    return StagePlan(
        "train", cfg.model_dump(mode="json", include={"train": True, "prefixes": True, "prepare": {"corpus"}}, exclude={"train": {"resume"}}),
        inputs, [cfg.train.output, SUMMARY, LOG], body,
        needs=(("corpus.jsonl", "prepare"), ("train.jsonl", "label"), ("dev.jsonl", "label")),
    )


VARIANTS = "variants"
VARIANT_INPUTS = ("corpus.jsonl", "queries.jsonl", "candidates.jsonl", "labels.jsonl", ".labels.key", "train.jsonl", "dev.jsonl", "teacher.json")
"""The labeled data a variant trains on (with the key and the selection that name its teacher), linked from the work
directory into ``variants/<name>/``."""


def variant_config(cfg: Config, name: str, train: Mapping[str, Any]) -> Config:
    """The run's config with other train settings, working in ``variants/<name>/`` on links to the same labeled data.

    A variant is trained to be compared, so it is always trained (``force_train``), published (``keep_worse``) and
    evaluated beside the student.
    """
    work = Path(cfg.workdir)
    folder = work / VARIANTS / name
    folder.mkdir(parents=True, exist_ok=True)
    for file in VARIANT_INPUTS:
        link = folder / file
        if (work / file).is_file() and not link.is_symlink():
            with contextlib.suppress(FileExistsError):  # another torchrun process made it first
                link.symlink_to(Path("..", "..", file))
    overrides = {f"train.{key}": value for key, value in {**train, "keep_worse": True, "force_train": True, "resume": False}.items()}
    return build_config(cfg.model_dump(mode="json") | {"workdir": str(folder)}, overrides, f"variant {name}")


def type_variants(work: Path) -> dict[str, dict[str, Any]]:
    """The query-type ablation: one variant per type in ``train.jsonl``, and the mixture cut to a single type's mean size."""
    from specialize.train.data import read_lists, type_counts

    counts = type_counts(read_lists(work / "train.jsonl", min_size=1))
    variants: dict[str, dict[str, Any]] = {f"type-{kind}": {"types": [kind]} for kind in sorted(counts)}
    if len(counts) > 1:
        size = max(1, round(sum(counts.values()) / len(counts)))
        variants[f"mixture-{size}"] = {"max_queries": size}
    return variants


def variant_models(cfg: Config, work: Path) -> list[str]:
    """The published models of the variants trained in the work directory, by name."""
    return [str(path) for path in sorted((work / VARIANTS).glob(f"*/{cfg.train.output}")) if path.is_dir()]


def evaluation_targets(cfg: Config, work: Path) -> tuple[list[str], list[str]]:
    """(models, datasets) the evaluate stage compares: as configured, else the student before and after
    training and every trained variant, on the corpus source's test qrels when it has them."""
    from specialize.audit import judged_queries

    trained = [str(work / cfg.train.output)] if (work / cfg.train.output).is_dir() else []
    models = cfg.evaluate.models or [cfg.train.student, *trained, *variant_models(cfg, work)]
    datasets = cfg.evaluate.datasets
    if not datasets:
        judged = judged_queries(cfg.prepare.corpus, splits=(cfg.evaluate.split,))
        datasets = [cfg.prepare.corpus] if judged is not None else []
    return models, datasets


def _evaluate(cfg: Config, work: Path) -> StagePlan:
    from specialize.evaluate import evaluate, slug

    models, datasets = evaluation_targets(cfg, work)
    if not datasets:
        raise SpecializeError(f"evaluate: no test set (the corpus has no qrels/{cfg.evaluate.split}.tsv); set evaluate.datasets")
    settings = cfg.evaluate.model_copy(update={"models": models, "datasets": datasets})
    names = [f"eval/{slug(dataset.split(':', 1)[1] if dataset.startswith(('demo:', 'beir:')) else Path(dataset).name)}.json" for dataset in datasets]
    inputs = {f"model_{i}": (work / model if (work / model).exists() else model) for i, model in enumerate(models)}
    return StagePlan("evaluate", cfg.model_dump(mode="json", include={"evaluate", "prefixes"}) | {"targets": [models, datasets]},
                     inputs, names, lambda: _eval_counts(evaluate(settings, work, cfg.prefixes)))


def _eval_counts(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """nDCG@10 and Recall@100 of every model on every dataset, as manifest counts."""
    return {f"{dataset}:{model}:{metric}": round(100 * row[metric], 2)
            for dataset, result in results.items() for model, row in result["models"].items() for metric in ("ndcg@10", "recall@100")}


PLANS: dict[str, Callable[[Config, Path], StagePlan]] = {
    "prepare": _prepare, "generate": _generate, "mine": _mine, "label": _label, "train": _train, "evaluate": _evaluate,
}


def run_stage(cfg: Config, name: str, force: bool = False) -> dict[str, Any]:
    """Run one stage (or skip it when it is up to date); its manifest, with ``skipped``. Once it succeeds, the
    resolved config is written to ``<workdir>/config.yaml`` (a failing stage leaves the file as it was)."""
    work = Path(cfg.workdir)
    plan = PLANS[name](cfg, work)
    for file, stage in plan.needs:
        if not (work / file).is_file():
            raise SpecializeError(f"{work / file}: not found; run `specialize {stage}` first")
    manifest = Workdir(work).run_stage(plan.name, plan.config, plan.inputs, plan.outputs, plan.body, force=force)
    write_resolved(cfg)
    return manifest


def stage_range(start: str | None, stop: str | None) -> list[str]:
    """The stages from ``start`` to ``stop``, inclusive, in pipeline order."""
    for value in (start, stop):
        if value is not None and value not in STAGES:
            raise SpecializeError(f"unknown stage {value!r}; the stages are {', '.join(STAGES)}")
    first = STAGES.index(start) if start else 0
    last = STAGES.index(stop) if stop else len(STAGES) - 1
    if first > last:
        raise SpecializeError(f"--from {start} comes after --to {stop}")
    return list(STAGES[first : last + 1])


class Pipeline:
    """Every stage in order on one config: ``Pipeline(config).run()``."""

    def __init__(self, config: Config | str | Path | None = None, **overrides: Any) -> None:
        """``config``: a Config, a YAML path or None (defaults); ``overrides``: dotted keys, e.g. ``**{"train.epochs": 2}``."""
        if isinstance(config, Config):
            self.config = build_config(config.model_dump(mode="json"), overrides, "config")
        else:
            self.config = load_config(config, overrides)

    def run(
        self,
        start: str | None = None,
        stop: str | None = None,
        force: bool = False,
        on_stage: Callable[[str, dict[str, Any], Path], None] | None = None,
        ablate_types: bool = False,
        variants: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Run the stages from ``start`` to ``stop``; return their manifests by name.

        Right after ``train``, each of ``variants`` (name → train settings, e.g. ``{"infonce": {"loss": "infonce"}}``)
        is trained on the same labeled data, and with ``ablate_types`` one model per query type and one on the mixture
        cut to a type's size; ``evaluate`` then compares them all. ``on_stage(name, manifest, workdir)`` follows each.
        """
        work = Path(self.config.workdir)
        manifests = {}
        for name in stage_range(start, stop):
            manifests[name] = run_stage(self.config, name, force)
            if on_stage is not None:
                on_stage(name, manifests[name], work)
            if name != "train":
                continue
            extra = {**(type_variants(work) if ablate_types else {}), **(variants or {})}
            for variant, settings in extra.items():
                cfg = variant_config(self.config, variant, settings)
                manifests[f"train:{variant}"] = run_stage(cfg, "train", force)
                if on_stage is not None:
                    on_stage(f"train:{variant}", manifests[f"train:{variant}"], Path(cfg.workdir))
        if stop in (None, "evaluate"):
            from specialize.report import report

            report(Path(self.config.workdir))
        return manifests
