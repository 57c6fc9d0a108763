"""The work directory's artifacts as records: what each file holds, written and read through one schema.

Every JSON artifact has a pydantic record here, which its writer builds and every reader (the later stages, the report,
the model card, the CLI, the tests) loads: a field a writer adds must be declared here first (``extra="forbid"``), and a
reader never parses the file by hand. The JSONL artifacts are streamed (millions of lines), so their readers check the
fields they need line by line instead: ``read_corpus`` and ``read_queries`` below, ``read_lists`` in the train stage.
Where each file lives is :class:`~specialize.workdir.Workdir`'s; what each holds is docs/artifacts.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, RootModel

from specialize.artifacts import iter_jsonl, write_json
from specialize.errors import SpecializeError, located

QUERY_FIELDS = ("qid", "text", "type", "source_id")  # "generator" is carried by queries.jsonl but not needed here


NULLABLE_FIELDS = {"source_id"}  # null: a query with no source passage (the user's own)


def read_corpus(path: Path, only: set[str] | None = None) -> tuple[list[str], list[str]]:
    """Ids and title + text of ``corpus.jsonl`` (as written by prepare); with ``only``, just those ids (streamed)."""
    if not path.is_file():
        raise SpecializeError(f"{path}: not found; run `specialize prepare` first")
    ids, texts = [], []
    for number, doc in iter_jsonl(path):
        if not isinstance(doc.get("_id"), str) or not isinstance(doc.get("text"), str):
            raise located(path, number, "expected string fields '_id' and 'text' (rerun `specialize prepare`)")
        if only is None or doc["_id"] in only:
            ids.append(doc["_id"])
            texts.append(f"{doc.get('title') or ''} {doc['text']}".strip())
    if not ids and only is None:
        raise SpecializeError(f"{path}: the corpus is empty")
    return ids, texts


def read_queries(path: Path) -> list[dict[str, Any]]:
    """The records of ``queries.jsonl``, each checked for the fields mining needs and for unique qids.

    Every field is a non-empty string, but ``source_id`` may be null (a query with no source passage).
    """
    if not path.is_file():
        raise SpecializeError(f"{path}: not found; run `specialize generate` first")
    queries, seen = [], set()
    for number, record in iter_jsonl(path):
        for field in QUERY_FIELDS:
            if field not in record:
                raise located(path, number, f"missing field {field!r}")
            value, nullable = record[field], field in NULLABLE_FIELDS
            if (value is not None or not nullable) and (not isinstance(value, str) or not value.strip()):
                raise located(path, number, f"expected a non-empty string{' or null' if nullable else ''} in field {field!r}")
        if record["qid"] in seen:
            raise located(path, number, f"duplicate qid {record['qid']!r}")
        seen.add(record["qid"])
        queries.append(record)
    if not queries:
        raise SpecializeError(f"{path}: no queries")
    return queries


class Record(BaseModel):
    """A JSON artifact: written whole and atomically, read back into the same fields."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @classmethod
    def read(cls, path: Path) -> Self:
        """The record in ``path``; a missing or malformed file is a one-line error naming it."""
        if not path.is_file():
            raise SpecializeError(f"{path}: not found")
        try:
            return cls.model_validate_json(path.read_bytes())
        except ValueError as error:
            first = str(error).splitlines()
            raise SpecializeError(f"{path}: not a valid {cls.__name__} record ({'; '.join(first[:3])})") from None

    @classmethod
    def read_if_there(cls, path: Path) -> Self | None:
        """The record in ``path``, or None when the file is not there."""
        return cls.read(path) if path.is_file() else None

    def write(self, path: Path) -> None:
        """Write the fields that were set (a field left unset stays out of the file, as a writer meant it)."""
        write_json(path, self.model_dump(mode="json", by_alias=True, exclude_unset=True))


class Manifest(Record):
    """``stages/<stage>.json``: what a stage ran with and made (see :meth:`Workdir.run_stage`)."""

    stage: str
    version: str
    config_hash: str
    inputs: dict[str, str]
    outputs: dict[str, str]
    counts: dict[str, Any]
    seconds: float
    finished_at: str


class CheckpointKey(Record):
    """``checkpoints/run.json``: what the checkpoints beside it were trained from (a resume checks it)."""

    key: str


class AuditPart(Record):
    """Teacher vs student reranking the same lists of one query set (nDCG@10 and MRR@10, 0-100)."""

    queries: int
    teacher: dict[str, float]
    student: dict[str, float]
    split: str | None = None
    """The judged split, for the qrels part."""


class Audit(Record):
    """``audit.json``: the teacher against the student, on synthetic queries and on judged ones when the source has them."""

    teacher: str
    student: str
    synthetic: AuditPart | None
    qrels: AuditPart | None
    warning: str | None


class Selection(Record):
    """``teacher.json``: the teacher chosen by measurement (``label.teacher: auto``), its evidence and its cost."""

    student: str
    chosen: str
    weights: dict[str, float]
    best_fit: str | None = None
    """The best fit before the one-standard-error rule (absent from selections made before it)."""
    basis: str
    fit_queries: int
    measure_queries: int
    bases: dict[str, int]
    margin: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float | None
    headroom: bool | None
    """None: nothing to measure on, the publish gate decides."""
    reason: str
    members: list[dict[str, Any]]
    """Each candidate member: its cost probe and seconds, or why it was skipped."""
    candidates: list[dict[str, Any]]
    """Each fusion listed: ``teacher``, ``members``, ``fit_ndcg@10`` and one column per query set measured."""
    synthetic_overlap: dict[str, Any] | None = None
    seconds: float | None = None
    key: str | None = None
    """The inputs and selection settings it was made from: a later run with the same reuses it."""

    def measured_columns(self) -> list[str]:
        """The query sets each candidate was measured on besides the fit half, in table order."""
        first = self.candidates[0] if self.candidates else {}
        return [name for name in first if name not in ("teacher", "members", "fit_ndcg@10")]


class Gate(Record):
    """The publish gate's evidence and decision (nDCG@10 in points, 0-100)."""

    queries: int
    basis: str
    """What the queries are: ``held-out`` (dev.jsonl) or ``judged (<split> split)``."""
    base: float
    trained: float
    delta: float
    ci_low: float
    ci_high: float
    confidence: float
    margin: float
    decision: str
    """``trained`` (publish it) or ``base`` (keep the base)."""
    reason: str
    """One line: the decision and its numbers."""


class TrainSummary(Record):
    """``train.json``: what was trained, on what, and what was published and why."""

    student: str
    parameters: int
    trained_parameters: int
    teacher: str | None
    mode: str
    """``full``, ``query`` or ``none`` (not trained: no teacher beats the student)."""
    published: str
    """``trained`` or ``base``."""
    verdict: str
    output: str
    steps: int
    train_queries: int
    dev_queries: int
    train_types: dict[str, int]
    dev_types: dict[str, int]
    loss: str | None = None
    loss_parameters: dict[str, Any] | None = None
    hyperparameters: dict[str, Any] | None = None
    train_seconds: float | None = None
    gate: Gate | None = None
    selection: Selection | None = None
    epochs_run: float | None = None
    best_dev_loss: float | None = None
    best_step: int | None = None
    best_checkpoint: str | None = None


class TrainLog(RootModel[list[dict[str, Any]]]):
    """``train_log.json``: the trainer's log history (loss, learning rate, dev loss per logged step)."""

    @classmethod
    def read(cls, path: Path) -> TrainLog:
        return cls.model_validate_json(path.read_bytes())

    def write(self, path: Path) -> None:
        write_json(path, self.model_dump(mode="json"))


class ModelScores(Record):
    """One model's row in an evaluation: the metrics (0-1) and how it ran."""

    model_config = ConfigDict(extra="allow")  # one key per metric of evaluate's METRICS

    seconds: float
    backend: str
    max_seq_length: int | None
    run_file: str

    def metric(self, name: str) -> float:
        """``ndcg@10``, ``recall@100``, ``mrr@10``..."""
        return float(getattr(self, name) if hasattr(self, name) else (self.model_extra or {})[name])


class Evaluation(Record):
    """``eval/<dataset>.json``: every model evaluated on one dataset; a later evaluation adds its row."""

    dataset: str
    split: str
    queries: int
    docs: int
    models: dict[str, ModelScores] = Field(default_factory=dict)
