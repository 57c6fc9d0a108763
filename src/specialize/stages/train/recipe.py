"""How the student is trained: the loss, the learning rate by model size, the trainer's arguments and collator."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import PrinterCallback, TrainerCallback

from specialize.config import TrainConfig
from specialize.losses.base import ListLoss
from specialize.losses.cached import CachedLoss
from specialize.losses.infonce_loss import InfoNCELoss
from specialize.losses.list_margin_mse_loss import ListMarginMSELoss
from specialize.losses.listwise_loss import ListwiseDistillationLoss
from specialize.losses.query_side import QuerySideLoss
from specialize.models import Prefixes
from specialize.progress import progress_bar
from specialize.stages.train.data import QUERY_COLUMN, passage_columns

if TYPE_CHECKING:
    from torch import Tensor

LEARNING_RATES = ((60e6, 5e-5), (200e6, 2e-5), (500e6, 1e-5), (math.inf, 5e-6))
"""(parameter count below which, default learning rate): MiniLM / small, base, large, bigger models."""


QUERY_SIDE_RATE = 0.6
"""Query-side training takes 0.6 of the table's rate (3e-5 for MiniLM), chosen on SciFact's human train claims read by
the gate after training on generated queries: +0.74 nDCG@10 (95% CI +0.07 … +1.42) at 3e-5, −1.69 at the former 1e-4
(``benchmarks/results/query_side_validation.md``). Test, read once afterwards: SciFact generated +0.10 (was −2.90),
MED +1.09 (was +0.64), SciFact's human train claims as queries +3.81 (was +4.31) (``query_side.md``)."""
EPOCHS = {"full": 1.0, "query": 3.0}
"""Epochs when ``train.epochs`` is not set, by mode (query side: three, measured; full: one, the papers')."""


ADAPTER_RATE = 1e-3
"""The linear adapter's learning rate, whatever the student's size (chosen on held-out synthetic queries, query_side.md)."""


def default_learning_rate(parameters: int, mode: str = "full", adapter: str = "none") -> float:
    """The learning rate for a student of this many parameters (see ``LEARNING_RATES``), times ``QUERY_SIDE_RATE`` for the query side;
    ``ADAPTER_RATE`` for a linear adapter."""
    if adapter == "linear":
        return ADAPTER_RATE
    rate = next(rate for ceiling, rate in LEARNING_RATES if parameters < ceiling)
    return rate * QUERY_SIDE_RATE if mode == "query" else rate


def epochs(config: TrainConfig) -> float:
    """``train.epochs``, or the mode's default."""
    return config.epochs or EPOCHS[config.mode]


def build_loss(config: TrainConfig, model, documents: Tensor | None = None) -> tuple[ListLoss, Any]:
    """The configured list loss, and what the trainer gets: the loss itself, the loss in gradient caching, or
    (query mode) the loss over ``documents``, the fixed corpus embeddings."""
    if config.loss == "listwise":
        loss: ListLoss = ListwiseDistillationLoss(
            model, config.teacher_temperature, config.student_temperature, config.infonce_weight,
            config.infonce_temperature, config.false_negative_ratio,
        )
    elif config.loss == "infonce":
        loss = InfoNCELoss(model, config.student_temperature, config.false_negative_ratio)
    else:  # the scale that aims MarginMSE at the listwise loss's optimum (see ListMarginMSELoss)
        loss = ListMarginMSELoss(model, config.teacher_temperature / config.student_temperature)
    if config.mode == "query":
        if documents is None:
            raise ValueError("query mode needs the corpus embeddings")
        return loss, QuerySideLoss(loss, documents, config.corpus_negatives)
    if config.mini_batch_size is not None and config.mini_batch_size < config.batch_size:
        return loss, CachedLoss(loss, config.mini_batch_size)
    return loss, loss


def resolve_precision(precision: str) -> str:
    """``auto`` becomes bf16 on a GPU that supports it and fp32 otherwise."""
    if precision != "auto":
        return precision
    import torch

    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def training_arguments(
    config: TrainConfig, output_dir: Path, prefixes: Prefixes, has_dev: bool
):
    """The trainer's arguments: optimizer, schedule, precision, evaluation, checkpoints, prompts, logging.

    Building them starts torchrun's process group and picks this process's device. The learning
    rate and the warmup depend on the model and the device count: the caller sets them.
    """
    import torch
    from sentence_transformers import SentenceTransformerTrainingArguments

    passages = passage_columns(config.passages_per_query) if config.mode == "full" else []  # query mode: cached vectors
    prompts = {QUERY_COLUMN: prefixes.query} if prefixes.query else {}
    prompts.update({name: prefixes.passage for name in passages if prefixes.passage})
    precision = resolve_precision(config.precision)
    return SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs(config),
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        weight_decay=config.weight_decay,
        lr_scheduler_type="linear",
        max_grad_norm=config.max_grad_norm,
        optim="adamw_torch",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        eval_strategy="steps" if has_dev else "no",
        eval_steps=_steps(config.eval_steps),
        save_strategy="steps",
        save_steps=_steps(config.eval_steps),
        save_total_limit=2,  # the best and the latest
        load_best_model_at_end=has_dev,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=_steps(config.logging_steps),
        disable_tqdm=True,  # StepProgress shows the steps
        prompts=prompts or None,
        # Tasks pick each column's maximum length in the collator (see `collator`).
        router_mapping={QUERY_COLUMN: "query", **{name: "document" for name in passages}},
        report_to=config.report_to,
        seed=config.seed,
        dataloader_pin_memory=torch.cuda.is_available(),
        # Without a GPU, accelerate runs torchrun's processes as DDP over gloo only when told to use the CPU.
        use_cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
    )


def _steps(value: float) -> float | int:
    """A step interval as the trainer wants it: a share of the run below 1, else a whole number of steps."""
    return value if value < 1 else int(value)


def collator(model, args, max_lengths: tuple[int, int]):
    """The library's collator, cutting queries and passages at their own maximum lengths (by column task)."""
    from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

    query_length, passage_length = max_lengths
    return SentenceTransformerDataCollator(
        preprocess_fn=model.preprocess,
        prompts=args.prompts,
        router_mapping=args.router_mapping,
        max_length={"query": query_length, "document": passage_length},
    )


WARMUP_MAX_SHARE = 0.25
"""At most this share of a run warms up: a short run must not spend its few steps at a learning rate near 0."""


def warmup_steps(config: TrainConfig, train_queries: int, devices: int) -> int:
    """``warmup_epochs`` in optimizer steps, at most ``WARMUP_MAX_SHARE`` of the run's steps (none under 4 steps)."""
    per_epoch = math.ceil(train_queries / (config.batch_size * devices))
    total = config.max_steps or math.ceil(epochs(config) * per_epoch)
    return min(round(config.warmup_epochs * per_epoch), int(WARMUP_MAX_SHARE * total))


class StepProgress(TrainerCallback):
    """The trainer's steps in the project's one progress style; the trainer's own tqdm bars and printed log dicts are off
    (``disable_tqdm``, and ``quiet_trainer`` removes its ``PrinterCallback``)."""

    def __init__(self) -> None:
        self._bar: contextlib.ExitStack | None = None
        self._advance: Callable[[int], None] | None = None

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        if state.is_world_process_zero:
            self._bar = contextlib.ExitStack()
            self._advance = self._bar.enter_context(progress_bar("training", total=state.max_steps, unit="steps"))
            self._advance(state.global_step)  # resumed from a checkpoint

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if self._advance is not None:
            self._advance(1)

    def on_train_end(self, args, state, control, **kwargs) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = self._advance = None


def quiet_trainer(trainer) -> None:
    """The trainer reports through ``StepProgress`` only: no printed log dicts (its logs still reach train_log.json
    and the loggers of ``report_to``)."""
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(StepProgress())
