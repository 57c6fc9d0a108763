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

from specialize.config import Config, build_config, load_config, write_resolved
from specialize.errors import SpecializeError
from specialize.workdir import Workdir

STAGES = ("prepare", "generate", "mine", "label", "train", "evaluate")
DEMO_CONFIG = Path(__file__).parent / "data" / "demo.yaml"
AUDIT_INPUTS: dict[str, Any] = {"label": True, "prefixes": True, "mine": True, "train": {"student"}, "prepare": {"corpus"}}
"""The config the label stage depends on when it audits: the student, the retrievers and the corpus source too."""


@dataclass(frozen=True)
class StagePlan:
    """What one stage reads, writes and runs, for ``Workdir.run_stage``: every stage runs as ``run(work, config)``."""

    name: str
    config: Any
    """What the stage's output depends on: a config section, or the parts of the config it reads."""
    inputs: Mapping[str, str | Path]
    outputs: list[str]
    run: Callable[[Workdir, Config], Mapping[str, Any]]
    needs: tuple[tuple[str, str], ...] = ()
    """(artifact in the work directory, stage that writes it), checked before the stage starts."""


def _prepare(cfg: Config, work: Workdir) -> StagePlan:
    from specialize.stages import prepare

    settings = prepare.settings(cfg)
    inputs: dict[str, str | Path] = {"corpus": str(settings.corpus), **{f"exclude_qrels_{i}": q for i, q in enumerate(settings.exclude_qrels)}}
    return StagePlan("prepare", settings, inputs, [Workdir.CORPUS, Workdir.PASSAGES], prepare.run)


def _generate(cfg: Config, work: Workdir) -> StagePlan:
    from specialize.stages.generate import stage

    if cfg.generate.queries is not None:  # the user's own queries: the file is the only input, no LLM setting matters
        return StagePlan("generate", cfg.model_dump(mode="json", include={"generate": {"queries"}}), {"queries": cfg.generate.queries},
                         [Workdir.QUERIES], stage.run)
    inputs: dict[str, str | Path] = {"passages": work.passages, **{f"prompts_{i}": path for i, path in enumerate(cfg.generate.prompts)}}
    return StagePlan("generate", cfg.generate, inputs, [Workdir.GENERATIONS, Workdir.QUERIES], stage.run, needs=((Workdir.PASSAGES, "prepare"),))


def _mine(cfg: Config, work: Workdir) -> StagePlan:
    from specialize.stages import mine

    return StagePlan("mine", cfg.model_dump(mode="json", include={"mine", "prefixes"}), {"corpus": work.corpus, "queries": work.queries},
                     [Workdir.CANDIDATES], mine.run, needs=((Workdir.CORPUS, "prepare"), (Workdir.QUERIES, "generate")))


def _label(cfg: Config, work: Workdir) -> StagePlan:
    from specialize.stages.label import stage
    from specialize.teachers import AUTO, parse_teacher

    auto = cfg.label.teacher == AUTO
    for spec in cfg.label.candidates if auto else [cfg.label.teacher]:
        parse_teacher(spec)  # a bad spec fails before any input is read
    auditing = stage.wants_audit(cfg)
    return StagePlan(
        "label", cfg.model_dump(mode="json", include=AUDIT_INPUTS if auditing or auto else {"label": True, "prefixes": True}),
        {"corpus": work.corpus, "queries": work.queries, "candidates": work.candidates},
        [Workdir.LABELS, Workdir.TRAIN, Workdir.DEV, *([Workdir.AUDIT] if auditing else []), *([Workdir.SELECTION] if auto else [])], stage.run,
        needs=((Workdir.CORPUS, "prepare"), (Workdir.QUERIES, "generate"), (Workdir.CANDIDATES, "mine")),
    )


def _train(cfg: Config, work: Workdir) -> StagePlan:
    from specialize.stages.train import stage

    inputs: dict[str, str | Path] = {"corpus": work.corpus, "train": work.train, "dev": work.dev}
    if work.selection.is_file():  # the teacher selection decides whether to train at all
        inputs["selection"] = work.selection
    return StagePlan(
        "train", cfg.model_dump(mode="json", include={"train": True, "prefixes": True, "prepare": {"corpus"}}, exclude={"train": {"resume"}}),
        inputs, [cfg.train.output, Workdir.SUMMARY, Workdir.TRAIN_LOG], stage.run,
        needs=((Workdir.CORPUS, "prepare"), (Workdir.TRAIN, "label"), (Workdir.DEV, "label")),
    )


def variant_config(cfg: Config, name: str, train: Mapping[str, Any]) -> Config:
    """The run's config with other train settings, working in ``variants/<name>/`` on links to the same labeled data.

    A variant is trained to be compared, so it is always trained (``force_train``), published (``keep_worse``) and
    evaluated beside the student.
    """
    work = Workdir(cfg.workdir)
    folder = work.variant(name)
    folder.root.mkdir(parents=True, exist_ok=True)
    for file in Workdir.LABELED:
        link = folder.path(file)
        if work.path(file).is_file() and not link.is_symlink():
            with contextlib.suppress(FileExistsError):  # another torchrun process made it first
                link.symlink_to(Path("..", "..", file))
    overrides = {f"train.{key}": value for key, value in {**train, "keep_worse": True, "force_train": True, "resume": False}.items()}
    return build_config(cfg.model_dump(mode="json") | {"workdir": str(folder.root)}, overrides, f"variant {name}")


def type_variants(work: Workdir) -> dict[str, dict[str, Any]]:
    """The query-type ablation: one variant per type in ``train.jsonl``, and the mixture cut to a single type's mean size."""
    from specialize.stages.train.data import read_lists, type_counts

    counts = type_counts(read_lists(work.train, min_size=1))
    variants: dict[str, dict[str, Any]] = {f"type-{kind}": {"types": [kind]} for kind in sorted(counts)}
    if len(counts) > 1:
        size = max(1, round(sum(counts.values()) / len(counts)))
        variants[f"mixture-{size}"] = {"max_queries": size}
    return variants


def _evaluate(cfg: Config, work: Workdir) -> StagePlan:
    from specialize.datasets import dataset_name
    from specialize.stages import evaluate

    models, datasets = evaluate.targets(work, cfg)
    outputs = [str(work.eval_file(dataset_name(dataset)).relative_to(work.root)) for dataset in datasets]
    inputs = {f"model_{i}": (work.path(model) if work.path(model).exists() else model) for i, model in enumerate(models)}
    return StagePlan("evaluate", cfg.model_dump(mode="json", include={"evaluate", "prefixes"}) | {"targets": [models, datasets]},
                     inputs, outputs, evaluate.run)


PLANS: dict[str, Callable[[Config, Workdir], StagePlan]] = {
    "prepare": _prepare, "generate": _generate, "mine": _mine, "label": _label, "train": _train, "evaluate": _evaluate,
}


def run_stage(cfg: Config, name: str, force: bool = False) -> dict[str, Any]:
    """Run one stage (or skip it when it is up to date); its manifest, with ``skipped``. Once it succeeds, the
    resolved config is written to ``<workdir>/config.yaml`` (a failing stage leaves the file as it was)."""
    work = Workdir(cfg.workdir)
    plan = PLANS[name](cfg, work)
    for file, stage in plan.needs:
        if not work.path(file).is_file():
            raise SpecializeError(f"{work.path(file)}: not found; run `specialize {stage}` first")
    manifest = work.run_stage(plan.name, plan.config, plan.inputs, plan.outputs, lambda: plan.run(work, cfg), force=force)
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
        work = Workdir(self.config.workdir)
        manifests = {}
        for name in stage_range(start, stop):
            manifests[name] = run_stage(self.config, name, force)
            if on_stage is not None:
                on_stage(name, manifests[name], work.root)
            if name != "train":
                continue
            extra = {**(type_variants(work) if ablate_types else {}), **(variants or {})}
            for variant, settings in extra.items():
                cfg = variant_config(self.config, variant, settings)
                manifests[f"train:{variant}"] = run_stage(cfg, "train", force)
                if on_stage is not None:
                    on_stage(f"train:{variant}", manifests[f"train:{variant}"], Path(cfg.workdir))
        if stop in (None, "evaluate"):
            from specialize.stages.report import report

            report(Path(self.config.workdir))
        return manifests
