"""Teacher selection (``label.teacher: auto``): the teacher chosen by measurement, and whether any can teach at all.

Every candidate member (the student, ``label.candidates`` and any teacher the user adds there) reranks the
same candidate lists of a seeded sample of queries whose relevant passage is known:

- the corpus source's judged queries of a dev or train split (never test), when it has them;
- else the synthetic queries whose source passage is in their list (the source is the relevant one), and of those only
  the ones that share at most ``label.selection_max_overlap`` of their BM25 terms with their source. Generated queries
  copy their source (a median 92% of their terms on MED, against 24% for MED's human queries), and on such queries
  BM25 wins by construction: on all of MED's synthetic queries BM25 ranks 96 and MiniLM 87 nDCG@10, the reverse of
  MED's human queries; on those at most half copied, MiniLM leads as it does on the human ones
  (``benchmarks/results/teacher_selection.md``).

The queries are cut in two seeded halves. On the first (``fit``) every fusion of the members is tried:
weights on a simplex grid of ``label.fusion_step``, members min-max scaled per query as the ensemble
teacher does, each member alone included. The choice is the simplest fusion (fewest members, then weights
nearest equal) among those within ``label.fit_tolerance`` standard errors of the best fit nDCG@10 (the one-standard-error rule: on SciFact the best fit of
100 train claims, BM25 at 0.7, reranked the test claims 1.2 points below the equal fusion). On the
second half (``measure``), which the choice never saw, its per-query nDCG@10 minus the student's gives the
margin and a paired bootstrap interval. There is headroom when the interval's lower bound is above
``label.headroom_margin``; without it the train stage keeps the base (``train.force_train`` overrides). With no
query to measure on (only the user's own queries, no dev/train qrels) the default fusion of BM25 and the student
is used, unmeasured (``headroom`` null), and the publish gate alone decides.

A member's cost is probed before it is scored: a bi-encoder times the encoding of a few passages (the whole
corpus is encoded once, cached, unless the cache has it), any other teacher times the pairs of a few
queries. A member whose estimated cost for the selection and the labeling exceeds ``label.max_teacher_hours``
is skipped with its reason. The result is ``teacher.json``.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from specialize.artifacts import iter_jsonl
from specialize.config import Config, LabelConfig
from specialize.datasets import JUDGED_SPLITS
from specialize.metrics import Qrels, paired_interval, per_query_ndcg, ranked_run
from specialize.progress import progress_bar
from specialize.records import Selection
from specialize.stages.label.audit import judged_lists, seeded_sample
from specialize.teachers import NORMALIZERS, BiEncoderTeacher, Teacher, TeacherSpec, load_teacher, parse_teacher, score_many
from specialize.workdir import Workdir

PROBE_QUERIES = 2
PROBE_PASSAGES = 16


@dataclass(frozen=True)
class Basis:
    """Queries with a known relevant passage and their candidate lists, cut into a fit and a measure half."""

    name: str
    queries: Mapping[str, str]
    qrels: Qrels
    lists: Mapping[str, list[str]]
    fit: list[str]
    measure: list[str]


def halves(qids: Sequence[str], seed: int) -> tuple[list[str], list[str]]:
    """Two seeded halves of ``qids`` (fit, measure), the same whatever the input order."""
    ordered = sorted(qids, key=lambda qid: hashlib.sha256(f"{seed}:half:{qid}".encode()).hexdigest())
    return sorted(ordered[::2]), sorted(ordered[1::2])


def term_overlap(query: set[str], source: set[str]) -> float:
    """The share of a query's BM25 terms found in its source passage (1 for a query without terms)."""
    return len(query & source) / len(query) if query else 1.0


def synthetic_basis(
    workdir: Path, queries: Mapping[str, Mapping[str, Any]], texts: Mapping[str, str], label: LabelConfig,
) -> tuple[Basis | None, dict[str, Any]]:
    """Synthetic queries whose source passage is in their full-length candidate list, the source as the relevant one, kept
    only when at most ``label.selection_max_overlap`` of their terms come from the source; and the overlap's facts."""
    from specialize.retrieval import bm25_terms

    lists = {}
    for _, record in iter_jsonl(Workdir(workdir).candidates):
        source = queries[record["qid"]]["source_id"]
        if source is not None and source in record["doc_ids"] and len(record["doc_ids"]) >= label.min_list_size:
            lists[record["qid"]] = record["doc_ids"]
    qids = sorted(lists)
    query_terms = bm25_terms([queries[q]["text"] for q in qids])
    source_terms = bm25_terms([texts[queries[q]["source_id"]] for q in qids])
    overlap = {q: term_overlap(a, b) for q, a, b in zip(qids, query_terms, source_terms)}
    low = [q for q in qids if overlap[q] <= label.selection_max_overlap]
    facts = {"sourced": len(qids), "median_overlap": round(float(np.median(list(overlap.values()))), 3) if qids else None,
             "max_overlap": label.selection_max_overlap, "at_most_max": len(low)}
    chosen = seeded_sample(low, label.selection_queries, label.seed)
    if len(chosen) < 2:
        return None, facts
    fit, measure = halves(chosen, label.seed)
    return Basis("synthetic", {q: queries[q]["text"] for q in chosen}, {q: {queries[q]["source_id"]: 1} for q in chosen},
                 {q: lists[q] for q in chosen}, fit, measure), facts


def judged_basis(config: Config, ids: Sequence[str], texts: Sequence[str]) -> Basis | None:
    """The source's judged queries of a dev or train split (never test), candidates mined as for synthetic ones."""
    judged = judged_lists(config, ids, texts, config.label.selection_queries, JUDGED_SPLITS)
    if judged is None or len(judged[3]) < 2:
        return None
    split, all_queries, all_qrels, lists = judged
    fit, measure = halves(list(lists), config.label.seed)
    return Basis(f"judged ({split} split)", {q: all_queries[q] for q in lists}, {q: all_qrels[q] for q in lists}, lists, fit, measure)


def simplex(members: int, step: float) -> list[tuple[float, ...]]:
    """Every weight vector on the simplex grid of ``step`` (weights ≥ 0 summing to 1), one-hot vectors first."""
    units = round(1 / step)
    grid = [tuple(c / units for c in combo) for combo in itertools.product(range(units + 1), repeat=members) if sum(combo) == units]
    return sorted(grid, key=lambda w: sum(x > 0 for x in w))


def fused_ndcg(basis: Basis, member_scores: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float], qids: Sequence[str]) -> dict[str, float]:
    """Per query of ``qids``, the nDCG@10 (0-100) of the lists ordered by the weighted members' normalized scores."""
    fused = {q: sum((w * scores[q] for w, scores in zip(weights, member_scores) if w > 0), np.zeros(len(basis.lists[q]))) for q in qids}
    run = ranked_run({q: basis.lists[q] for q in qids}, fused)
    return {q: 100 * v for q, v in per_query_ndcg({q: basis.qrels[q] for q in qids}, run).items()}


def fusion_spec(members: Sequence[str], weights: Sequence[float]) -> str:
    """The teacher spec of a fusion: the member alone when one weight is non-zero, else an ensemble."""
    used = [(member, weight) for member, weight in zip(members, weights) if weight > 0]
    if len(used) == 1:
        return used[0][0]
    return "ensemble:" + ",".join(f"{member}={weight:g}" for member, weight in used)


def probe_cost(
    spec: TeacherSpec, config: Config, corpus: tuple[Sequence[str], Sequence[str]], items: Sequence[tuple[str, Sequence[str]]], total_pairs: int,
) -> tuple[Callable[[], Teacher], float, str]:
    """(what builds the teacher, its estimated seconds for the selection and the labeling, how that was measured).

    A bi-encoder's cost is its corpus encoding (nothing when cached); building it encodes the corpus into the cache.
    """
    label, prefixes = config.label, config.prefixes
    ids, texts = corpus
    if spec.kind == "bi-encoder" and spec.model is not None:
        from specialize.encoder import cached_corpus, load_encoder

        encoder = load_encoder(spec.model, label.backend, None, prefixes)
        build = lambda: BiEncoderTeacher(encoder, label.batch_size, corpus)  # noqa: E731
        if cached_corpus(encoder, ids, texts):
            return build, 0.0, "corpus embeddings cached"
        sample = list(texts[: min(PROBE_PASSAGES, len(texts))])
        encoder.encode(sample[:2], label.batch_size, kind="passage")  # warm-up: the first call pays for setting up
        started = time.perf_counter()
        encoder.encode(sample, label.batch_size, kind="passage")
        per_passage = (time.perf_counter() - started) / len(sample)
        return build, per_passage * len(texts), f"{1 / per_passage:.1f} passages/s on {len(sample)}, × {len(texts)} corpus passages"
    teacher = load_teacher(spec, label, corpus, prefixes)
    probe = items[:PROBE_QUERIES]
    pairs = sum(len(p) for _, p in probe)
    started = time.perf_counter()
    score_many(teacher, probe)
    per_pair = (time.perf_counter() - started) / max(pairs, 1)
    total = sum(len(p) for _, p in items) + total_pairs
    return lambda: teacher, per_pair * total, f"{1 / max(per_pair, 1e-9):.0f} pairs/s on {pairs}, × {total} pairs"


def select_teacher(workdir: Path, config: Config, corpus: tuple[Sequence[str], Sequence[str]], queries: Mapping[str, Mapping[str, Any]]) -> Selection:
    """Score the candidates, choose the teacher and measure its headroom over the student; the ``teacher.json`` record."""
    began = time.perf_counter()
    label = config.label
    ids, texts = corpus
    student = f"bi-encoder:{config.train.student}"
    names = list(dict.fromkeys([student, *(str(parse_teacher(c)) for c in label.candidates)]))
    text_of = dict(zip(ids, texts))
    synthetic, overlap = synthetic_basis(workdir, queries, text_of, label)
    bases = [basis for basis in (judged_basis(config, ids, texts), synthetic) if basis]
    if not bases:
        return unmeasured(student).model_copy(update={"synthetic_overlap": overlap})
    total_pairs = sum(len(r["doc_ids"]) for _, r in iter_jsonl(Workdir(workdir).candidates))
    budget = label.max_teacher_hours * 3600
    members, scores, rows = [], [], []  # scores: per basis, per member, qid -> normalized scores
    normalize = NORMALIZERS[label.ensemble_normalization]
    items_of = [[(basis.queries[q], [text_of[d] for d in basis.lists[q]]) for q in basis.lists] for basis in bases]
    items = [item for basis_items in items_of for item in basis_items]
    for name in names:
        build, estimate, how = probe_cost(parse_teacher(name), config, corpus, items, total_pairs)
        row: dict[str, Any] = {"teacher": name, "estimated_seconds": round(estimate, 1), "cost_probe": how}
        if estimate > budget and name != student:
            row["skipped"] = f"estimated {estimate / 3600:.2f} h > label.max_teacher_hours ({label.max_teacher_hours:g})"
            rows.append(row)
            continue
        teacher = build()
        started = time.perf_counter()
        with progress_bar(f"{name} · selection", total=len(items), unit="queries") as advance:
            member = []
            for basis, basis_items in zip(bases, items_of):
                raw = score_many(teacher, basis_items)
                member.append({q: normalize(scores) for q, scores in zip(basis.lists, raw)})
                advance(len(basis_items))
        row["seconds"] = round(time.perf_counter() - started, 1)
        members.append(name)
        scores.append(member)
        rows.append(row)
    return choose(bases, members, scores, rows, config).model_copy(update={"synthetic_overlap": overlap, "seconds": round(time.perf_counter() - began, 1)})


def unmeasured(student: str) -> Selection:
    """The record when nothing can be measured (only the user's own queries, no dev/train qrels): the default fusion, trained."""
    chosen = f"ensemble:bm25=1,{student}=1"
    reason = (f"teacher `{chosen}` (the default fusion), not measured: no query has both a known relevant passage and a human query's "
              "low term overlap with it (your own queries have no source passage, generated ones may copy theirs, and the corpus has no "
              "dev or train qrels); headroom unknown, the publish gate decides")
    return Selection(student=student, chosen=chosen, weights={}, best_fit=None, basis="none", fit_queries=0, measure_queries=0, bases={}, margin=None,
                     ci_low=None, ci_high=None, confidence=None, headroom=None, reason=reason, members=[], candidates=[])


def simplicity(weights: Sequence[float]) -> tuple[int, float]:
    """How simple a fusion is, simplest first: its members, then how far its weights are from equal (L1)."""
    used = [w for w in weights if w > 0]
    return len(used), round(sum(abs(w - 1 / len(used)) for w in used), 9)


def settle_ties(fit: Mapping[tuple[float, ...], Mapping[str, float]], tolerance: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(the best fit's weights, the chosen weights): the simplest fusion (:func:`simplicity`) among those whose fit nDCG@10
    is within ``tolerance`` standard errors (paired, over the fit queries) of the best's. The one-standard-error rule of
    model selection: a grid of weights tuned on a hundred queries overfits them, and equal weights are the prior that holds."""
    mean = {w: float(np.mean(list(per_query.values()))) for w, per_query in fit.items()}
    best = max(fit, key=lambda w: mean[w])  # ties: the first, the fewest members
    tied = []
    for weights, per_query in fit.items():
        gaps = np.array([per_query[q] - fit[best][q] for q in fit[best]])
        error = float(gaps.std(ddof=1) / np.sqrt(len(gaps))) if len(gaps) >= 2 else 0.0
        if gaps.mean() >= -tolerance * error - 1e-9:
            tied.append(weights)
    return best, min(tied, key=lambda w: (*simplicity(w), -mean[w]))


def choose(
    bases: Sequence[Basis], members: Sequence[str], scores: Sequence[Sequence[Mapping[str, np.ndarray]]], rows: list[dict[str, Any]], config: Config,
) -> Selection:
    """The fusion chosen on the first basis's fit half (:func:`settle_ties`), its margin over the student (``members[0]``)
    on the measure half. The candidates listed: each set of members at its best fit, and the chosen fusion."""
    label = config.label
    decide = bases[0]
    per_basis = lambda b: [scores[m][b] for m in range(len(members))]  # noqa: E731
    fit = {weights: fused_ndcg(decide, per_basis(0), weights, decide.fit) for weights in simplex(len(members), label.fusion_step)}
    best, chosen_weights = settle_ties(fit, label.fit_tolerance)
    mean_fit = {weights: float(np.mean(list(per_query.values()))) for weights, per_query in fit.items()}
    best_of: dict[tuple[int, ...], tuple[float, ...]] = {}  # members used -> the weights of their best fit
    for weights in fit:
        used = tuple(i for i, w in enumerate(weights) if w > 0)
        if used not in best_of or mean_fit[weights] > mean_fit[best_of[used]] + 1e-9:
            best_of[used] = weights
    listed = [weights for _, weights in sorted(best_of.items(), key=lambda kv: (len(kv[0]), kv[0]))]
    if chosen_weights not in listed:
        listed.append(chosen_weights)
    candidates, measured = [], {}  # measured: weights -> per-query nDCG@10 on the measure half
    for weights in listed:
        candidate: dict[str, Any] = {"teacher": fusion_spec(members, weights), "members": sum(w > 0 for w in weights),
                                     "fit_ndcg@10": round(mean_fit[weights], 2)}
        for b, basis in enumerate(bases):
            per_query = fused_ndcg(basis, per_basis(b), weights, basis.measure if b == 0 else list(basis.lists))
            if b == 0:
                measured[weights] = per_query
            candidate[f"{basis.name} · measure" if b == 0 else basis.name] = round(float(np.mean(list(per_query.values()))), 2)
        candidates.append(candidate)
    chosen = candidates[listed.index(chosen_weights)]
    student_alone = tuple(1.0 if i == 0 else 0.0 for i in range(len(members)))
    ours, theirs = measured[chosen_weights], measured[student_alone]
    deltas = np.array([ours[q] - theirs[q] for q in decide.measure])
    margin = float(deltas.mean())
    low, high = paired_interval(deltas, label.headroom_confidence, label.seed) if len(deltas) >= 2 else (margin, margin)
    headroom = low > label.headroom_margin
    where = f"{len(deltas)} held-out {decide.name} queries"
    evidence = f"{margin:+.2f} nDCG@10 over the student on {where}, {100 * label.headroom_confidence:.0f}% CI {low:+.2f} … {high:+.2f}"
    if chosen_weights != best:
        evidence += (f" (the simplest fusion within {label.fit_tolerance:g} standard error of the best fit, "
                     f"`{fusion_spec(members, best)}` {mean_fit[best]:.2f} against {mean_fit[chosen_weights]:.2f})")
    if headroom:
        reason = f"teacher `{chosen['teacher']}`: {evidence}"
    else:
        reason = (f"no teacher available here beats the student on this corpus: best `{chosen['teacher']}` {evidence}; "
                  "the base model is kept (train.force_train trains anyway) — try a cross-encoder in label.candidates or --teacher")
    return Selection(
        student=members[0], chosen=chosen["teacher"], weights=dict(zip(members, chosen_weights)), best_fit=fusion_spec(members, best),
        basis=decide.name, fit_queries=len(decide.fit), measure_queries=len(decide.measure), bases={basis.name: len(basis.lists) for basis in bases},
        margin=round(margin, 2), ci_low=round(low, 2), ci_high=round(high, 2), confidence=label.headroom_confidence, headroom=bool(headroom),
        reason=reason, members=rows, candidates=candidates,
    )
