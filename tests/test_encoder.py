"""Encoder loading: backends, prefixes, and the errors a user can meet."""

from __future__ import annotations

import numpy as np
import pytest

from specialize.encoder import BACKENDS, load_encoder, resolve_backend
from specialize.errors import SpecializeError

TEXTS = [
    "Aspirin reduces the risk of heart attack in adults with prior cardiovascular disease.",
    "The court held that the contract was void for lack of consideration.",
    "Use git rebase to replay local commits on top of the updated main branch.",
]


@pytest.fixture(scope="module")
def fp32():
    return load_encoder("bundled:minilm", backend="torch")


def test_torch_encoder_gives_unit_vectors(fp32):
    embeddings = fp32.encode(TEXTS, batch_size=2, kind="passage")
    assert embeddings.shape == (3, 384) and embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    assert fp32.backend == "torch" and fp32.max_seq_length == 256


def test_int8_backend_quantizes_linear_layers_and_keeps_meaning(fp32):
    import torch

    int8 = load_encoder("bundled:minilm", backend="torch-int8")
    quantized = [m for m in int8.model.modules() if type(m).__module__.startswith("torch.ao.nn.quantized")]
    assert quantized and not any(isinstance(m, torch.nn.Linear) and type(m) is torch.nn.Linear for m in int8.model.modules())
    a, b = fp32.encode(TEXTS, 8, "passage"), int8.encode(TEXTS, 8, "passage")
    similarity = a @ b.T
    assert (np.diag(similarity) > 0.8).all()  # each text stays nearest to itself
    assert (similarity.argmax(axis=1) == np.arange(3)).all()


def test_prefixes_are_applied(monkeypatch, fp32):
    seen = []
    def encode(inputs, **kw):
        seen.extend((text, kw["task"], kw["prompt"]) for text in inputs)
        return np.zeros((len(inputs), 384))

    monkeypatch.setattr(fp32.model, "encode", encode)
    fp32.prefixes = type(fp32.prefixes)("query: ", "passage: ")
    fp32.encode(["a"], 1, "query")
    fp32.encode(["b"], 1, "passage")
    assert seen == [("query: a", "query", ""), ("passage: b", "document", "")]  # each on its route, no second prompt


def test_max_seq_length_is_capped_by_the_model():
    assert load_encoder("bundled:minilm", backend="torch", max_seq_length=128).max_seq_length == 128
    assert load_encoder("bundled:minilm", backend="torch", max_seq_length=4096).max_seq_length == 256


def test_auto_is_a_real_backend():
    assert resolve_backend("auto") in BACKENDS


def test_unreachable_hub_model_is_one_line():
    with pytest.raises(SpecializeError, match="no-such-org/no-such-model: cannot load a sentence-transformers model \\(") as info:
        load_encoder("no-such-org/no-such-model", backend="torch")
    assert "\n" not in str(info.value)


def test_unknown_backend():
    with pytest.raises(SpecializeError, match="backend 'gpu'"):
        load_encoder("bundled:minilm", backend="gpu")
