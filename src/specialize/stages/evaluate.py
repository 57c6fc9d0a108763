"""Retrieval evaluation on BEIR-format test sets: encode, exact inner-product search, metrics.

Metrics come from pytrec_eval (the trec_eval implementation BEIR and MTEB use): nDCG@10,
Recall@100 and MRR@10, averaged over the split's judged queries.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from specialize.artifacts import atomic_path
from specialize.config import Config, EvaluateConfig, PrefixConfig
from specialize.datasets import Dataset, judged_queries, load_dataset
from specialize.encoder import Encoder, encode_corpus, load_encoder
from specialize.errors import SpecializeError
from specialize.metrics import Run, score_run
from specialize.records import Evaluation, ModelScores
from specialize.retrieval import search
from specialize.workdir import Workdir, slug


def write_trec_run(path: Path, run: Run, tag: str) -> None:
    """Write a run in TREC format: ``qid Q0 docid rank score tag``."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for qid, hits in run.items():
            for rank, (doc_id, score) in enumerate(sorted(hits.items(), key=lambda kv: -kv[1]), start=1):
                handle.write(f"{qid} Q0 {doc_id} {rank} {score:.6f} {tag}\n")


def evaluate_model(encoder: Encoder, dataset: Dataset, config: EvaluateConfig) -> tuple[dict[str, float], Run]:
    """Encode the corpus (cached) and the queries, search, and score one model on one dataset."""
    started = time.perf_counter()
    doc_embeddings = encode_corpus(
        encoder, dataset.doc_ids, dataset.doc_texts, config.batch_size, label=f"{encoder.name} · {dataset.name}"
    )
    query_ids = list(dataset.queries)
    query_embeddings = encoder.encode([dataset.queries[q] for q in query_ids], config.batch_size, kind="query")
    run = search(query_embeddings, doc_embeddings, query_ids, dataset.doc_ids, config.top_k, config.ignore_identical_ids)
    metrics = score_run(dataset.qrels, run)
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    return metrics, run


def evaluate(config: EvaluateConfig, workdir: Path, prefixes: Mapping[str, PrefixConfig] | None = None) -> dict[str, dict[str, Any]]:
    """Evaluate every model on every dataset; write ``eval/<dataset>.json`` and TREC runs; return what each file holds, by dataset.

    Results accumulate: evaluating another model later adds a row to the same JSON file.
    """
    work = Workdir(workdir)
    results: dict[str, Evaluation] = {}
    datasets = [load_dataset(spec, config.split) for spec in config.datasets]
    for model_name in config.models:
        encoder = load_encoder(model_name, config.backend, config.max_seq_length, prefixes)
        for dataset in datasets:
            metrics, run = evaluate_model(encoder, dataset, config)
            run_path = work.run_file(dataset.name, model_name)
            write_trec_run(run_path, run, slug(model_name))
            entry = ModelScores(**metrics, backend=encoder.backend, max_seq_length=encoder.max_seq_length, run_file=str(run_path.relative_to(workdir)))
            result = results.setdefault(dataset.name, _load_previous(work, dataset, config.split))
            result.models[model_name] = entry
            result.write(work.eval_file(dataset.name))
    return {name: result.model_dump(mode="json") for name, result in results.items()}


def _load_previous(work: Workdir, dataset: Dataset, split: str) -> Evaluation:
    """The dataset's results file so far (rows for other models), or a fresh one."""
    fresh = Evaluation(dataset=dataset.name, split=split, queries=len(dataset.queries), docs=len(dataset.doc_ids), models={})
    previous = Evaluation.read_if_there(work.eval_file(dataset.name))
    if previous is not None and previous.split == split and previous.docs == len(dataset.doc_ids):
        fresh.models = previous.models
    return fresh


def targets(work: Workdir, config: Config) -> tuple[list[str], list[str]]:
    """(models, datasets) the stage compares: as configured, else the student before and after training and every
    trained variant, on the corpus source's test qrels when it has them."""
    published = work.model(config.train.output)
    models = config.evaluate.models or [config.train.student, *([str(published)] if published.is_dir() else []), *work.variant_models(config.train.output)]
    datasets = config.evaluate.datasets
    if not datasets and judged_queries(config.prepare.corpus, splits=(config.evaluate.split,)) is not None:
        datasets = [str(config.prepare.corpus)]
    return models, datasets


def run(work: Workdir, config: Config) -> dict[str, Any]:
    """The stage as the pipeline runs it: nDCG@10 and Recall@100 of every model on every dataset, as manifest counts."""
    models, datasets = targets(work, config)
    if not datasets:
        raise SpecializeError(f"evaluate: no test set given (the corpus has no qrels/{config.evaluate.split}.tsv): pass --dataset or set evaluate.datasets")
    results = evaluate(config.evaluate.model_copy(update={"models": models, "datasets": datasets}), work.root, config.prefixes)
    return {f"{dataset}:{model}:{metric}": round(100 * row[metric], 2)
            for dataset, result in results.items() for model, row in result["models"].items() for metric in ("ndcg@10", "recall@100")}
