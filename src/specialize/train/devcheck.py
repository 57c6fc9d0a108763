"""Safe by default: how well a model ranks the dev lists, measured against the teacher's scores.

Each dev query's list (the teacher's top passages) is ranked by the model's cosine similarity,
and that ranking is scored by nDCG@10 with the teacher's normalized scores as graded relevance:
a passage's grade is its score in hundredths (``round(100 * score)``, 0-100), and pytrec_eval's
nDCG gains are linear in the grade, so the ideal ranking is the teacher's own and every passage
counts in proportion to the teacher's score. Queries and passages are embedded as in training:
same prefixes, same maximum lengths.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from specialize.evaluate import Qrels, Run, score_run
from specialize.models import Prefixes
from specialize.progress import progress_bar
from specialize.train.data import ScoredList

CHUNK = 256  # texts per encode call: one progress-bar step


def teacher_grades(rows: Sequence[ScoredList]) -> Qrels:
    """Graded relevance of each dev list's passages: the teacher's [0, 1] score in hundredths."""
    return {row.qid: {doc: round(100 * score) for doc, score in zip(row.doc_ids, row.scores)} for row in rows}


def dev_ndcg(
    model,
    rows: Sequence[ScoredList],
    texts: Mapping[str, str],
    prefixes: Prefixes,
    max_lengths: tuple[int, int],
    label: str,
    batch_size: int = 64,
) -> float:
    """nDCG@10 of ``model``'s ranking of each dev list against the teacher's graded scores (0-1)."""
    doc_ids = sorted({doc for row in rows for doc in row.doc_ids})
    position = {doc: i for i, doc in enumerate(doc_ids)}
    query_length, passage_length = max_lengths
    with progress_bar(f"dev check · {label}", total=len(rows) + len(doc_ids), unit="texts", transient=True) as advance:
        queries = _encode(model, [row.query for row in rows], prefixes.query, query_length, batch_size, advance, "query")
        passages = _encode(model, [texts[doc] for doc in doc_ids], prefixes.passage, passage_length, batch_size, advance, "document")
    run: Run = {
        row.qid: {doc: float(queries[i] @ passages[position[doc]]) for doc in row.doc_ids} for i, row in enumerate(rows)
    }
    return score_run(teacher_grades(rows), run)["ndcg@10"]


def _encode(model, texts: list[str], prefix: str, max_length: int, batch_size: int, advance, task: str) -> np.ndarray:
    """Normalized embeddings with the prefix as the prompt (as the trainer's collator applies it), cut at ``max_length``,
    through the model's route for ``task`` (query or document)."""
    parts = []
    for start in range(0, len(texts), CHUNK):
        chunk = texts[start : start + CHUNK]
        parts.append(
            model.encode(
                chunk, prompt=prefix or None, task=task, batch_size=batch_size, normalize_embeddings=True,
                convert_to_numpy=True, show_progress_bar=False,
                processing_kwargs={"text": {"max_length": max_length}},
            )
        )
        advance(len(chunk))
    return np.concatenate(parts).astype(np.float32, copy=False)
