"""Labeling: a teacher scores each query's candidates; filters, normalization and the train/dev split.

Teachers share one interface, ``score(query, passages) -> list[float]``. Scores are appended
to a partial ``labels.jsonl`` query by query (flushed after each), so a killed run resumes
where it stopped; the finished file is renamed into place. Filtering and normalization are
pure functions over those raw scores, applied in two streaming passes over ``labels.jsonl``.

The teachers themselves live in ``specialize.teachers``.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from specialize.artifacts import atomic_path, config_hash, finish_partial, finished_with_key, iter_jsonl, resume_partial
from specialize.config import Config, LabelConfig, PrefixConfig
from specialize.counts import TypeCounts
from specialize.datasets import judged_queries
from specialize.errors import SpecializeError, located
from specialize.progress import progress_bar
from specialize.records import Audit, Selection, read_corpus, read_queries
from specialize.stages.label.audit import audit
from specialize.stages.label.selection import select_teacher
from specialize.teachers import AUTO, Teacher, load_teacher, needs_corpus, parse_teacher, score_many
from specialize.workdir import Workdir

LIST_DROPS = ("source_not_first", "short_list", "low_top_score")
SELECTION_SETTINGS = {"candidates", "selection_queries", "selection_max_overlap", "fusion_step", "max_teacher_hours", "headroom_margin", "headroom_confidence",
                      "ensemble_normalization", "min_list_size", "backend", "batch_size", "seed", "llm"}
"""The label settings the teacher selection depends on."""


# ---------------------------------------------------------------------------------------------
# Filters and normalization (pure)


def list_filter(doc_ids: Sequence[str], scores: Sequence[float], source_id: str | None, config: LabelConfig) -> str | None:
    """The reason to drop a labelled query before normalization (None: keep it).

    ``require_source_first`` steps aside for a query without a source passage (``source_id`` None: the user's own).
    """
    if config.require_source_first and source_id is not None:
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


def dev_split(qids: Sequence[str], fraction: float, seed: int, min_queries: int = 0, groups: Mapping[str, str] | None = None) -> set[str]:
    """The qids that go to dev, drawn with ``seed`` independently of input order: round(fraction × n) of them, at least
    ``min_queries`` but at most half of them; none when ``fraction`` is 0.

    Queries of one group (``groups[qid]``: the queries of one source passage) go to the same side: groups are
    drawn whole, each under its first qid, until the size is reached; a qid without a group is a group of its own.
    """
    members: dict[tuple[str, str], list[str]] = {}
    for qid in sorted(qids):
        key = ("group", groups[qid]) if groups and qid in groups else ("query", qid)  # a group's name never meets a qid
        members.setdefault(key, []).append(qid)
    shuffled = sorted(members.values())  # by first qid
    random.Random(seed).shuffle(shuffled)
    size = min(max(min_queries, round(fraction * len(qids))), len(qids) // 2) if fraction > 0 else 0
    dev: set[str] = set()
    for group in shuffled:
        if len(dev) >= size:
            break
        dev.update(group)
    return dev


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
    final = Workdir(workdir).labels
    partial, done = resume_partial(final, key, "qid")
    candidates = Workdir(workdir).candidates
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
    finish_partial(final, key)
    return {"labels_reused": 0, "labels_resumed": len(done)}


# ---------------------------------------------------------------------------------------------
# The stage


def label(
    workdir: Path,
    config: LabelConfig,
    prefixes: Mapping[str, PrefixConfig] | None = None,
    teacher: Teacher | None = None,
    audit_with: Config | None = None,
) -> dict[str, Any]:
    """Write labels.jsonl, train.jsonl and dev.jsonl for the work directory; return the manifest counts.

    ``teacher`` replaces the one ``config.teacher`` names (tests, benchmarks). ``audit_with`` is the whole
    run's config: with it the teacher audit runs too, as ``label.audit`` says, and writes audit.json; the
    teacher selection (``teacher: auto``, teacher.json) reads the student, the retrievers and the source from it.
    """
    run = audit_with or Config(label=config, prefixes=dict(prefixes or {}))
    work = Workdir(workdir)
    query_list = read_queries(work.queries)
    if not work.candidates.is_file():
        raise SpecializeError(f"{work.candidates}: not found; run `specialize mine` first")
    queries = {q["qid"]: q for q in query_list}
    auto = teacher is None and config.teacher == AUTO
    auditing = audit_with is not None and wants_audit(audit_with)
    spec = None if auto else parse_teacher(config.teacher)
    # Pointwise teachers need only the candidates' texts: memory stays flat as the corpus grows.
    needed = None if spec is None or auditing or needs_corpus(spec) else {d for _, r in read_candidates(work.candidates, queries) for d in r["doc_ids"]}
    ids, texts = read_corpus(work.corpus, needed)
    counts: dict[str, int | float | str] = {}
    if auto:
        selection = selected_teacher(workdir, run, (ids, texts), queries)
        spec = parse_teacher(selection.chosen)
        counts.update(selection_counts(selection))
    else:
        work.selection.unlink(missing_ok=True)
    assert spec is not None, "a named teacher, or the selection's choice"
    key = work.labels_key(str(spec))
    if finished_with_key(work.labels, key):
        scored = {"labels_reused": 1, "labels_resumed": 0}  # same teacher and inputs: only the filters changed
    else:
        teacher = teacher or load_teacher(spec, config, (ids, texts), prefixes)
        scored = score_candidates(workdir, teacher, dict(zip(ids, texts)), queries, key, config.query_block)
    counts.update({**filter_and_split(workdir, queries, config), **scored})
    work.audit.unlink(missing_ok=True)
    if auditing and audit_with is not None:
        teacher = teacher or load_teacher(spec, config, (ids, texts), prefixes)
        counts.update(audit_counts(audit(workdir, audit_with, teacher, (ids, texts), queries)))
    return counts


def selected_teacher(workdir: Path, run: Config, corpus: tuple[Sequence[str], Sequence[str]], queries: Mapping[str, Mapping[str, Any]]) -> Selection:
    """``teacher.json``: reused when made from the same inputs and selection settings, else chosen again."""
    work = Workdir(workdir)
    settings = run.model_dump(mode="json", include={"label": SELECTION_SETTINGS, "train": {"student"}, "mine": True, "prefixes": True,
                                                    "prepare": {"corpus"}})
    key = work.inputs_key(config_hash(settings))
    previous = Selection.read_if_there(work.selection)
    if previous is not None and previous.key == key:
        return previous
    selection = select_teacher(workdir, run, corpus, queries).model_copy(update={"key": key})
    selection.write(work.selection)
    return selection


def selection_counts(selection: Selection) -> dict[str, int | float | str]:
    """The teacher selection's outcome as flat manifest counts."""
    counts: dict[str, int | float | str] = {"teacher": selection.chosen, "teacher_skipped": sum("skipped" in m for m in selection.members)}
    if selection.seconds is not None:
        counts["teacher_selection_seconds"] = selection.seconds
    if selection.headroom is not None and selection.margin is not None and selection.ci_low is not None:
        counts.update({"teacher_margin": selection.margin, "teacher_ci_low": selection.ci_low, "teacher_headroom": int(selection.headroom)})
    return counts


def wants_audit(config: Config) -> bool:
    """``always``; or ``auto`` when the corpus source has judged queries."""
    return config.label.audit == "always" or (config.label.audit == "auto" and judged_queries(config.prepare.corpus) is not None)


def audit_counts(report: Audit) -> dict[str, float]:
    """The audit's numbers as flat manifest counts."""
    out: dict[str, float] = {}
    for basis, part in (("synthetic", report.synthetic), ("qrels", report.qrels)):
        if part is not None:
            out.update({f"audit_{basis}_{who}_ndcg@10": scores["ndcg@10"] for who, scores in (("teacher", part.teacher), ("student", part.student))})
    return out


def filter_and_split(workdir: Path, queries: Mapping[str, Mapping[str, Any]], config: LabelConfig) -> dict[str, Any]:
    """Filter and normalize ``labels.jsonl`` and write the train/dev split; two streaming passes."""
    labels = Workdir(workdir).labels
    counts = TypeCounts()
    no_source = 0
    all_scores: list[np.ndarray] = []
    kept_top: dict[str, float] = {}
    sourced: list[str] = []  # queries with a source passage and a full list: held-out candidates whatever the teacher says
    for _, record in iter_jsonl(labels):
        query = queries[record["qid"]]
        scores = np.asarray(record["scores"], dtype=np.float64)
        all_scores.append(scores)
        no_source += query["source_id"] is None
        reason = list_filter(record["doc_ids"], record["scores"], query["source_id"], config)
        if reason != "short_list" and query["source_id"] is not None:
            sourced.append(record["qid"])
        if reason is not None:
            counts.add(f"dropped_{reason}", query["type"])
        else:
            kept_top[record["qid"]] = float(scores.max())
    low, high = score_bounds(np.concatenate(all_scores) if all_scores else np.zeros(0), config.low_percentile, config.high_percentile)
    tops = {qid: float(normalize([top], low, high)[0]) for qid, top in kept_top.items()}
    floor = float(np.percentile(list(tops.values()), config.drop_below_percentile)) if tops else 0.0
    kept = [qid for qid, top in tops.items() if top >= floor]
    for qid in tops.keys() - set(kept):
        counts.add("dropped_low_top_score", queries[qid]["type"])
    keep = set(kept)
    # Held out before the filters: a query whose teacher disagrees with its source is as fair a test
    # as one it finds easy (its source is the truth); a query without a source only when kept.
    held_out = sorted(keep.union(sourced))
    sources = {qid: queries[qid]["source_id"] for qid in held_out if queries[qid]["source_id"] is not None}
    dev = dev_split(held_out, config.dev_fraction, config.seed, config.dev_min_queries, groups=sources)
    work = Workdir(workdir)
    with atomic_path(work.train) as train_tmp, atomic_path(work.dev) as dev_tmp:
        with open(train_tmp, "w", encoding="utf-8", newline="\n") as train_out, open(dev_tmp, "w", encoding="utf-8", newline="\n") as dev_out:
            for _, record in iter_jsonl(labels):
                if record["qid"] not in keep and record["qid"] not in dev:
                    continue
                query = queries[record["qid"]]
                doc_ids, top_scores = top_list(record["doc_ids"], normalize(record["scores"], low, high).tolist(), config.list_size)
                row = {"qid": record["qid"], "query": query["text"], "type": query["type"], "doc_ids": doc_ids, "scores": top_scores}
                split = "dev" if record["qid"] in dev else "train"
                (dev_out if split == "dev" else train_out).write(json.dumps(row, ensure_ascii=False) + "\n")
                counts.add("kept", query["type"], record["qid"] in keep)
                counts.add(split, query["type"])
    outcomes = ["kept", "train", "dev", *(f"dropped_{reason}" for reason in LIST_DROPS)]
    summary: dict[str, Any] = {"labelled": len(all_scores), "labelled_no_source": no_source}
    summary.update(counts.summary(outcomes, sorted({q["type"] for q in queries.values()})))
    summary.update({"score_low": round(low, 6), "score_high": round(high, 6), "top_score_floor": round(floor, 6)})
    return summary


def run(work: Workdir, config: Config) -> dict[str, Any]:
    """The stage as the pipeline runs it: with the audit when ``label.audit`` asks for it."""
    return label(work.root, config.label, config.prefixes, audit_with=config)
