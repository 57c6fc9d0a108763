"""Shared fixtures: an isolated cache, no network, small real slices of the bundled SciFact."""

from __future__ import annotations

import json
import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach the Hugging Face hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Bundled-model markers and embedding caches go to a temporary folder, never ~/.cache."""
    os.environ["SPECIALIZE_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def scifact_slice(tmp_path_factory):
    """A BEIR folder: 30 SciFact test queries, their relevant abstracts and 150 others (real text)."""
    from specialize.datasets import load_corpus, load_qrels, load_queries, resolve_dataset

    folder = resolve_dataset("demo:scifact")
    qrels = dict(list(load_qrels(folder, "test").items())[:30])
    queries = load_queries(folder)
    relevant = {doc for rels in qrels.values() for doc in rels}
    docs, others = [], 0
    for doc in load_corpus(folder):
        if doc["_id"] in relevant or others < 150:
            others += doc["_id"] not in relevant
            docs.append(doc)
    out = tmp_path_factory.mktemp("scifact_slice")
    (out / "qrels").mkdir()
    (out / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (out / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": queries[q]}) + "\n" for q in qrels))
    rows = [f"{q}\t{d}\t{s}" for q, rels in qrels.items() for d, s in rels.items()]
    (out / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return out


@pytest.fixture(scope="session")
def scifact_claims(scifact_slice):
    """The slice's test claims as queries.jsonl records: type claim, source = first relevant doc."""
    from specialize.datasets import load_qrels, load_queries

    texts = load_queries(scifact_slice)
    return [
        {"qid": qid, "text": texts[qid], "type": "claim", "source_id": next(iter(rels)), "generator": "scifact"}
        for qid, rels in load_qrels(scifact_slice, "test").items()
    ]


TINY_CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
"""A chat template for the bundled gemma-270m, a base model whose GGUF has none."""


@pytest.fixture(scope="session")
def gemma_llama_cpp():
    """The bundled gemma-270m GGUF through llama.cpp (with a test chat template), loaded once."""
    from specialize.config import LLMConfig
    from specialize.llm import load_llm

    return load_llm("bundled:gemma-270m", LLMConfig(backend="llama_cpp", chat_template=TINY_CHAT_TEMPLATE, context_tokens=1024))
