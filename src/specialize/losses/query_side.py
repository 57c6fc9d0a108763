"""Query-side training: any list loss with the passages' fixed embeddings in place of an encoder pass, and the
linear adapter variant (the query encoder frozen too, a residual linear map on its embedding learned)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from specialize.losses.base import ListLoss, at_least_fp32

LABEL_ROWS = 2
"""A query-side label is ``[2, P]``: the teacher's scores, then the passages' rows in the corpus matrix."""


class QuerySideLoss(nn.Module):
    def __init__(self, loss: ListLoss, documents: Tensor, corpus_negatives: bool = True) -> None:
        """Train only the query encoder: a list loss over fixed passage embeddings looked up by corpus row.

        The document side is frozen (the base model's cached corpus embeddings, ``documents``), so no
        passage is encoded in training and every document vector stays valid: a step embeds only the
        ``B`` queries, and ``loss.compute_loss_from_embeddings`` sees the same ``[B, P, d]`` passages it
        would see in full training. ``groups`` are the passages' corpus rows, so copies of a passage
        are recognized exactly. With ``corpus_negatives`` the loss's contrastive term (listwise's
        InfoNCE term, the InfoNCE baseline) contrasts each query's positive with every corpus passage
        instead of the batch's, which costs one ``[B, N]`` product; MarginMSE has no such term.

        Args:
            loss: The list loss; its model is the query encoder being trained.
            documents: ``[N, d]`` embeddings of every corpus passage (normalized or not: losses use cosines).
            corpus_negatives: Contrast with the whole corpus (True) or with the batch's passages (False).

        Inputs:
            +------------+------------------------------------------------------------------+
            | Inputs     | Labels                                                           |
            +============+==================================================================+
            | (query,)   | ``[B, 2, P]`` float64: teacher scores in [0, 1], then corpus rows |
            +------------+------------------------------------------------------------------+
        """
        super().__init__()
        self.loss = loss
        self.model = loss.model
        self.corpus_negatives = corpus_negatives
        self.documents = at_least_fp32(documents.detach())

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        features = list(sentence_features)
        if len(features) != 1 or labels.ndim != 3 or labels.shape[1] != LABEL_ROWS:
            raise ValueError(
                f"QuerySideLoss takes one query column and labels [B, 2, P], got {len(features)} column(s) "
                f"and labels {tuple(labels.shape)}"
            )
        if labels.shape[2] < self.loss.min_passages:
            raise ValueError(f"{type(self.loss).__name__} needs at least {self.loss.min_passages} passage(s) per query")
        query = self.model(features[0])["sentence_embedding"]
        if self.documents.device != query.device:
            self.documents = self.documents.to(query.device)
        rows = labels[:, 1].long()
        self.loss.corpus = self.documents if self.corpus_negatives else None
        scores = labels[:, 0].to(torch.float32)
        return self.loss.compute_loss_from_embeddings(query, self.documents[rows], scores, rows)

    def get_config_dict(self) -> dict[str, Any]:
        return {**self.loss.get_config_dict(), "corpus_negatives": self.corpus_negatives}

    @property
    def citation(self) -> str:
        return self.loss.citation


def with_linear_adapter(model):
    """``model`` frozen, then a trainable residual linear map on its embedding and a normalization.

    The map (sentence-transformers' ``Dense`` with ``use_residual``: ``x + Wx + b``) starts at zero, so the
    adapted model starts as the base; it has ``d × d + d`` weights (148k for a 384-dimensional MiniLM).
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    model.requires_grad_(False)
    dim = model.get_embedding_dimension()
    adapter = Dense(dim, dim, activation_function=nn.Identity(), init_weight=torch.zeros(dim, dim), init_bias=torch.zeros(dim), use_residual=True)
    return SentenceTransformer(modules=[*model, adapter, Normalize()], device=str(model.device))
