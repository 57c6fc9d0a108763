"""The train stage: train the student (query side or in full) on the teacher's lists; publish it only if the gate says so.

sentence-transformers' ``SentenceTransformerTrainer`` (the Hugging Face Trainer) does the training:
AdamW, warmup then linear decay, gradient clipping, bf16/fp16, DDP under ``torchrun`` or
``accelerate launch``, checkpoints and resuming, early stopping on the dev loss with the best
checkpoint loaded at the end, its progress bar, logging integrations (TensorBoard, W&B... when
installed) and the model card. ``recipe`` sets it up (loss, learning rate, arguments, collator);
this module reads the data, guards resuming, builds the query-side model (the trained query encoder and the
frozen base as its document route), and runs the publish gate (``gate``) before publishing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from specialize.artifacts import fingerprint, finished_with_key
from specialize.config import Config, PrefixConfig, TrainConfig
from specialize.counts import BY_TYPE
from specialize.datasets import JUDGED_SPLITS, judged_queries
from specialize.encoder import encode_corpus, load_encoder
from specialize.errors import SpecializeError
from specialize.losses.cached import CachedLoss
from specialize.losses.query_side import with_linear_adapter
from specialize.metrics import Qrels
from specialize.models import Prefixes, model_prefixes, record_document_route
from specialize.progress import stderr
from specialize.records import CheckpointKey, Gate, Selection, TrainLog, TrainSummary, read_corpus, read_queries
from specialize.stages.train.card import add_to_card, card_section, kept_base_section
from specialize.stages.train.data import ScoredList, check_docs, list_dataset, query_side_dataset, read_lists, training_subset, type_counts
from specialize.stages.train.gate import decide, held_out_qrels, judged_gate_queries, retrieval_ndcg
from specialize.stages.train.recipe import build_loss, collator, default_learning_rate, quiet_trainer, resolve_precision, training_arguments, warmup_steps
from specialize.teachers import AUTO
from specialize.workdir import Workdir

TRAINER_STATE = "trainer_state.json"
NOT_TRAINING_SETTINGS = {"resume", "keep_worse", "force_train", "output", "report_to", "gate_min_queries", "gate_margin", "gate_confidence"}
"""TrainConfig fields that do not change what a checkpoint holds (resuming ignores them)."""


def run_key(config: TrainConfig, prefixes: Prefixes, workdir: Path) -> str:
    """What a checkpoint depends on: the training settings, the prefixes and the three input files."""
    settings = config.model_dump(mode="json", exclude=NOT_TRAINING_SETTINGS)
    digest = hashlib.sha256(json.dumps([settings, asdict(prefixes)], sort_keys=True).encode())
    work = Workdir(workdir)
    for path in (work.corpus, work.train, work.dev):
        digest.update(fingerprint(path).encode())
    return digest.hexdigest()


def prepare_checkpoints(folder: Path, key: str, resume: bool, is_main: bool) -> Path | None:
    """Check that a resumed run matches its checkpoints and return the newest complete one; start a fresh run with an
    empty folder (None).

    A checkpoint is complete once the trainer wrote its state, the last of its files: a kill while it saved leaves a
    folder without it, which a resume skips (and the first process deletes, saying so).
    """
    if not resume:
        if is_main:
            shutil.rmtree(folder, ignore_errors=True)
            CheckpointKey(key=key).write(folder / Workdir.CHECKPOINT_KEY)
        return None
    saved = CheckpointKey.read_if_there(folder / Workdir.CHECKPOINT_KEY)
    found = sorted((path for path in folder.glob("checkpoint-*") if path.is_dir() and path.name[11:].isdigit()), key=lambda path: int(path.name[11:]))
    if not found:
        raise SpecializeError(f"{folder}: no checkpoint to resume from; run without --resume")
    if saved is None or saved.key != key:
        raise SpecializeError(f"{folder}: the checkpoints come from another train config or other data; run without --resume to start afresh")
    complete = [path for path in found if _complete_checkpoint(path)]
    for path in found:
        if path not in complete and is_main:
            stderr.print(f"train: {path} is incomplete (killed while saving?): deleted, resuming from the one before", highlight=False)
            shutil.rmtree(path, ignore_errors=True)
    if not complete:
        raise SpecializeError(f"{folder}: no complete checkpoint to resume from (each was killed while saving); run without --resume")
    return complete[-1]


def _complete_checkpoint(path: Path) -> bool:
    """Whether the trainer finished saving ``path``: its state, written last, is whole."""
    try:
        return "global_step" in json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


@dataclass(frozen=True)
class TrainingData:
    """The checked train and dev lists, and the text of every passage they name."""

    train: list[ScoredList]
    dev: list[ScoredList]
    texts: dict[str, str]

    def counts(self) -> dict[str, Any]:
        """Queries in each split, in all and per query type."""
        return {
            "train_queries": len(self.train), "dev_queries": len(self.dev),
            "train_types": type_counts(self.train), "dev_types": type_counts(self.dev),
        }


@dataclass(frozen=True)
class Embedding:
    """How queries and passages are embedded, in training."""

    prefixes: Prefixes
    max_lengths: tuple[int, int]
    """(query, passage) tokens: the configured lengths capped by the model's own limit."""


@dataclass(frozen=True)
class FrozenDocuments:
    """Query mode's document side: the base student, never trained, and its embedding of every corpus passage."""

    model: Any
    """The base SentenceTransformer: the published model's document route."""
    position: dict[str, int]
    """Corpus row of each doc id."""
    vectors: np.ndarray
    """``[N, d]`` normalized embeddings, from the cache that ``mine`` and ``evaluate`` share."""

    @classmethod
    def load(cls, workdir: Path, student: str, overrides: Mapping[str, Any]) -> FrozenDocuments:
        """The base and its corpus embeddings (at its own maximum length, as mine made them: usually a cache hit)."""
        ids, texts = read_corpus(Workdir(workdir).corpus)
        encoder = load_encoder(student, "torch", None, dict(overrides))
        vectors = encode_corpus(encoder, ids, texts, label=f"{student} · corpus")
        return cls(encoder.model, {doc: row for row, doc in enumerate(ids)}, vectors)

    def tensor(self):
        """The embeddings as a float32 tensor (shared memory with the array)."""
        import torch

        return torch.from_numpy(self.vectors)

    def with_query_route(self, trained):
        """One SentenceTransformer: ``trained`` for queries (``encode_query``), the base for documents (``encode_document``)."""
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Router

        router = Router.for_query_document(query_modules=list(trained), document_modules=list(self.model))
        return SentenceTransformer(modules=[router], device=str(trained.device))


def load_data(workdir: Path, config: TrainConfig) -> TrainingData:
    """``train.jsonl`` (the configured subset) and ``dev.jsonl``, lists of at least ``passages_per_query``, and their texts."""
    size = config.passages_per_query
    work = Workdir(workdir)
    train_path, dev_path = work.train, work.dev
    train_rows, dev_rows = read_lists(train_path, size), read_lists(dev_path, size)
    if not train_rows:
        raise SpecializeError(f"{train_path}: no training queries; rerun `specialize label` with more queries")
    train_rows = training_subset(train_rows, config.types, config.max_queries, config.seed)
    needed = {doc for row in (*train_rows, *dev_rows) for doc in row.doc_ids}
    texts = dict(zip(*read_corpus(work.corpus, needed)))
    check_docs(train_path, train_rows, texts)
    check_docs(dev_path, dev_rows, texts)
    return TrainingData(train_rows, dev_rows, texts)


def train(
    workdir: Path,
    config: TrainConfig,
    prefixes: Mapping[str, PrefixConfig] | None = None,
    teacher: str | None = None,
    callbacks: Sequence[Any] = (),
    judged: tuple[str, Mapping[str, str], Qrels] | None = None,
) -> dict[str, Any]:
    """Train the student on ``train.jsonl`` (early stopping on ``dev.jsonl``), publish it, and return the manifest counts.

    Writes ``<config.output>/`` (a SentenceTransformer folder with its model card), ``train.json``
    (the summary) and ``train_log.json`` (the trainer's log history: training and dev loss by step).
    ``teacher`` names the labels' teacher for the card; ``callbacks`` are extra trainer callbacks
    (tests); ``judged`` (split, queries, qrels), the corpus source's dev or train queries, are the gate's when given.
    Under ``torchrun`` every process runs this; the first one checks and publishes.
    """
    from sentence_transformers import SentenceTransformerTrainer
    from transformers import EarlyStoppingCallback

    size = config.passages_per_query
    data = load_data(workdir, config)
    overrides = prefixes or {}
    work = Workdir(workdir)
    selection = Selection.read_if_there(work.selection)
    if selection is not None and selection.headroom is False and not config.force_train:
        return keep_base(workdir, config, overrides, data, teacher, selection)
    args = training_arguments(config, work.checkpoints, model_prefixes(config.student, overrides), bool(data.dev))
    student = load_encoder(config.student, "torch", None, overrides)  # after the arguments: on this process's device
    model = with_linear_adapter(student.model) if config.adapter == "linear" else student.model
    limit = model.max_seq_length or max(config.query_max_length, config.passage_max_length)
    passage_length = limit if config.mode == "query" else min(config.passage_max_length, limit)  # query: as cached
    embedding = Embedding(student.prefixes, (min(config.query_max_length, limit), passage_length))
    parameters = sum(p.numel() for p in model.parameters())
    args.learning_rate = config.learning_rate or default_learning_rate(parameters, config.mode, config.adapter)
    args.warmup_steps = warmup_steps(config, len(data.train), args.world_size)
    checkpoint = prepare_checkpoints(work.checkpoints, run_key(config, embedding.prefixes, workdir), config.resume, args.process_index == 0)
    if config.mode == "query":
        frozen = FrozenDocuments.load(workdir, config.student, overrides)
        loss, trainer_loss = build_loss(config, model, frozen.tensor())
        datasets = [query_side_dataset(rows, frozen.position, size) for rows in (data.train, data.dev)]
    else:
        frozen = None
        loss, trainer_loss = build_loss(config, model)
        datasets = [list_dataset(rows, data.texts, size) for rows in (data.train, data.dev)]
    stopping = [EarlyStoppingCallback(config.early_stopping_patience)] if data.dev and config.early_stopping_patience else []
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=datasets[0],
        eval_dataset=datasets[1] if data.dev else None,
        loss=trainer_loss,
        data_collator=collator(model, args, embedding.max_lengths),
        callbacks=[*stopping, *callbacks],
    )
    quiet_trainer(trainer)
    facts = {
        "student": config.student,
        "parameters": parameters,
        "trained_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "teacher": teacher,
        "mode": config.mode,
        "loss": config.loss,
        "loss_parameters": loss.get_config_dict(),
        "hyperparameters": hyperparameters(config, args, embedding, cached=isinstance(trainer_loss, CachedLoss)),
        **data.counts(),
    }
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    facts["train_seconds"] = round(time.perf_counter() - started, 2)
    if trainer.is_world_process_zero():
        trained = trainer.model if frozen is None else frozen.with_query_route(trainer.model)
        final = work.model(config.output)
        staging = final.with_name(f".{final.name}.staging")
        save_model(trained, embedding.prefixes, staging, config.student if frozen is not None else None)
        gate = run_gate(config, staging, data, workdir, overrides, judged)
        state = trainer.state
        summary = TrainSummary(
            **facts, published="trained" if gate.decision == "trained" or config.keep_worse else "base", verdict=verdict(gate, config.keep_worse),
            gate=gate, output=config.output, steps=state.global_step, epochs_run=round(state.epoch or 0.0, 4), best_dev_loss=state.best_metric,
            best_step=state.best_global_step, best_checkpoint=state.best_model_checkpoint,
        )
        stderr.print(f"[bold]train[/bold]: {summary.verdict}", highlight=False, soft_wrap=True)
        if summary.published == "base":  # its corpus embeddings stay the base's: nothing is embedded again
            base = load_encoder(config.student, "torch", None, overrides).model
            save_model(base if frozen is None else frozen.with_query_route(base), embedding.prefixes, staging, config.student)
        add_to_card(staging, card_section(summary, selection, work))
        replace_folder(staging, final)
        TrainLog(whole_run_loss(state.log_history)).write(work.train_log)
        summary.write(work.summary)
    trainer.accelerator.wait_for_everyone()
    return manifest_counts(TrainSummary.read(work.summary))


def whole_run_loss(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trainer's log, its closing ``train_loss`` made the run's: the mean of the logged losses, each weighted by
    the steps it covers. (The trainer averages only the steps since the last resume.)"""
    steps, total, last = 0, 0.0, 0
    for entry in history:
        if "loss" in entry and "step" in entry:
            total += entry["loss"] * (entry["step"] - last)
            steps, last = steps + entry["step"] - last, entry["step"]
    return [{**entry, "train_loss": total / steps} if "train_loss" in entry and steps else entry for entry in history]


def keep_base(
    workdir: Path, config: TrainConfig, overrides: Mapping[str, Any], data: TrainingData, teacher: str | None, selection: Selection,
) -> dict[str, Any]:
    """No teacher beats the student: publish the base untrained (its corpus embeddings stay shared) and say why."""
    work = Workdir(workdir)
    base = load_encoder(config.student, "torch", None, dict(overrides))
    final = work.model(config.output)
    staging = final.with_name(f".{final.name}.staging")
    save_model(base.model, base.prefixes, staging, config.student)
    summary = TrainSummary(
        student=config.student, parameters=sum(p.numel() for p in base.model.parameters()), trained_parameters=0, teacher=teacher, mode="none",
        published="base", verdict=f"Not trained: {selection.reason}.", selection=selection, output=config.output, steps=0, **data.counts(),
    )
    stderr.print(f"[bold]train[/bold]: {summary.verdict}", highlight=False, soft_wrap=True)
    add_to_card(staging, kept_base_section(summary, work))
    replace_folder(staging, final)
    TrainLog([]).write(work.train_log)
    summary.write(work.summary)
    return manifest_counts(summary)


def hyperparameters(config: TrainConfig, args, embedding: Embedding, cached: bool) -> dict[str, Any]:
    """The settings a reader of the model card needs, as the trainer used them."""
    return {
        "learning_rate": args.learning_rate,
        "learning_rate_source": "set" if config.learning_rate else "default for its parameter count and mode",
        "batch_size": config.batch_size,
        "mini_batch_size": config.mini_batch_size if cached else None,
        "passages_per_query": config.passages_per_query,
        "devices": args.world_size,
        "warmup_steps": args.warmup_steps,
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm,
        "query_max_length": embedding.max_lengths[0],
        "passage_max_length": embedding.max_lengths[1],
        "corpus_negatives": config.corpus_negatives if config.mode == "query" else None,
        "adapter": config.adapter if config.mode == "query" else None,
        "precision": resolve_precision(config.precision),
        "seed": config.seed,
    }


def run_gate(
    config: TrainConfig, candidate: Path, data: TrainingData, workdir: Path, overrides: Mapping[str, Any],
    judged: tuple[str, Mapping[str, str], Qrels] | None = None,
) -> Gate:
    """The publish gate (see ``stages/train/gate.py``) for the model saved at ``candidate`` against the base student:
    on ``judged`` queries (split, queries, qrels) the run did not train on when there are any, else on dev.jsonl."""
    corpus = read_corpus(Workdir(workdir).corpus)
    gate_queries = judged_gate_queries(judged, {row.query for row in data.train}, set(corpus[0])) if judged else None
    if gate_queries and gate_queries[1]:
        basis, texts, qrels = gate_queries
    else:
        queries = Workdir(workdir).queries  # absent when lists were written by hand: the teacher's top is then relevant
        sources = {query["qid"]: query["source_id"] for query in read_queries(queries)} if queries.is_file() else {}
        basis, texts, qrels = "held-out", {row.qid: row.query for row in data.dev}, held_out_qrels(data.dev, sources)
    scores = {
        name: retrieval_ndcg(load_encoder(model, "torch", None, dict(overrides)), texts, qrels, corpus) if texts else {}
        for name, model in (("base", config.student), ("trained", str(candidate)))
    }
    return decide(scores["base"], scores["trained"], config.gate_min_queries, config.gate_margin, config.gate_confidence, config.seed, basis)


def save_model(model, prefixes: Prefixes, folder: Path, document_base: str | None = None) -> None:
    """Save ``model`` to ``folder`` (replacing it) with its prefixes as prompts; ``document_base`` names the base whose
    passage embeddings it gives, a query-side model's document route or the base itself (recorded for the embedding cache)."""
    shutil.rmtree(folder, ignore_errors=True)
    if prefixes.query:
        model.prompts["query"] = prefixes.query
    if prefixes.passage:
        model.prompts["document"] = prefixes.passage
    model.save_pretrained(str(folder))
    if document_base is not None:
        record_document_route(folder, document_base)


def verdict(gate: Gate, keep_worse: bool) -> str:
    """One plain sentence on what was published and why."""
    if gate.decision == "base" and keep_worse:
        return f"Publish gate: {gate.reason}; the trained model is published anyway (--keep-worse)."
    return f"Publish gate: {gate.reason}."


def replace_folder(staging: Path, final: Path) -> None:
    """Move a finished folder onto ``final``, replacing what was there, never leaving a half-written one."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def labels_teacher(workdir: Path, teacher: str | list[str]) -> str | None:
    """The teacher spec if ``labels.jsonl`` was scored by it with the current inputs (its key says so), else None;
    ``auto``: the teacher the selection chose."""
    from specialize.teachers import parse_teacher

    work = Workdir(workdir)
    if not all(path.is_file() for path in (work.corpus, work.queries, work.candidates)):
        return None
    if teacher == AUTO:
        selection = Selection.read_if_there(work.selection)
        if selection is None:
            return None
        teacher = selection.chosen
    spec = str(parse_teacher(teacher))
    return spec if finished_with_key(work.labels, work.labels_key(spec)) else None


def manifest_counts(summary: TrainSummary) -> dict[str, Any]:
    """The stage manifest's counts: data sizes per type, steps, the gate's numbers and what was published."""
    counts: dict[str, Any] = {"train_queries": summary.train_queries, "dev_queries": summary.dev_queries}
    types = {"train": summary.train_types, "dev": summary.dev_types}
    counts[BY_TYPE] = {kind: {split: types[split].get(kind, 0) for split in types} for kind in sorted({*summary.train_types, *summary.dev_types})}
    counts["steps"] = summary.steps
    if summary.hyperparameters is not None:
        counts["learning_rate"] = summary.hyperparameters["learning_rate"]
    if summary.best_dev_loss is not None:
        counts["best_dev_loss"] = round(summary.best_dev_loss, 6)
    if summary.gate is not None:
        gate = summary.gate
        counts.update({f"gate_{key}": round(value, 4) for key, value in
                       (("base", gate.base), ("trained", gate.trained), ("delta", gate.delta), ("ci_low", gate.ci_low), ("ci_high", gate.ci_high))})
        counts["gate_queries"] = gate.queries
    counts["published"] = summary.published
    return counts


def run(work: Workdir, config: Config) -> dict[str, Any]:
    """The stage as the pipeline runs it: the corpus source's judged dev/train queries, when it has them, are the publish gate's."""
    return train(work.root, config.train, config.prefixes, teacher=labels_teacher(work.root, config.label.teacher),
                 judged=judged_queries(config.prepare.corpus, JUDGED_SPLITS))
