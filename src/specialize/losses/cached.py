"""Gradient caching (GradCache) for any list loss: large batches at the memory of one mini-batch."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from sentence_transformers.base.losses.gradcache import CachedLossMixin, _validate_mini_batch_num_tokens, has_static_embedding_input
from torch import Tensor, nn

from specialize.losses.base import ListLoss, ListTargets


class CachedLoss(CachedLossMixin, nn.Module):
    def __init__(
        self,
        loss: ListLoss,
        mini_batch_size: int = 32,
        mini_batch_num_tokens: int | None = None,
        show_progress_bar: bool = False,
    ) -> None:
        """Wrap a list loss in GradCache, so the batch size no longer bounds memory.

        The wrapped loss is computed over the whole batch (all queries, all passages, all in-batch
        negatives), but texts are embedded ``mini_batch_size`` at a time, in three steps
        (sentence-transformers' :class:`~sentence_transformers.base.losses.gradcache.CachedLossMixin`):
        (1) embed every mini-batch without a graph, (2) compute the loss on those embeddings and
        back-propagate it to them, caching their gradients, (3) during the outer ``backward()``,
        re-embed each mini-batch with a graph, replaying its random state, and back-propagate the
        cached gradients. The loss value and the gradients equal the unwrapped loss's (up to
        floating-point rounding; dropout masks are replayed, not shared with an unwrapped run).
        Each text is embedded twice (once without a graph), so a step takes longer than unwrapped.

        Args:
            loss: The loss to wrap, e.g. ``ListwiseDistillationLoss(model)``; its model is the one trained.
            mini_batch_size: Texts embedded per forward pass; the memory knob.
            mini_batch_num_tokens: If set, pack mini-batches by non-padding token count instead.
            show_progress_bar: Show a progress bar over the mini-batches.

        References:
            - Gao et al., Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup,
              https://arxiv.org/abs/2101.06983

        Example:
            ::

                loss = CachedLoss(ListwiseDistillationLoss(model), mini_batch_size=16)
                trainer = SentenceTransformerTrainer(model=model, train_dataset=train, loss=loss)
        """
        super().__init__()
        if has_static_embedding_input(loss.model):
            raise ValueError("CachedLoss cannot split a StaticEmbedding model's inputs into mini-batches")
        if isinstance(mini_batch_size, bool) or not isinstance(mini_batch_size, int) or mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be a positive integer, got {mini_batch_size!r}")
        _validate_mini_batch_num_tokens(mini_batch_num_tokens)
        self.loss = loss
        self.model = loss.model
        self.mini_batch_size = mini_batch_size
        self.mini_batch_num_tokens = mini_batch_num_tokens
        self.show_progress_bar = show_progress_bar

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        features = list(sentence_features)
        # CachedLossMixin hands ``labels`` to calculate_loss untouched; its ``Tensor | None`` annotation is narrower than that.
        return self.forward_cached(features, self.loss.targets(features, labels))  # type: ignore[arg-type]

    def calculate_loss(  # type: ignore[override]  # labels: ListTargets through forward_cached, as above
        self, reps: list[list[Tensor]], labels: ListTargets, *, with_backward: bool = False
    ) -> Tensor:
        """The wrapped loss on the concatenated mini-batch embeddings; back-propagated to them if ``with_backward``."""
        loss = self.loss.loss_from_columns([torch.cat(column) for column in reps], labels)
        if with_backward:
            loss.backward()
            loss = loss.detach()
        return loss

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "mini_batch_size": self.mini_batch_size,
            "mini_batch_num_tokens": self.mini_batch_num_tokens,
        }

    @property
    def citation(self) -> str:
        return """
@misc{gao2021scaling,
    title={Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup},
    author={Luyu Gao and Yunyi Zhang and Jiawei Han and Jamie Callan},
    year={2021},
    eprint={2101.06983},
    archivePrefix={arXiv},
    primaryClass={cs.LG}
}
"""

