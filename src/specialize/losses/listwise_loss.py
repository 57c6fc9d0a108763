"""The CADET training loss: listwise KL distillation from the teacher plus a small false-negative-masked InfoNCE."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from torch import Tensor

from specialize.losses.base import ListLoss, at_least_fp32, check_positive, check_ratio, list_similarities
from specialize.losses.infonce_loss import in_batch_infonce


class ListwiseDistillationLoss(ListLoss):
    def __init__(
        self,
        model: SentenceTransformer,
        teacher_temperature: float = 0.3,
        student_temperature: float = 0.05,
        infonce_weight: float = 0.1,
        infonce_temperature: float = 0.01,
        false_negative_ratio: float | None = 0.6,
    ) -> None:
        """Listwise distillation of a teacher's scores over each query's passages, plus a masked InfoNCE term.

        For query ``i`` with passages ``d_i1 .. d_iP``, teacher scores ``t_ip`` and cosine similarities
        ``s_ip = cos(q_i, d_ip)``::

            loss = KL( softmax(t_i / T_t) || softmax(s_i / T_s) )  averaged over queries (batchmean)
                   + infonce_weight * InfoNCE(T = infonce_temperature)

        The InfoNCE term takes as positive the passage the teacher ranks first in the query's list and
        as negatives *all other passages of the batch*: the query's own lower-ranked passages and every
        passage of every other query (whatever the teacher gave them for their own query: it never
        scored them against this one). Of the query's own passages, those whose teacher score exceeds
        ``false_negative_ratio * top score`` are masked out as likely false negatives. A passage that
        appears more than once in the batch (identical token ids, e.g. the same document mined for two
        queries) is masked wherever it appears if it is this query's positive or one of its masked
        passages, so a copy of the positive is never contrasted against the positive. Passages that
        are merely similar, or relevant to the query without the teacher having scored them, remain
        negatives; in-batch negatives are per device (nothing is gathered across processes).

        Defaults are the papers' (code of arXiv 2502.19712 / 2505.19274): teacher temperature 0.3,
        student temperature 0.05, weight 0.1, InfoNCE temperature 0.01, ratio 0.6. As in that code, the
        KL is *not* multiplied by ``T_s ** 2`` (unlike ``DistillKLDivLoss``), so the weight 0.1 keeps the
        papers' balance between the two terms. Similarity is cosine (embeddings are L2-normalized), and
        the loss is computed in float32 at least (bf16/fp16 embeddings are widened first).

        Args:
            model: The student SentenceTransformer.
            teacher_temperature: Temperature ``T_t`` of the teacher's softmax over its [0, 1] scores.
            student_temperature: Temperature ``T_s`` of the student's softmax over cosine similarities.
            infonce_weight: Weight of the InfoNCE term; 0 leaves the pure listwise KL.
            infonce_temperature: Temperature of the InfoNCE softmax over cosine similarities.
            false_negative_ratio: Mask the query's own passages scoring above this fraction of its top
                teacher score out of the InfoNCE negatives; None masks none.

        References:
            - Tamber et al., Teaching Dense Retrieval Models to Specialize with Listwise Distillation and LLM
              Data Augmentation, https://arxiv.org/abs/2502.19712
            - Tamber et al., Conventional Contrastive Learning Often Falls Short: Improving Dense Retrieval with
              Cross-Encoder Listwise Distillation and Synthetic Data (CADET), https://arxiv.org/abs/2505.19274

        Inputs:
            +----------------------------------------+---------------------------------------+
            | Inputs                                 | Labels                                |
            +========================================+=======================================+
            | (query, passage_0, ..., passage_{P-1}) | teacher scores ``[B, P]``, in [0, 1]  |
            +----------------------------------------+---------------------------------------+

        Relations:
            - The KL term is :class:`sentence_transformers.losses.DistillKLDivLoss` with cosine similarity,
              separate temperatures and no ``T_s ** 2`` factor; the InfoNCE term is :func:`in_batch_infonce`,
              shared with :class:`~specialize.losses.InfoNCELoss`.
            - Wrap in :class:`~specialize.losses.CachedLoss` for large batches at constant memory.
        """
        super().__init__(model)
        for name, value in (
            ("teacher_temperature", teacher_temperature),
            ("student_temperature", student_temperature),
            ("infonce_temperature", infonce_temperature),
        ):
            check_positive(name, value)
        if not infonce_weight >= 0:
            raise ValueError(f"infonce_weight must be non-negative, got {infonce_weight}")
        check_ratio("false_negative_ratio", false_negative_ratio)
        self.teacher_temperature = teacher_temperature
        self.student_temperature = student_temperature
        self.infonce_weight = infonce_weight
        self.infonce_temperature = infonce_temperature
        self.false_negative_ratio = false_negative_ratio

    def compute_loss_from_embeddings(
        self, query: Tensor, passages: Tensor, teacher: Tensor, groups: Tensor | None = None
    ) -> Tensor:
        student_log_probs = F.log_softmax(list_similarities(query, passages) / self.student_temperature, dim=1)
        teacher_log_probs = F.log_softmax(at_least_fp32(teacher) / self.teacher_temperature, dim=1)
        kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
        infonce = in_batch_infonce(
            query, passages, teacher, self.infonce_temperature, self.false_negative_ratio, groups, self.corpus
        )
        return kl + self.infonce_weight * infonce

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "teacher_temperature": self.teacher_temperature,
            "student_temperature": self.student_temperature,
            "infonce_weight": self.infonce_weight,
            "infonce_temperature": self.infonce_temperature,
            "false_negative_ratio": self.false_negative_ratio,
        }

    @property
    def citation(self) -> str:
        return """
@misc{tamber2025teaching,
      title={Teaching Dense Retrieval Models to Specialize with Listwise Distillation and LLM Data Augmentation},
      author={Manveer Singh Tamber and Suleman Kazi and Vivek Sourabh and Jimmy Lin},
      year={2025},
      eprint={2502.19712},
      archivePrefix={arXiv},
      primaryClass={cs.IR},
      url={https://arxiv.org/abs/2502.19712},
}
@misc{tamber2025conventional,
      title={Conventional Contrastive Learning Often Falls Short: Improving Dense Retrieval with Cross-Encoder Listwise Distillation and Synthetic Data},
      author={Manveer Singh Tamber and Suleman Kazi and Vivek Sourabh and Jimmy Lin},
      year={2025},
      eprint={2505.19274},
      archivePrefix={arXiv},
      primaryClass={cs.IR},
      url={https://arxiv.org/abs/2505.19274},
}
"""
