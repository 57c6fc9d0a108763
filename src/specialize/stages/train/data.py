"""Training data: the label stage's ``train.jsonl`` / ``dev.jsonl`` lists, checked, as lazy trainer datasets."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from specialize.artifacts import iter_jsonl
from specialize.errors import SpecializeError, located

QUERY_COLUMN = "query"


@dataclass(frozen=True)
class ScoredList:
    """One query with the teacher's passages, best first, and their normalized scores."""

    qid: str
    query: str
    type: str
    doc_ids: list[str]
    scores: list[float]
    line: int
    """Where the row is in its file, for error messages."""


def passage_columns(size: int) -> list[str]:
    """The dataset's passage column names, in order: ``passage_0 ... passage_{size-1}``."""
    return [f"passage_{i}" for i in range(size)]


def read_lists(path: Path, min_size: int) -> list[ScoredList]:
    """The rows of a ``train.jsonl`` / ``dev.jsonl`` file, each checked; a bad row stops with its file and line."""
    if not path.is_file():
        raise SpecializeError(f"{path}: not found; run `specialize label` first")
    rows: list[ScoredList] = []
    seen: set[str] = set()
    for number, record in iter_jsonl(path):
        row = _checked(path, number, record, min_size)
        if row.qid in seen:
            raise located(path, number, f"duplicate qid {row.qid!r} (rerun `specialize label`)")
        seen.add(row.qid)
        rows.append(row)
    return rows


def check_docs(path: Path, rows: Iterable[ScoredList], known: Container[str]) -> None:
    """Stop at the first row of ``path`` naming a passage that is not in the corpus."""
    for row in rows:
        missing = next((doc for doc in row.doc_ids if doc not in known), None)
        if missing is not None:
            raise located(path, row.line, f"doc {missing!r} is not in corpus.jsonl (rerun `specialize label`)")


def _checked(path: Path, number: int, record: Mapping[str, Any], min_size: int) -> ScoredList:
    """One row as a ScoredList, or a located error saying what is wrong with it."""
    for field in ("qid", "query", "type"):
        if not isinstance(record.get(field), str) or not record[field].strip():
            raise located(path, number, f"expected a non-empty string in field {field!r} (rerun `specialize label`)")
    doc_ids, scores = record.get("doc_ids"), record.get("scores")
    if not isinstance(doc_ids, list) or not all(isinstance(d, str) for d in doc_ids):
        raise located(path, number, "expected a list of string 'doc_ids' (rerun `specialize label`)")
    if not isinstance(scores, list) or not all(_is_score(s) for s in scores) or len(scores) != len(doc_ids):
        raise located(path, number, "expected one score in [0, 1] in 'scores' per doc id (rerun `specialize label`)")
    if len(doc_ids) < min_size:
        raise located(
            path, number,
            f"{len(doc_ids)} passages, fewer than train.passages_per_query ({min_size}); lower it or relabel with a longer label.list_size",
        )
    order = sorted(range(len(doc_ids)), key=lambda i: -scores[i])  # best first, whatever the file's order
    return ScoredList(
        record["qid"], record["query"], record["type"], [doc_ids[i] for i in order], [float(scores[i]) for i in order], number
    )


def _is_score(value: Any) -> bool:
    """A normalized teacher score: a number in [0, 1] (NaN is not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


def type_counts(rows: Sequence[ScoredList]) -> dict[str, int]:
    """Queries per query type, by type name."""
    return dict(sorted(Counter(row.type for row in rows).items()))


def training_subset(rows: Sequence[ScoredList], types: Sequence[str] | None, max_queries: int | None, seed: int) -> list[ScoredList]:
    """The rows of the given types, then a seeded sample of at most ``max_queries`` of them, in file order."""
    kept = [row for row in rows if types is None or row.type in types]
    if not kept:
        raise SpecializeError(f"train.types {list(types or [])}: train.jsonl has no query of these types (it has {type_counts(rows)})")
    if max_queries is not None and max_queries < len(kept):
        chosen = set(random.Random(seed).sample(range(len(kept)), max_queries))
        kept = [row for i, row in enumerate(kept) if i in chosen]
    return kept


def list_dataset(rows: Sequence[ScoredList], texts: dict[str, str], size: int):
    """A ``datasets.Dataset`` with the columns ``query, passage_0 ... passage_{size-1}, label`` (teacher scores).

    Rows hold doc ids; passage texts are looked up as batches are read (``set_transform``), so the
    corpus is held once however often a passage recurs. Each row keeps its ``size`` best passages.
    """
    from datasets import Dataset

    dataset = Dataset.from_dict(
        {
            QUERY_COLUMN: [row.query for row in rows],
            "doc_ids": [row.doc_ids[:size] for row in rows],
            "scores": [row.scores[:size] for row in rows],
        }
    )
    dataset.set_transform(partial(_with_texts, texts=texts, size=size))
    return dataset


def _with_texts(batch: dict[str, list], texts: dict[str, str], size: int) -> dict[str, list]:
    """A batch of ``query, doc_ids, scores`` as the trainer's columns (module level, so it pickles)."""
    columns: dict[str, list] = {QUERY_COLUMN: batch[QUERY_COLUMN]}
    for position, name in enumerate(passage_columns(size)):
        columns[name] = [texts[ids[position]] for ids in batch["doc_ids"]]
    columns["label"] = batch["scores"]
    return columns


def query_side_dataset(rows: Sequence[ScoredList], position: Mapping[str, int], size: int):
    """A ``datasets.Dataset`` with the columns ``query, label`` for query-side training (see ``QuerySideLoss``).

    The label is ``[2, size]`` in float64: the teacher's scores of the row's ``size`` best passages, then
    those passages' rows in the corpus matrix (``position``); no passage text is read.
    """
    import torch
    from datasets import Dataset

    dataset = Dataset.from_dict(
        {
            QUERY_COLUMN: [row.query for row in rows],
            "label": [[row.scores[:size], [position[doc] for doc in row.doc_ids[:size]]] for row in rows],
        }
    )
    dataset.set_format("torch", columns=[QUERY_COLUMN, "label"], dtype=torch.float64)  # the query first, as the trainer expects
    return dataset
