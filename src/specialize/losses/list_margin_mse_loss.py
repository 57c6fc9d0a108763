"""MarginMSE as GPL trains with it, positive = the teacher's top passage, every other passage a negative."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from torch import Tensor

from specialize.losses.base import ListLoss, at_least_fp32, check_positive, list_similarities


class ListMarginMSELoss(ListLoss):
    def __init__(self, model: SentenceTransformer, scale: float = 6.0) -> None:
        """Pairwise distillation baseline: match the student's margins to the teacher's (GPL's loss).

        For query ``i`` with positive ``p_i = argmax_p t_ip`` (the teacher's top passage) and each other
        passage ``n`` of its list::

            loss = mean_{i, n != p_i} ( scale * (s_i,p_i - s_i,n) - (t_i,p_i - t_i,n) ) ** 2

        with ``s`` the cosine similarity and ``t`` the teacher scores. Only the query's own list is
        used: no in-batch negatives.

        GPL pairs a dot-product student with a cross-encoder's raw logits, whose margins span several
        units. Our teacher scores are normalized to [0, 1] and the student uses cosine similarity, so
        the margins live on different scales; ``scale`` multiplies the student's cosine margins. Its
        default 6.0 is the listwise loss's ``teacher_temperature / student_temperature`` (0.3 / 0.05):
        the KL of :class:`~specialize.losses.ListwiseDistillationLoss` is minimal exactly when every
        margin satisfies ``(s_p - s_n) / 0.05 = (t_p - t_n) / 0.3``, which is where this loss is zero,
        so the two baselines aim at the same student scores and differ only in how they get there.

        Args:
            model: The student SentenceTransformer.
            scale: Multiplier of the student's cosine margins before comparing them to the teacher's.

        References:
            - Hofstätter et al., Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge
              Distillation, https://arxiv.org/abs/2010.02666
            - Wang et al., GPL: Generative Pseudo Labeling for Unsupervised Domain Adaptation of Dense
              Retrieval, https://arxiv.org/abs/2112.07577

        Inputs:
            +----------------------------------------+---------------------------------------+
            | Inputs                                 | Labels                                |
            +========================================+=======================================+
            | (query, passage_0, ..., passage_{P-1}) | teacher scores ``[B, P]``, in [0, 1]  |
            +----------------------------------------+---------------------------------------+

        Relations:
            - :class:`sentence_transformers.losses.MarginMSELoss` with ``(query, positive, negative_1, ...)`` and
              teacher scores as labels, except that the positive is the teacher's argmax and the student
              similarity is a scaled cosine instead of a dot product.
            - Wrap in :class:`~specialize.losses.CachedLoss` for large batches at constant memory.
        """
        super().__init__(model)
        check_positive("scale", scale)
        self.scale = scale

    def compute_loss_from_embeddings(
        self, query: Tensor, passages: Tensor, teacher: Tensor, groups: Tensor | None = None
    ) -> Tensor:
        """See the class docstring; ``groups`` is unused, as no passage is compared across lists."""
        student = self.scale * list_similarities(query, passages)
        teacher = at_least_fp32(teacher)
        top = teacher.argmax(dim=1, keepdim=True)
        negatives = ~F.one_hot(top.squeeze(1), teacher.shape[1]).bool()
        student_margins = student.gather(1, top) - student
        teacher_margins = teacher.gather(1, top) - teacher
        return F.mse_loss(student_margins[negatives], teacher_margins[negatives])

    def get_config_dict(self) -> dict[str, Any]:
        return {"scale": self.scale}

    @property
    def citation(self) -> str:
        return """
@misc{hofstatter2020improving,
      title={Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge Distillation},
      author={Sebastian Hofst{\\"a}tter and Sophia Althammer and Michael Schr{\\"o}der and Mete Sertkan and Allan Hanbury},
      year={2020},
      eprint={2010.02666},
      archivePrefix={arXiv},
      primaryClass={cs.IR},
      url={https://arxiv.org/abs/2010.02666},
}
@inproceedings{wang2022gpl,
      title={GPL: Generative Pseudo Labeling for Unsupervised Domain Adaptation of Dense Retrieval},
      author={Kexin Wang and Nandan Thakur and Nils Reimers and Iryna Gurevych},
      booktitle={Proceedings of the 2022 Conference of the North American Chapter of the Association for Computational Linguistics: Human Language Technologies},
      year={2022},
      url={https://arxiv.org/abs/2112.07577},
}
"""  # noqa: E501 (a BibTeX title, quoted as published)
