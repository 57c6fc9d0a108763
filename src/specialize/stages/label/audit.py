"""Teacher audit: does the teacher rank better than the student it is meant to teach?

Both rerank the same candidates and are scored by nDCG@10 and MRR@10 (pytrec_eval):

- on labelled synthetic queries, against their source passage (always available; a weak check,
  since mining kept only queries whose source the retrievers already found);
- on human queries with qrels, when the prepared corpus comes with them (a BEIR folder,
  ``demo:`` or ``beir:``): candidates mined by the configured retrievers, exactly as for a
  synthetic query. The split is the first of dev, train, test that exists, so the test split
  is used only when there is no other.

A teacher that does not beat the student cannot teach it anything: the stage says so loudly,
before any training.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from specialize.artifacts import iter_jsonl
from specialize.config import Config
from specialize.datasets import AUDIT_SPLITS, judged_queries
from specialize.metrics import Qrels, rerank_metrics
from specialize.records import Audit, AuditPart
from specialize.teachers import Teacher, score_many
from specialize.workdir import Workdir


def seeded_sample(qids: Sequence[str], limit: int, seed: int) -> list[str]:
    """Up to ``limit`` qids chosen by a seeded hash: the same whatever the input order or size."""
    key = lambda qid: hashlib.sha256(f"{seed}:{qid}".encode()).hexdigest()  # noqa: E731
    return sorted(heapq.nsmallest(limit, qids, key=key))


def _compare(
    teacher: Teacher, student: Teacher, qrels: Qrels, lists: Mapping[str, list[str]], texts: Mapping[str, str], queries: Mapping[str, str],
    teacher_scores: Mapping[str, Sequence[float]] | None = None, split: str | None = None,
) -> AuditPart:
    """Teacher vs student reranking the same lists; ``teacher_scores`` reuses scores already computed."""
    qids = list(lists)
    items = [(queries[qid], [texts[d] for d in lists[qid]]) for qid in qids]
    if teacher_scores is None:
        teacher_scores = dict(zip(qids, score_many(teacher, items)))
    student_scores = dict(zip(qids, score_many(student, items)))
    return AuditPart(queries=len(qids), teacher=rerank_metrics(qrels, lists, teacher_scores), student=rerank_metrics(qrels, lists, student_scores),
                     split=split)


def synthetic_audit(
    workdir: Path, teacher: Teacher, student: Teacher, texts: Mapping[str, str], queries: Mapping[str, Mapping[str, Any]], limit: int, seed: int,
) -> AuditPart | None:
    """Teacher (its raw labels) vs student on labelled synthetic queries, the source passage as the one relevant."""
    labels = Workdir(workdir).labels
    chosen = set(seeded_sample([record["qid"] for _, record in iter_jsonl(labels)], limit, seed))
    lists, scores = {}, {}
    for _, record in iter_jsonl(labels):
        if record["qid"] in chosen and queries[record["qid"]]["source_id"] in record["doc_ids"]:
            lists[record["qid"]], scores[record["qid"]] = record["doc_ids"], record["scores"]
    if not lists:
        return None
    qrels = {qid: {queries[qid]["source_id"]: 1} for qid in lists}
    text_of = {qid: queries[qid]["text"] for qid in lists}
    return _compare(teacher, student, qrels, lists, texts, text_of, teacher_scores=scores)


def judged_lists(
    config: Config, ids: Sequence[str], texts: Sequence[str], limit: int, splits: Sequence[str] = AUDIT_SPLITS,
) -> tuple[str, dict[str, str], Qrels, dict[str, list[str]]] | None:
    """(split, queries, qrels, candidate lists) for a seeded sample of the source's judged queries (the first of
    ``splits`` with qrels), their candidates mined by the configured retrievers exactly as for a synthetic query."""
    from specialize.retrieval import load_retrievers, reciprocal_rank_fusion, retrieve_all

    judged = judged_queries(config.prepare.corpus, splits)
    if judged is None:
        return None
    split, all_queries, all_qrels = judged
    in_corpus = set(ids)
    usable = [qid for qid, rels in all_qrels.items() if qid in all_queries and any(d in in_corpus and s > 0 for d, s in rels.items())]
    qids = seeded_sample(usable, limit, config.label.seed)
    if not qids:
        return None
    retrievers = load_retrievers(config.mine, ids, texts, config.prefixes)
    rankings = retrieve_all(retrievers, [all_queries[q] for q in qids], config.mine.depth)
    lists = {}
    for row, qid in enumerate(qids):
        fused = reciprocal_rank_fusion([[int(i) for i in ranking[row] if i >= 0] for ranking in rankings], config.mine.rrf_k)
        lists[qid] = [ids[i] for i, _ in fused[: config.mine.top_k]]
    return split, all_queries, all_qrels, lists


def qrels_audit(config: Config, teacher: Teacher, student: Teacher, ids: Sequence[str], texts: Sequence[str]) -> AuditPart | None:
    """Teacher vs student on the source's human queries, candidates mined as for synthetic ones."""
    judged = judged_lists(config, ids, texts, config.label.audit_queries)
    if judged is None:
        return None
    split, all_queries, all_qrels, lists = judged
    return _compare(teacher, student, all_qrels, lists, dict(zip(ids, texts)), all_queries, split=split)


def audit_warning(teacher_name: str, student_name: str, synthetic: AuditPart | None, qrels: AuditPart | None) -> str | None:
    """The warning to give when the teacher does not beat the student (on qrels when there are, else synthetic)."""
    basis = qrels or synthetic
    if basis is None:
        return None
    teacher, student = basis.teacher["ndcg@10"], basis.student["ndcg@10"]
    if teacher > student:
        return None
    where = f"{basis.queries} judged queries ({basis.split} split)" if qrels else f"{basis.queries} synthetic queries"
    return (
        f"the teacher ({teacher_name}) does not beat the student ({student_name}) on {where}: "
        f"nDCG@10 {teacher:.2f} vs {student:.2f}. Training on its labels will likely make the student worse; "
        "choose another --teacher before training."
    )


def audit(workdir: Path, config: Config, teacher: Teacher, texts: tuple[Sequence[str], Sequence[str]], queries: Mapping[str, Mapping[str, Any]]) -> Audit:
    """Run both audits, write ``audit.json`` and return it (with a ``warning`` when the teacher loses)."""
    from specialize.teachers import load_teacher

    ids, doc_texts = texts
    student = load_teacher(f"bi-encoder:{config.train.student}", config.label, texts, config.prefixes)
    synthetic = synthetic_audit(workdir, teacher, student, dict(zip(ids, doc_texts)), queries, config.label.audit_queries, config.label.seed)
    qrels = qrels_audit(config, teacher, student, ids, doc_texts)
    report = Audit(teacher=teacher.name, student=config.train.student, synthetic=synthetic, qrels=qrels,
                   warning=audit_warning(teacher.name, config.train.student, synthetic, qrels))
    report.write(Workdir(workdir).audit)
    return report
