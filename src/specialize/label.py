"""Labeling: a teacher scores each query's candidates; filters, normalization and the train/dev split.

Teachers share one interface, ``score(query, passages) -> list[float]``. Scores are appended
to a partial ``labels.jsonl`` query by query (flushed after each), so a killed run resumes
where it stopped; the finished file is renamed into place. Filtering and normalization are
pure functions over those raw scores, applied in two streaming passes over ``labels.jsonl``.

Teacher specs (``label.teacher`` or ``--teacher``)::

    bm25                               BM25 (bm25s, same tokenizer and stemmer as mine) over the corpus
    bi-encoder:<model>                 cosine of a SentenceTransformer's embeddings (query prefix applied)
    cross-encoder:<model>              a sentence-transformers CrossEncoder (HF id, path or bundled:<alias>)
    ensemble:<member>=<w>,<member>=<w> weighted mean of the members' per-query percentile ranks

A list in the config (``teacher: [bm25, bi-encoder:bundled:minilm]``) is an ensemble of its
members; ``=<w>`` is optional (weight 1).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import random
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from specialize.artifacts import atomic_path, fingerprint, iter_jsonl
from specialize.config import LabelConfig, PrefixConfig
from specialize.errors import SpecializeError, located
from specialize.mine import BM25, BM25Retriever, read_corpus, read_queries
from specialize.progress import progress_bar

KINDS = ("bm25", "bi-encoder", "cross-encoder", "ensemble")
DROP_REASONS = ("source_not_first", "short_list", "low_top_score")
SYNTAX = "use bm25, bi-encoder:<model>, cross-encoder:<model> or ensemble:<member>=<weight>,..."


class Teacher(Protocol):
    """Anything that scores a query's passages; higher is more relevant."""

    name: str

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """One score per passage, in the order given."""
        ...


Item = tuple[str, Sequence[str]]


def score_many(teacher: Teacher, items: Sequence[Item]) -> list[list[float]]:
    """Scores for several (query, passages) at once: the teacher's own batched ``score_many`` when it has one."""
    batched = getattr(teacher, "score_many", None)
    if batched is not None:
        return batched(items)
    return [teacher.score(query, passages) for query, passages in items]


# ---------------------------------------------------------------------------------------------
# Teacher specs


@dataclass(frozen=True)
class TeacherSpec:
    """A parsed teacher spec: a kind, a model name (bi-/cross-encoder) or members with weights (ensemble)."""

    kind: str
    model: str | None = None
    members: tuple[tuple[TeacherSpec, float], ...] = ()

    def __str__(self) -> str:
        if self.kind == "ensemble":
            return "ensemble:" + ",".join(f"{member}={weight:g}" for member, weight in self.members)
        return self.kind if self.model is None else f"{self.kind}:{self.model}"


def parse_teacher(spec: str | Sequence[str]) -> TeacherSpec:
    """Parse a teacher spec (see the module doc); a list is an ensemble. Raises a one-line SpecializeError."""
    if not isinstance(spec, str):
        if not spec:
            raise SpecializeError(f"teacher: an empty list; {SYNTAX}")
        return _ensemble(list(spec), str(list(spec)))
    text = spec.strip()
    if text.startswith("ensemble:"):
        return _ensemble([part for part in text[len("ensemble:") :].split(",")], spec)
    return _single(text, spec)


def _single(text: str, whole: str) -> TeacherSpec:
    kind, _, model = text.partition(":")
    if text == BM25:
        return TeacherSpec("bm25")
    if kind in ("bi-encoder", "cross-encoder"):
        if not model.strip():
            raise SpecializeError(f"teacher {whole!r}: {kind} needs a model, e.g. {kind}:bundled:minilm")
        return TeacherSpec(kind, model.strip())
    if kind == "ensemble":
        raise SpecializeError(f"teacher {whole!r}: an ensemble cannot contain another ensemble; list its members instead")
    close = difflib.get_close_matches(kind, KINDS, n=1, cutoff=0.5)
    if close and close[0] != kind:
        hint = f"did you mean {close[0] + (':' + model if model else '')!r}?"
    elif kind in ("bundled", "hf") or "/" in text or Path(text).exists():
        hint = f"did you mean 'bi-encoder:{text}' or 'cross-encoder:{text}'?"
    else:
        hint = SYNTAX
    raise SpecializeError(f"teacher {whole!r}: unknown teacher {text!r} ({hint})")


def _ensemble(parts: list[str], whole: str) -> TeacherSpec:
    members = []
    for part in parts:
        member, sep, raw = part.strip().rpartition("=")
        if not sep:
            member, raw = part.strip(), "1"
        try:
            weight = float(raw)
        except ValueError:
            weight = -1.0
        if not member or weight <= 0 or not np.isfinite(weight):
            raise SpecializeError(f"teacher {whole!r}: bad ensemble member {part.strip()!r} (write <member>=<positive weight>, e.g. bm25=1)")
        members.append((_single(member, whole), weight))
    if not members:
        raise SpecializeError(f"teacher {whole!r}: an ensemble needs members; {SYNTAX}")
    return TeacherSpec("ensemble", members=tuple(members))


# ---------------------------------------------------------------------------------------------
# Teachers


class BM25Teacher:
    """BM25 scores of the passages for the query, with the corpus's statistics (mine's BM25 index)."""

    name = "bm25"

    def __init__(self, texts: Sequence[str]) -> None:
        self.retriever = BM25Retriever(texts)
        self.position = {text: i for i, text in enumerate(texts)}

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        missing = [p for p in passages if p not in self.position]
        if missing:
            raise SpecializeError(f"bm25 teacher: a passage is not in the corpus ({missing[0][:60]!r}...)")
        scores = self.retriever.scores(query)
        return [float(scores[self.position[p]]) for p in passages]


class BiEncoderTeacher:
    """Cosine similarity of normalized embeddings; corpus passages come from the shared embedding cache."""

    def __init__(self, encoder: Any, batch_size: int = 32, corpus: tuple[Sequence[str], Sequence[str]] | None = None) -> None:
        self.name = f"bi-encoder:{encoder.name}"
        self.encoder = encoder
        self.batch_size = batch_size
        self.position: dict[str, int] = {}
        self.embeddings: np.ndarray | None = None
        if corpus is not None:
            from specialize.encoder import encode_corpus

            ids, texts = corpus
            self.embeddings = encode_corpus(encoder, ids, texts, batch_size, label=f"{encoder.name} · corpus")
            self.position = {text: i for i, text in enumerate(texts)}

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        return self.score_many([(query, passages)])[0]

    def score_many(self, items: Sequence[Item]) -> list[list[float]]:
        """Queries encoded in one call; passages from the corpus cache, or encoded in one call."""
        if not items:
            return []
        queries = self.encoder.encode([query for query, _ in items], self.batch_size, kind="query")
        passages = [p for _, group in items for p in group]
        if self.embeddings is not None and all(p in self.position for p in passages):
            embedded = self.embeddings[[self.position[p] for p in passages]] if passages else np.zeros((0, queries.shape[1]))
        else:
            embedded = self.encoder.encode(passages, self.batch_size, kind="passage") if passages else np.zeros((0, queries.shape[1]))
        out, start = [], 0
        for row, (_, group) in enumerate(items):
            out.append([float(x) for x in embedded[start : start + len(group)] @ queries[row]])
            start += len(group)
        return out


class CrossEncoderTeacher:
    """A sentence-transformers CrossEncoder on (query, passage) pairs, longest passages first per batch."""

    def __init__(self, model_name: str, batch_size: int = 32) -> None:
        import warnings

        from sentence_transformers import CrossEncoder

        from specialize.models import resolve_model

        self.name = f"cross-encoder:{model_name}"
        self.batch_size = batch_size
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.model = CrossEncoder(resolve_model(model_name))
        except (OSError, ValueError) as exc:
            raise SpecializeError(f"{model_name}: cannot load the cross-encoder ({str(exc).splitlines()[0]})") from None

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        return self.score_many([(query, passages)])[0]

    def score_many(self, items: Sequence[Item]) -> list[list[float]]:
        """All pairs of all items in one predict call, longest first so each batch pads little."""
        pairs = [(query, passage) for query, group in items for passage in group]
        if not pairs:
            return [[] for _ in items]
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        scores = self.model.predict(
            [pairs[i] for i in order], batch_size=self.batch_size, show_progress_bar=False, convert_to_numpy=True
        )
        flat = np.empty(len(order), dtype=np.float32)
        flat[order] = np.asarray(scores, dtype=np.float32).reshape(len(order), -1)[:, 0]
        out, start = [], 0
        for _, group in items:
            out.append([float(x) for x in flat[start : start + len(group)]])
            start += len(group)
        return out


def percentile_ranks(scores: Sequence[float]) -> np.ndarray:
    """Each score's percentile rank among ``scores`` in [0, 1]: 0 the lowest, 1 the highest, ties share the mean rank."""
    values = np.asarray(scores, dtype=np.float64)
    if len(values) <= 1:
        return np.ones(len(values))
    ordered = np.sort(values)
    below = np.searchsorted(ordered, values, side="left")
    upto = np.searchsorted(ordered, values, side="right")
    return (below + upto - 1) / 2 / (len(values) - 1)


def minmax_scaled(scores: Sequence[float]) -> np.ndarray:
    """Scores min-max scaled to [0, 1] within the list (all equal: 0.5 each; a single score: 1)."""
    values = np.asarray(scores, dtype=np.float64)
    if len(values) <= 1:
        return np.ones(len(values))
    spread = values.max() - values.min()
    return (values - values.min()) / spread if spread > 0 else np.full(len(values), 0.5)


NORMALIZERS = {"percentile": percentile_ranks, "minmax": minmax_scaled}


class EnsembleTeacher:
    """The weighted mean of member teachers' scores, each normalized per query so their scales do not matter.

    ``percentile`` (default): each score's percentile rank among the member's scores for the query;
    ``minmax``: the member's scores for the query min-max scaled to [0, 1] (keeps the margins).
    """

    def __init__(self, members: Sequence[tuple[Teacher, float]], normalization: str = "percentile") -> None:
        self.members = list(members)
        self.normalize = NORMALIZERS[normalization]
        self.name = "ensemble:" + ",".join(f"{teacher.name}={weight:g}" for teacher, weight in self.members)

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        return self.score_many([(query, passages)])[0]

    def score_many(self, items: Sequence[Item]) -> list[list[float]]:
        total = sum(weight for _, weight in self.members)
        fused = [np.zeros(len(passages)) for _, passages in items]
        for teacher, weight in self.members:
            for row, scores in enumerate(score_many(teacher, items)):
                fused[row] += weight * self.normalize(scores)
        return [[float(x) for x in row / total] for row in fused]


def load_teacher(
    spec: str | Sequence[str] | TeacherSpec,
    config: LabelConfig | None = None,
    corpus: tuple[Sequence[str], Sequence[str]] | None = None,
    prefixes: Mapping[str, PrefixConfig] | None = None,
) -> Teacher:
    """Build the teacher a spec names; ``corpus`` (ids, texts) is needed by bm25 and lets a bi-encoder use the cache."""
    parsed = spec if isinstance(spec, TeacherSpec) else parse_teacher(spec)
    config = config or LabelConfig()
    if parsed.kind == "ensemble":
        members = [(load_teacher(member, config, corpus, prefixes), weight) for member, weight in parsed.members]
        return EnsembleTeacher(members, config.ensemble_normalization)
    if parsed.kind == "bm25":
        if corpus is None:
            raise SpecializeError("bm25 teacher: needs the corpus for its term statistics")
        return BM25Teacher(corpus[1])
    if parsed.kind == "bi-encoder":
        from specialize.encoder import load_encoder

        overrides = {key: value.model_dump() for key, value in (prefixes or {}).items()}
        return BiEncoderTeacher(load_encoder(parsed.model, config.backend, None, overrides), config.batch_size, corpus)
    return CrossEncoderTeacher(parsed.model, config.batch_size)


# ---------------------------------------------------------------------------------------------
# Filters and normalization (pure)


def list_filter(doc_ids: Sequence[str], scores: Sequence[float], source_id: str, config: LabelConfig) -> str | None:
    """The reason to drop a labelled query before normalization (None: keep it)."""
    if config.require_source_first:
        if source_id not in doc_ids or scores[list(doc_ids).index(source_id)] < max(scores):
            return "source_not_first"
    if len(doc_ids) < config.min_list_size:
        return "short_list"
    return None


def score_bounds(scores: np.ndarray, low_percentile: float, high_percentile: float) -> tuple[float, float]:
    """The raw scores that map to 0 and 1: the given percentiles (numpy's linear interpolation)."""
    if len(scores) == 0:
        return 0.0, 1.0
    low, high = np.percentile(np.asarray(scores, dtype=np.float64), [low_percentile, high_percentile])
    return float(low), float(high)


def normalize(scores: Sequence[float], low: float, high: float) -> np.ndarray:
    """Min-max normalize with (low, high) and clip to [0, 1]; when high == low, 1 at or above it, else 0."""
    values = np.asarray(scores, dtype=np.float64)
    if high <= low:
        return (values >= high).astype(np.float64)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def top_list(doc_ids: Sequence[str], scores: Sequence[float], size: int) -> tuple[list[str], list[float]]:
    """The ``size`` best passages by score, descending (ties keep the candidate order)."""
    order = sorted(range(len(doc_ids)), key=lambda i: -scores[i])[:size]
    return [doc_ids[i] for i in order], [float(scores[i]) for i in order]


def dev_split(qids: Sequence[str], fraction: float, seed: int) -> set[str]:
    """The qids that go to dev: round(fraction × n) of them, drawn with ``seed`` independently of input order."""
    shuffled = sorted(qids)
    random.Random(seed).shuffle(shuffled)
    return set(shuffled[: round(fraction * len(shuffled))])


# ---------------------------------------------------------------------------------------------
# Scoring with resume


def read_candidates(path: Path, queries: Mapping[str, Mapping[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
    """The records of ``candidates.jsonl``, each checked against the queries."""
    for number, record in iter_jsonl(path):
        doc_ids = record.get("doc_ids")
        if not isinstance(record.get("qid"), str) or not isinstance(doc_ids, list) or not all(isinstance(d, str) for d in doc_ids):
            raise located(path, number, "expected a string 'qid' and a list of string 'doc_ids' (rerun `specialize mine`)")
        if record["qid"] not in queries:
            raise located(path, number, f"qid {record['qid']!r} is not in queries.jsonl (rerun `specialize mine`)")
        yield number, record


def _labels_key(teacher: TeacherSpec, workdir: Path) -> str:
    """What labels.jsonl depends on: the teacher and the three input files."""
    digest = hashlib.sha256(str(teacher).encode())
    for name in ("corpus.jsonl", "queries.jsonl", "candidates.jsonl"):
        digest.update(fingerprint(workdir / name).encode())
    return digest.hexdigest()[:16]


def _resume(partial: Path) -> set[str]:
    """The qids already in a partial labels file, after cutting off a torn last line."""
    if not partial.is_file():
        return set()
    data = partial.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(partial, "r+b") as handle:
            handle.truncate(end)
    return {record["qid"] for _, record in iter_jsonl(partial)}


def score_candidates(
    workdir: Path,
    teacher: Teacher,
    texts: Mapping[str, str],
    queries: Mapping[str, Mapping[str, Any]],
    key: str,
    query_block: int = 16,
) -> dict[str, int]:
    """Write ``labels.jsonl`` (raw teacher scores), resuming from a partial file with the same key.

    Queries go to the teacher ``query_block`` at a time (one batched call); each record is
    appended and flushed as soon as its block is scored, so a kill loses at most one block.
    """
    final = workdir / "labels.jsonl"
    key_file = workdir / ".labels.key"
    partial = workdir / f".labels.jsonl.{key}.partial"
    for stale in workdir.glob(".labels.jsonl.*.partial"):
        if stale != partial:
            stale.unlink()
    done = _resume(partial)
    candidates = workdir / "candidates.jsonl"
    todo = sum(len(r["doc_ids"]) for _, r in read_candidates(candidates, queries) if r["qid"] not in done)
    seen: set[str] = set(done)
    block: list[dict[str, Any]] = []
    with open(partial, "a", encoding="utf-8", newline="\n") as out, progress_bar(f"{teacher.name} · scoring", total=todo, unit="pairs") as advance:

        def flush_block() -> None:
            items = [(queries[r["qid"]]["text"], [texts[d] for d in r["doc_ids"]]) for r in block]
            for record, scores in zip(block, score_many(teacher, items)):
                out.write(json.dumps({"qid": record["qid"], "doc_ids": record["doc_ids"], "scores": scores}, ensure_ascii=False) + "\n")
                out.flush()
                advance(len(record["doc_ids"]))
            block.clear()

        for number, record in read_candidates(candidates, queries):
            qid = record["qid"]
            if qid in seen:
                if qid not in done:
                    raise located(candidates, number, f"duplicate qid {qid!r} (rerun `specialize mine`)")
                continue
            seen.add(qid)
            missing = [d for d in record["doc_ids"] if d not in texts]
            if missing:
                raise located(candidates, number, f"doc {missing[0]!r} is not in corpus.jsonl (rerun `specialize mine`)")
            block.append(record)
            if len(block) >= query_block:
                flush_block()
        flush_block()
        os.fsync(out.fileno())
    key_file.unlink(missing_ok=True)
    os.replace(partial, final)
    key_file.write_text(key + "\n")
    return {"labels_reused": 0, "labels_resumed": len(done)}


# ---------------------------------------------------------------------------------------------
# The stage


def label(
    workdir: Path, config: LabelConfig, prefixes: Mapping[str, PrefixConfig] | None = None, teacher: Teacher | None = None
) -> dict[str, int | float]:
    """Write labels.jsonl, train.jsonl and dev.jsonl for the work directory; return the manifest counts.

    ``teacher`` replaces the one ``config.teacher`` names (tests, benchmarks).
    """
    spec = parse_teacher(config.teacher)
    ids, texts = read_corpus(workdir / "corpus.jsonl")
    query_list = read_queries(workdir / "queries.jsonl")
    if not (workdir / "candidates.jsonl").is_file():
        raise SpecializeError(f"{workdir / 'candidates.jsonl'}: not found; run `specialize mine` first")
    queries = {q["qid"]: q for q in query_list}
    key = _labels_key(spec, workdir)
    key_file = workdir / ".labels.key"
    if (workdir / "labels.jsonl").is_file() and key_file.is_file() and key_file.read_text().strip() == key:
        scored = {"labels_reused": 1, "labels_resumed": 0}  # same teacher and inputs: only the filters changed
    else:
        teacher = teacher or load_teacher(spec, config, (ids, texts), prefixes)
        scored = score_candidates(workdir, teacher, dict(zip(ids, texts)), queries, key, config.query_block)
    return {**filter_and_split(workdir, queries, config), **scored}


def filter_and_split(workdir: Path, queries: Mapping[str, Mapping[str, Any]], config: LabelConfig) -> dict[str, int | float]:
    """Filter and normalize ``labels.jsonl`` and write the train/dev split; two streaming passes."""
    labels = workdir / "labels.jsonl"
    counts: Counter[str] = Counter()
    all_scores: list[np.ndarray] = []
    kept_top: dict[str, float] = {}
    for _, record in iter_jsonl(labels):
        query = queries[record["qid"]]
        scores = np.asarray(record["scores"], dtype=np.float64)
        all_scores.append(scores)
        reason = list_filter(record["doc_ids"], record["scores"], query["source_id"], config)
        if reason is not None:
            counts[f"dropped_{reason}_{query['type']}"] += 1
        else:
            kept_top[record["qid"]] = float(scores.max())
    low, high = score_bounds(np.concatenate(all_scores) if all_scores else np.zeros(0), config.low_percentile, config.high_percentile)
    tops = {qid: float(normalize([top], low, high)[0]) for qid, top in kept_top.items()}
    floor = float(np.percentile(list(tops.values()), config.drop_below_percentile)) if tops else 0.0
    kept = [qid for qid, top in tops.items() if top >= floor]
    for qid in tops.keys() - set(kept):
        counts[f"dropped_low_top_score_{queries[qid]['type']}"] += 1
    dev = dev_split(kept, config.dev_fraction, config.seed)
    keep = set(kept)
    with atomic_path(workdir / "train.jsonl") as train_tmp, atomic_path(workdir / "dev.jsonl") as dev_tmp:
        with open(train_tmp, "w", encoding="utf-8", newline="\n") as train_out, open(dev_tmp, "w", encoding="utf-8", newline="\n") as dev_out:
            for _, record in iter_jsonl(labels):
                if record["qid"] not in keep:
                    continue
                query = queries[record["qid"]]
                doc_ids, scores = top_list(record["doc_ids"], normalize(record["scores"], low, high).tolist(), config.list_size)
                row = {"qid": record["qid"], "query": query["text"], "type": query["type"], "doc_ids": doc_ids, "scores": scores}
                split = "dev" if record["qid"] in dev else "train"
                (dev_out if split == "dev" else train_out).write(json.dumps(row, ensure_ascii=False) + "\n")
                counts[f"kept_{query['type']}"] += 1
                counts[f"{split}_{query['type']}"] += 1
    types = sorted({q["type"] for q in queries.values()})
    outcomes = ["kept", "train", "dev", *(f"dropped_{reason}" for reason in DROP_REASONS)]
    summary: dict[str, int | float] = {"labelled": len(all_scores)}
    summary.update({outcome: sum(counts[f"{outcome}_{kind}"] for kind in types) for outcome in outcomes})
    summary.update({f"{outcome}_{kind}": counts[f"{outcome}_{kind}"] for kind in types for outcome in outcomes})
    summary.update({"score_low": round(low, 6), "score_high": round(high, 6), "top_score_floor": round(floor, 6)})
    return summary
