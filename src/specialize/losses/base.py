"""What the list losses share: the batch format, its checks, cosine scores and duplicate-passage detection.

A batch is what ``SentenceTransformerTrainer``'s collator makes of a dataset with the columns
``query, passage_0, ..., passage_{P-1}, label``: ``sentence_features`` is ``[query, passage_0, ...,
passage_{P-1}]`` (each a tokenized batch of ``B`` texts) and ``labels`` holds the teacher's scores,
a float tensor ``[B, P]`` normalized to [0, 1]. The teacher's top passage of a row is its argmax,
wherever it sits in the row.

Every loss keeps its math in ``compute_loss_from_embeddings(query [B, d], passages [B, P, d],
teacher [B, P], groups)``, which the plain forward pass, :class:`~specialize.losses.CachedLoss` and
:class:`~specialize.losses.query_side.QuerySideLoss` all call, so the three cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.losses.gradcache import _get_batch_size
from sentence_transformers.base.losses.merged_forward import embed_columns
from torch import Tensor, nn


class ListTargets(NamedTuple):
    """What a list loss needs besides the embeddings."""

    scores: Tensor
    """Teacher scores ``[B, P]``, detached, in at least float32."""
    groups: Tensor | None
    """``[B, P]`` ids, equal for passages with identical token ids; None when they cannot be compared."""


def check_positive(name: str, value: float) -> None:
    """Raise unless ``value`` is a positive finite number."""
    if not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a positive finite number, got {value}")


def check_ratio(name: str, ratio: float | None) -> None:
    """Raise unless ``ratio`` (a fraction of the top teacher score) is None or in [0, 1]."""
    if ratio is not None and not 0.0 <= ratio <= 1.0:
        raise ValueError(f"{name} must be None or in [0, 1], got {ratio}")


def at_least_fp32(x: Tensor) -> Tensor:
    """``x`` in float32, or as it is if wider (float64): half-precision embeddings are widened for the loss."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def unit(x: Tensor) -> Tensor:
    """``x`` L2-normalized along its last axis, in at least float32."""
    return F.normalize(at_least_fp32(x), dim=-1)


def list_similarities(query: Tensor, passages: Tensor) -> Tensor:
    """Cosine similarity of each query ``[B, d]`` with each of its own passages ``[B, P, d]``: ``[B, P]``."""
    return torch.einsum("bd,bpd->bp", unit(query), unit(passages))


def passage_groups(passage_features: list[dict[str, Any]]) -> Tensor | None:
    """Give identical passages (same attended token ids) the same id in a ``[B, P]`` tensor.

    Padding is ignored wherever it sits (left or right, any width), so the same text gets the same
    id in every column. Returns None when a column has no 2-D ``input_ids`` and ``attention_mask``
    (e.g. a StaticEmbedding model's flat token stream); every passage then counts as distinct.
    """
    if not all(
        isinstance(f.get(key), Tensor) and f[key].ndim == 2
        for f in passage_features
        for key in ("input_ids", "attention_mask")
    ):
        return None
    width = max(f["input_ids"].shape[1] for f in passage_features)
    columns = []
    for features in passage_features:
        attended = features["attention_mask"].bool()
        # Move the attended tokens to the front, keeping their order, then blank the rest with -1
        # (never a token id), so "a b" padded left or right, to any width, gives one row.
        order = torch.argsort((~attended).to(torch.int32), dim=1, stable=True)
        ids = features["input_ids"].gather(1, order).masked_fill(~attended.gather(1, order), -1)
        columns.append(F.pad(ids, (0, width - ids.shape[1]), value=-1))
    rows = torch.stack(columns, dim=1)  # [B, P, width]
    _, groups = torch.unique(rows.flatten(0, 1), dim=0, return_inverse=True)
    return groups.view(rows.shape[:2])


class ListLoss(nn.Module):
    """Base class: a loss over each query's list of ``P`` teacher-scored passages (see the module docstring)."""

    min_passages = 2
    """The fewest passage columns the loss is defined for."""

    def __init__(self, model: SentenceTransformer) -> None:
        super().__init__()
        self.model = model
        self.corpus: Tensor | None = None
        """Every corpus passage's fixed embedding ``[N, d]`` (query-side training, see :class:`QuerySideLoss`):
        when set, ``groups`` are rows of it and a contrastive term takes the whole corpus as its negatives."""

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        features = list(sentence_features)
        targets = self.targets(features, labels)
        return self.loss_from_columns(embed_columns(self.model, features), targets)

    def targets(self, features: list[dict[str, Any]], labels: Tensor) -> ListTargets:
        """Check that ``labels`` is ``[B, P]`` for ``features = [query, passage_0, ..., passage_{P-1}]``."""
        num_passages = len(features) - 1
        if num_passages < self.min_passages:
            raise ValueError(
                f"{type(self).__name__} needs at least {self.min_passages} passage column(s), got {num_passages}"
            )
        expected = (_get_batch_size(features[0]), num_passages)
        if tuple(labels.shape) != expected:
            raise ValueError(
                f"{type(self).__name__}: labels must be teacher scores of shape (batch, passages) = {expected}, "
                f"got {tuple(labels.shape)}"
            )
        return ListTargets(at_least_fp32(labels.detach()), passage_groups(features[1:]))

    def loss_from_columns(self, columns: list[Tensor], targets: ListTargets) -> Tensor:
        """The loss from one embedding tensor ``[B, d]`` per column (query first)."""
        passages = torch.stack(columns[1:], dim=1)
        return self.compute_loss_from_embeddings(columns[0], passages, targets.scores, targets.groups)

    def compute_loss_from_embeddings(
        self, query: Tensor, passages: Tensor, teacher: Tensor, groups: Tensor | None = None
    ) -> Tensor:
        """The loss for query embeddings ``[B, d]``, passage embeddings ``[B, P, d]`` and teacher scores ``[B, P]``.

        ``groups`` (``[B, P]``, see :func:`passage_groups`) marks identical passages; None means all distinct.
        """
        raise NotImplementedError

    def get_config_dict(self) -> dict[str, Any]:
        """The loss's settings, for the model card."""
        raise NotImplementedError

    @property
    def citation(self) -> str:
        """The BibTeX entry of the loss's paper, for the model card."""
        raise NotImplementedError
