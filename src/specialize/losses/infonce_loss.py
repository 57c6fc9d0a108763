"""InfoNCE over in-batch and hard negatives, positive = the teacher's top passage, optional denoising."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from torch import Tensor

from specialize.losses.base import ListLoss, check_positive, check_ratio, unit


def in_batch_infonce(
    query: Tensor,
    passages: Tensor,
    teacher: Tensor,
    temperature: float,
    drop_ratio: float | None = None,
    groups: Tensor | None = None,
    corpus: Tensor | None = None,
) -> Tensor:
    """InfoNCE of each query's teacher-top passage against every other passage of the batch, or of the corpus.

    For query ``i`` with positive ``p_i`` (the argmax of ``teacher[i]``), over the cosine similarities
    ``s(i, j)`` with all ``B * P`` passages of the batch::

        loss_i = -s(i, p_i) / T + log sum_{j kept} exp(s(i, j) / T),   loss = mean_i loss_i

    The positive is always kept. A passage is left out of query ``i``'s sum when it is identical
    (same ``groups`` id) to ``p_i`` or, if ``drop_ratio`` is set, to a passage of query ``i``'s own list
    whose teacher score is above ``drop_ratio * teacher[i, p_i]`` (a likely false negative). Every other
    passage is a negative: the rest of the query's own list and all other queries' passages, which the
    teacher never scored against query ``i``. Memory grows as ``B * B * P`` (the logits and the mask).

    With ``corpus`` (``[N, d]``: every passage's embedding, as in query-side training where the document
    vectors are fixed), ``groups`` are the passages' rows in it and the sum runs over all ``N`` corpus
    passages instead of the batch's, with the same positive and the same masking; memory grows as ``B * N``.

    Args:
        query: Query embeddings ``[B, d]``.
        passages: Passage embeddings ``[B, P, d]``.
        teacher: Teacher scores ``[B, P]``, expected non-negative (the ratio rule compares to the top score).
        temperature: Softmax temperature ``T``.
        drop_ratio: Mask the query's own passages scoring above this fraction of its top score; None keeps them.
        groups: ``[B, P]`` ids equal for identical passages (see ``passage_groups``); None means all distinct.
            Required with ``corpus``: the passages' rows in it.
        corpus: ``[N, d]`` embeddings of every passage, the negatives in place of the batch's; None: the batch's.
    """
    batch, num_passages = teacher.shape
    rows = torch.arange(batch, device=teacher.device)
    top = teacher.argmax(dim=1)
    excluded_own = F.one_hot(top, num_passages).bool()
    if drop_ratio is not None:
        excluded_own |= teacher > drop_ratio * teacher.amax(dim=1, keepdim=True)
    if corpus is not None:
        if groups is None:
            raise ValueError("corpus negatives need groups: each passage's row in the corpus")
        candidates, positive = corpus, groups[rows, top]
        candidate_groups, count = torch.arange(len(corpus), device=teacher.device), len(corpus)
    else:
        if groups is None:
            groups = torch.arange(batch * num_passages, device=teacher.device).view(batch, num_passages)
        candidates, positive = passages.flatten(0, 1), rows * num_passages + top
        candidate_groups, count = groups.flatten(), int(groups.max()) + 1
    logits = unit(query) @ unit(candidates).T / temperature  # [B, candidates]
    # excluded[i, g]: query i leaves out every passage of group g.
    excluded = torch.zeros(batch, count, dtype=torch.bool, device=teacher.device)
    excluded[rows[:, None].expand_as(groups)[excluded_own], groups[excluded_own]] = True
    masked = excluded[:, candidate_groups]
    masked[rows, positive] = False
    return F.cross_entropy(logits.masked_fill(masked, float("-inf")), positive)


class InfoNCELoss(ListLoss):
    min_passages = 1

    def __init__(
        self, model: SentenceTransformer, temperature: float = 0.05, denoise_ratio: float | None = None
    ) -> None:
        """Contrastive baseline: InfoNCE with the teacher's top passage as positive, hard and in-batch negatives.

        For query ``i`` with positive ``p_i = argmax_p teacher[i, p]`` and cosine similarities ``s``::

            loss = mean_i [ -s(q_i, p_i) / T + log sum_j exp(s(q_i, d_j) / T) ]

        where ``d_j`` runs over all ``B * P`` passages of the batch: the query's own lower-ranked
        passages (hard negatives), every other query's passages (in-batch negatives) and ``p_i`` itself.
        Left out of the sum: copies of ``p_i`` (identical token ids) anywhere in the batch and, with
        ``denoise_ratio`` set, any of the query's own passages whose teacher score exceeds
        ``denoise_ratio * teacher[i, p_i]``, together with their copies (negative denoising with the
        teacher, as RocketQA and NV-Retriever's positive-aware mining do). Other queries' passages are
        never denoised: the teacher has not scored them against this query.

        The default temperature 0.05 equals sentence-transformers' ``MultipleNegativesRankingLoss``
        default (``scale=20``) for cosine similarity, the usual setting for fine-tuning such models. The
        listwise loss's auxiliary InfoNCE term uses 0.01, a much sharper softmax that suits a term
        weighted 0.1 next to the KL; pass ``temperature=0.01`` to train with that alone.

        Args:
            model: The student SentenceTransformer.
            temperature: Softmax temperature ``T`` over cosine similarities (``1 / scale`` in MNRL terms).
            denoise_ratio: Drop the query's own hard negatives scoring above this fraction of its top
                teacher score; None (default) keeps every hard negative.

        References:
            - InfoNCE: Oord et al., Representation Learning with Contrastive Predictive Coding,
              https://arxiv.org/abs/1807.03748
            - The InfoNCE baseline with hard negatives and denoising: https://arxiv.org/abs/2502.19712
            - Denoising hard negatives with a cross-encoder: RocketQA, https://arxiv.org/abs/2010.08191
            - Positive-aware false-negative removal: NV-Retriever, https://arxiv.org/abs/2407.15831

        Inputs:
            +----------------------------------------+---------------------------------------+
            | Inputs                                 | Labels                                |
            +========================================+=======================================+
            | (query, passage_0, ..., passage_{P-1}) | teacher scores ``[B, P]``, in [0, 1]  |
            +----------------------------------------+---------------------------------------+

        Relations:
            - :class:`sentence_transformers.losses.MultipleNegativesRankingLoss` with hard negatives, except that
              the positive is chosen by the teacher and high-scoring hard negatives can be dropped.
            - Wrap in :class:`~specialize.losses.CachedLoss` for large batches at constant memory.
        """
        super().__init__(model)
        check_positive("temperature", temperature)
        check_ratio("denoise_ratio", denoise_ratio)
        self.temperature = temperature
        self.denoise_ratio = denoise_ratio

    def compute_loss_from_embeddings(
        self, query: Tensor, passages: Tensor, teacher: Tensor, groups: Tensor | None = None
    ) -> Tensor:
        return in_batch_infonce(query, passages, teacher, self.temperature, self.denoise_ratio, groups, self.corpus)

    def get_config_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "denoise_ratio": self.denoise_ratio}

    @property
    def citation(self) -> str:
        return """
@misc{oord2018representation,
      title={Representation Learning with Contrastive Predictive Coding},
      author={Aaron van den Oord and Yazhe Li and Oriol Vinyals},
      year={2018},
      eprint={1807.03748},
      archivePrefix={arXiv},
      primaryClass={cs.LG},
      url={https://arxiv.org/abs/1807.03748},
}
"""
