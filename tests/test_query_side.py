"""Query-side training: only the query encoder learns, against the base model's cached corpus embeddings.

Real bundled MiniLM on the tiny SciFact lists of test_train: the published folder is one SentenceTransformer whose
document route gives the base's vectors bit for bit (and shares its embedding cache), every loss trains in this mode,
a kill resumes, and the losses' corpus-wide negatives match a hand computation.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_train import StopAfterFirstStep, lists_dir, run_cli, tiny, tiny_flags, workdir_with  # noqa: F401

from specialize.encoder import load_encoder
from specialize.losses import ListwiseDistillationLoss
from specialize.losses.infonce_loss import in_batch_infonce
from specialize.losses.query_side import QuerySideLoss
from specialize.models import model_fingerprint, resolve_model
from specialize.stages.train.data import query_side_dataset, read_lists
from specialize.stages.train.stage import train

QUERY = {"mode": "query", "keep_worse": True}


@pytest.fixture(scope="module")
def query_run(tmp_path_factory, lists_dir):  # noqa: F811
    work = workdir_with(lists_dir, tmp_path_factory.mktemp("query") / "w")
    return work, run_cli("train", "--workdir", str(work), *tiny_flags(**QUERY))


def passages(work, count=6) -> list[str]:
    rows = [json.loads(line) for line in (work / "corpus.jsonl").read_text().splitlines()[:count]]
    return [f"{row['title']} {row['text']}".strip() for row in rows]


def test_the_published_model_keeps_every_document_vector_of_the_base(query_run):
    from sentence_transformers import SentenceTransformer

    work, (code, _, err) = query_run
    assert code == 0, err
    folder = work / "models" / "student"
    model = SentenceTransformer(str(folder))  # a plain load, as a user would
    base = SentenceTransformer(resolve_model("bundled:minilm"))
    texts = passages(work)
    assert np.array_equal(model.encode_document(texts), base.encode(texts))
    claims = [row.query for row in read_lists(work / "dev.jsonl", 3)]
    assert not np.allclose(model.encode_query(claims), base.encode(claims), atol=1e-4)
    summary = json.loads((work / "train.json").read_text())
    assert summary["mode"] == "query" and summary["published"] == "trained" and summary["train_seconds"] > 0
    assert summary["hyperparameters"]["corpus_negatives"] is True and summary["hyperparameters"]["passage_max_length"] == 256
    card = (folder / "README.md").read_text()
    for fact in ("query side only", "### Query side only", "model.encode_document", "keep your index"):
        assert fact in card, fact


def test_the_published_model_shares_the_bases_corpus_embeddings_until_its_document_route_changes(query_run):
    work, _ = query_run
    folder = work / "models" / "student"
    published = load_encoder(str(folder))
    assert published.fingerprint == model_fingerprint("bundled:minilm")
    texts = passages(work)
    assert np.array_equal(published.encode(texts, 4, "passage"), load_encoder("bundled:minilm").encode(texts, 4, "passage"))
    pooling = folder / "document_1_Pooling" / "config.json"
    original = pooling.read_text()
    try:
        pooling.write_text(original.replace('"mean"', '"cls"'))
        assert load_encoder(str(folder)).fingerprint != model_fingerprint("bundled:minilm")
    finally:
        pooling.write_text(original)


def test_the_linear_adapter_learns_only_its_map_and_publishes_a_plain_sentence_transformer(tmp_path, lists_dir):  # noqa: F811
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer

    work = workdir_with(lists_dir, tmp_path / "w")
    counts = train(work, tiny(**QUERY, adapter="linear"))
    summary = json.loads((work / "train.json").read_text())
    assert counts["steps"] == 2 and summary["hyperparameters"]["adapter"] == "linear"
    assert summary["trained_parameters"] == 384 * 384 + 384 and summary["hyperparameters"]["learning_rate"] == 1e-3
    folder = work / "models" / "student"
    model = SentenceTransformer(str(folder))
    base = SentenceTransformer(resolve_model("bundled:minilm"))
    texts = passages(work)
    assert np.array_equal(model.encode_document(texts), base.encode(texts))
    # The query route's encoder is the base's, bit for bit; only the map moved away from zero.
    (encoder,) = folder.glob("query_0_*")
    weights, original = load_file(str(encoder / "model.safetensors")), load_file(f"{resolve_model('bundled:minilm')}/model.safetensors")
    assert len(weights) > 50 and all(torch.equal(weights[key], original[key]) for key in weights)
    (dense,) = folder.glob("query_3_Dense")
    assert load_file(str(dense / "model.safetensors"))["linear.weight"].abs().max() > 0
    claims = [row.query for row in read_lists(work / "dev.jsonl", 3)]
    adapted = model.encode_query(claims)
    assert not np.allclose(adapted, base.encode(claims), atol=1e-5) and np.allclose(np.linalg.norm(adapted, axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="adapter 'linear' trains on the query side only"):
        tiny(mode="full", adapter="linear")


def test_training_sees_queries_and_corpus_rows_only(lists_dir):  # noqa: F811
    rows = read_lists(lists_dir / "train.jsonl", 3)
    position = {doc: i for i, doc in enumerate(sorted({d for row in rows for d in row.doc_ids}))}
    dataset = query_side_dataset(rows, position, 3)
    first = dataset[0]
    assert set(dataset.column_names) == {"query", "label"} and first["query"] == rows[0].query
    assert first["label"].dtype == torch.float64 and first["label"].shape == (2, 3)
    assert first["label"][0].tolist() == rows[0].scores[:3]
    assert first["label"][1].tolist() == [position[doc] for doc in rows[0].doc_ids[:3]]


@pytest.mark.parametrize("loss", ["listwise", "infonce", "marginmse"])
def test_each_loss_trains_in_query_mode(tmp_path, lists_dir, loss):  # noqa: F811
    work = workdir_with(lists_dir, tmp_path / "w")
    counts = train(work, tiny(**QUERY, loss=loss, max_steps=1))
    summary = json.loads((work / "train.json").read_text())
    assert counts["steps"] == 1 and summary["loss"] == loss and summary["mode"] == "query"
    assert (work / "models" / "student" / "document_route.json").is_file()


def test_a_killed_query_side_run_resumes_to_the_same_model(tmp_path, lists_dir, query_run):  # noqa: F811
    from safetensors.torch import load_file

    work = workdir_with(lists_dir, tmp_path / "w")
    train(work, tiny(**QUERY), callbacks=[StopAfterFirstStep()])
    assert train(work, tiny(**QUERY, resume=True))["steps"] == 2
    resumed = load_file(str(work / "checkpoints" / "checkpoint-2" / "model.safetensors"))
    uninterrupted = load_file(str(query_run[0] / "checkpoints" / "checkpoint-2" / "model.safetensors"))
    assert resumed.keys() == uninterrupted.keys() and all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def batch(seed=0, n_docs=12, dim=8):
    """Two queries with three corpus rows each (one shared), teacher scores, and a small corpus."""
    generator = torch.Generator().manual_seed(seed)
    corpus = F.normalize(torch.randn(n_docs, dim, generator=generator), dim=-1)
    query = torch.randn(2, dim, generator=generator)
    rows = torch.tensor([[3, 5, 7], [7, 1, 2]])
    scores = torch.tensor([[0.9, 0.7, 0.1], [1.0, 0.2, 0.0]])
    return query, corpus, rows, scores


def test_corpus_negatives_contrast_the_positive_with_every_corpus_passage():
    query, corpus, rows, scores = batch()
    got = in_batch_infonce(query, corpus[rows], scores, 0.05, 0.6, rows, corpus)
    logits = F.normalize(query, dim=-1) @ corpus.T / 0.05
    # query 0: positive row 3, row 5 scores 0.7 > 0.6 * 0.9 (a likely false negative) is masked; query 1: positive row 7.
    logits[0, 5] = float("-inf")
    expected = F.cross_entropy(logits, torch.tensor([3, 7]))
    torch.testing.assert_close(got, expected)


def test_the_query_side_loss_is_the_list_loss_over_the_looked_up_passages():
    query, corpus, rows, scores = batch()
    inner = ListwiseDistillationLoss(None)
    labels = torch.stack([scores.double(), rows.double()], dim=1)

    class Encoder(torch.nn.Module):
        def forward(self, features):
            return {"sentence_embedding": features["x"]}

    inner.model = Encoder()
    in_batch = QuerySideLoss(inner, corpus, corpus_negatives=False)([{"x": query}], labels)
    torch.testing.assert_close(in_batch, ListwiseDistillationLoss(None).compute_loss_from_embeddings(query, corpus[rows], scores, rows))
    whole = QuerySideLoss(inner, corpus, corpus_negatives=True)([{"x": query}], labels)
    reference = ListwiseDistillationLoss(None)
    reference.corpus = corpus
    torch.testing.assert_close(whole, reference.compute_loss_from_embeddings(query, corpus[rows], scores, rows))
    assert not torch.isclose(whole, in_batch)
    with pytest.raises(ValueError, match="one query column and labels"):
        QuerySideLoss(inner, corpus)([{"x": query}, {"x": query}], labels)


def test_the_query_side_defaults_to_a_lower_rate_and_three_epochs():
    from specialize.config import TrainConfig
    from specialize.stages.train.recipe import default_learning_rate, epochs

    assert default_learning_rate(22_700_000, "query") == pytest.approx(3e-5) and default_learning_rate(22_700_000) == 5e-5
    assert epochs(TrainConfig()) == 3 and epochs(TrainConfig(mode="full")) == 1 and epochs(TrainConfig(epochs=0.5)) == 0.5


def test_a_kept_base_in_query_mode_is_the_base_on_both_routes_and_shares_its_embeddings(tmp_path, lists_dir):  # noqa: F811
    from sentence_transformers import SentenceTransformer

    work = workdir_with(lists_dir, tmp_path / "w")
    counts = train(work, tiny(mode="query", max_steps=1))  # 4 held-out queries: the gate cannot tell and keeps the base
    assert counts["published"] == "base"
    folder = work / "models" / "student"
    model, base = SentenceTransformer(str(folder)), SentenceTransformer(resolve_model("bundled:minilm"))
    claims = [row.query for row in read_lists(work / "dev.jsonl", 3)]
    assert np.allclose(model.encode_query(claims), base.encode(claims), atol=1e-6)
    assert np.array_equal(model.encode_document(passages(work)), base.encode(passages(work)))
    assert load_encoder(str(folder)).fingerprint == model_fingerprint("bundled:minilm")
