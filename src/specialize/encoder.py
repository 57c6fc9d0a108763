"""Loading a SentenceTransformer on the fastest sound backend, and encoding a corpus with a disk cache.

Corpus embeddings are cached under ``<cache>/embeddings/<key>/`` where the key covers the
model weights, backend, max length, passage prefix and the corpus content, so ``evaluate``
and ``mine`` share them and a killed encode resumes from its last finished chunk.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from specialize.artifacts import atomic_path, write_json
from specialize.errors import SpecializeError
from specialize.models import Prefixes, PrefixOverrides, cache_dir, document_fingerprint, model_prefixes, resolve_loadable
from specialize.progress import progress_bar, stderr

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

# Measured in benchmarks/bench_cpu_backends.py (benchmarks/results/cpu_backends.json): the
# fastest backend whose SciFact nDCG@10 stays within 0.3 of torch fp32 on this hardware.
CPU_DEFAULT_BACKEND = "torch"
# sentence-transformers' ONNX and OpenVINO backends need optimum packages that cannot be
# installed beside transformers 5 (see benchmarks/results/cpu_backends.json, "not_measured").
BACKENDS = ("torch", "torch-int8")
CHUNK_DOCS = 1024


@dataclass
class Encoder:
    """A loaded model with the facts that make its embeddings reproducible."""

    name: str
    model: SentenceTransformer
    backend: str
    prefixes: Prefixes
    fingerprint: str
    """Of the model whose passage embeddings this one gives (``document_fingerprint``): the corpus cache's key."""

    @property
    def max_seq_length(self) -> int:
        length = self.model.max_seq_length
        if length is None:  # sentence-transformers: a first module without a length limit
            raise SpecializeError(f"{self.name}: the model has no max_seq_length")
        return int(length)

    def encode(self, texts: Sequence[str], batch_size: int, kind: str) -> np.ndarray:
        """Normalized float32 embeddings of queries (``kind="query"``) or passages, with the model's prefix.

        Queries take the model's query route and passages its document route (one and the same in most models).
        """
        prefix = self.prefixes.query if kind == "query" else self.prefixes.passage
        encode = self.model.encode_query if kind == "query" else self.model.encode_document
        return encode(
            [prefix + text for text in texts],
            prompt="",  # the prefix is ours, whatever prompts the model's config names
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ).astype(np.float32, copy=False)


def resolve_backend(backend: str) -> str:
    """``auto`` becomes torch on a GPU and the measured CPU default otherwise."""
    if backend != "auto":
        return backend
    import torch

    return "torch" if torch.cuda.is_available() else CPU_DEFAULT_BACKEND


def load_encoder(
    name: str,
    backend: str = "auto",
    max_seq_length: int | None = None,
    prefix_overrides: PrefixOverrides | None = None,
) -> Encoder:
    """Load ``name`` (HF id, path or bundled:alias) as a SentenceTransformer on ``backend``."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # our own bar reports the work that matters
    backend = resolve_backend(backend)
    if backend not in BACKENDS:
        raise SpecializeError(f"backend {backend!r}: choose one of auto, {', '.join(BACKENDS)}")
    path = resolve_loadable(name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = SentenceTransformer(path)
    except (OSError, ValueError) as exc:  # ValueError: a folder without a model's config ("Unrecognized model")
        where = f" from {path}" if path != name else ""
        raise SpecializeError(f"{name}: cannot load a sentence-transformers model{where} ({str(exc).splitlines()[0]})") from None
    if backend == "torch-int8":
        model = _quantize_int8(model)
    if max_seq_length is not None:
        model.max_seq_length = min(max_seq_length, model.max_seq_length or max_seq_length)
    return Encoder(name, model, backend, model_prefixes(name, prefix_overrides), document_fingerprint(name))


def _quantize_int8(model):
    """Dynamic int8 quantization of every Linear layer (torch's own CPU path)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def corpus_key(encoder: Encoder, ids: Sequence[str], texts: Sequence[str]) -> str:
    """Cache key of a corpus's embeddings under one encoder."""
    digest = hashlib.sha256()
    facts = [encoder.fingerprint, encoder.backend, encoder.max_seq_length, encoder.prefixes.passage]
    digest.update(json.dumps(facts).encode())
    # One update per field rather than per document: the per-call overhead dominated on big corpora.
    digest.update("\0".join(ids).encode() + b"\1")
    digest.update("\0".join(texts).encode())
    return digest.hexdigest()[:32]


def _corpus_folder(encoder: Encoder, ids: Sequence[str], texts: Sequence[str]) -> Path:
    return cache_dir() / "embeddings" / corpus_key(encoder, ids, texts)


def cached_corpus(encoder: Encoder, ids: Sequence[str], texts: Sequence[str]) -> bool:
    """Whether the cache holds the corpus's finished embeddings under this encoder."""
    return (_corpus_folder(encoder, ids, texts) / "embeddings.npy").is_file()


def encode_corpus(
    encoder: Encoder, ids: Sequence[str], texts: Sequence[str], batch_size: int = 64, label: str = "encoding"
) -> np.ndarray:
    """Embeddings of ``texts`` in input order, from the cache when present.

    Texts are encoded longest first (less padding per batch) in chunks of ``CHUNK_DOCS``;
    each finished chunk is saved, so a killed run resumes where it stopped.
    """
    if not texts:
        raise SpecializeError("nothing to encode: the corpus is empty")
    folder = _corpus_folder(encoder, ids, texts)
    final = folder / "embeddings.npy"
    cached = _load_cached(final, len(texts))
    if cached is not None:
        return cached
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    chunks = [order[start : start + CHUNK_DOCS] for start in range(0, len(order), CHUNK_DOCS)]
    folder.mkdir(parents=True, exist_ok=True)
    parts: list[np.ndarray] = []
    with progress_bar(label, total=len(texts), unit="docs") as advance:
        for number, chunk in enumerate(chunks):
            part_path = folder / f"chunk-{number:05d}.npy"
            part = _load_cached(part_path, len(chunk))
            if part is not None:
                parts.append(part)
                advance(len(chunk))
                continue
            batches = []
            for start in range(0, len(chunk), batch_size):
                batch = [texts[i] for i in chunk[start : start + batch_size]]
                batches.append(encoder.encode(batch, batch_size=batch_size, kind="passage"))
                advance(len(batch))
            parts.append(np.concatenate(batches))
            _save_npy(part_path, parts[-1])
    embeddings = np.empty((len(texts), parts[0].shape[1]), dtype=np.float32)
    embeddings[np.asarray(order)] = np.concatenate(parts)
    _save_npy(final, embeddings)
    write_json(folder / "info.json", {"model": encoder.name, "backend": encoder.backend, "docs": len(texts)})
    for number in range(len(chunks)):
        (folder / f"chunk-{number:05d}.npy").unlink(missing_ok=True)
    return embeddings


def _load_cached(path: Path, rows: int) -> np.ndarray | None:
    """The cached embeddings of ``rows`` texts at ``path``; None when there are none, or when the file is damaged
    (truncated, another shape): then it is deleted, with a line saying so, and computed again."""
    if not path.is_file():
        return None
    try:
        array = np.load(path)
    except (OSError, ValueError, EOFError):
        array = None
    if array is None or array.ndim != 2 or array.shape[0] != rows:
        stderr.print(f"{path}: a damaged cache entry (truncated?): deleted, computed again", highlight=False, soft_wrap=True)
        path.unlink(missing_ok=True)
        return None
    return array


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)

