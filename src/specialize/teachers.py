"""Teachers: score a query's candidate passages; higher is more relevant.

Teachers share one interface, ``score(query, passages) -> list[float]`` (and, when they can
batch, ``score_many(items)``). Specs (``label.teacher`` or ``--teacher``)::

    bm25                               BM25 (bm25s, same tokenizer and stemmer as mine) over the corpus
    bi-encoder:<model>                 cosine of a SentenceTransformer's embeddings (query prefix applied)
    cross-encoder:<model>              a sentence-transformers CrossEncoder (HF id, path or bundled:<alias>)
    monot5:<model>                     a monoT5 reranker: P("true") after "Query: q Document: d Relevant:"
    rankt5:<model>                     a RankT5 reranker: the logit of <extra_id_10> at the first decoder step
    llm-judge:<model>                  an instruct LLM's log P(yes) - log P(no) (backend from label.llm)
    ensemble:<member>=<w>,<member>=<w> weighted mean of the members' scores, min-max scaled per query

A list in the config (``teacher: [bm25, bi-encoder:bundled:minilm]``) is an ensemble of its
members; ``=<w>`` is optional (weight 1).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from specialize.config import LabelConfig, PrefixConfig
from specialize.errors import SpecializeError
from specialize.models import resolve_loadable
from specialize.retrieval import BM25, BM25Retriever

MODEL_KINDS = ("bi-encoder", "cross-encoder", "monot5", "rankt5", "llm-judge")
KINDS = ("bm25", *MODEL_KINDS, "ensemble")
EXAMPLES = {
    "bi-encoder": "bundled:minilm",
    "cross-encoder": "cross-encoder/ms-marco-MiniLM-L6-v2",
    "monot5": "castorini/monot5-base-msmarco-10k",
    "rankt5": "Soyoung97/RankT5-base",
    "llm-judge": "bundled:qwen-1.5b",
}
SYNTAX = "use bm25, " + ", ".join(f"{kind}:<model>" for kind in MODEL_KINDS) + " or ensemble:<member>=<weight>,..."


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


def needs_corpus(spec: TeacherSpec) -> bool:
    """Whether the teacher needs the whole corpus (BM25 statistics, the bi-encoder's embedding cache)."""
    if spec.kind == "ensemble":
        return any(needs_corpus(member) for member, _ in spec.members)
    return spec.kind in ("bm25", "bi-encoder")


def _single(text: str, whole: str) -> TeacherSpec:
    kind, _, model = text.partition(":")
    if text == BM25:
        return TeacherSpec("bm25")
    if kind in MODEL_KINDS:
        if not model.strip():
            raise SpecializeError(f"teacher {whole!r}: {kind} needs a model, e.g. {kind}:{EXAMPLES[kind]}")
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


def score_pairs(items: Sequence[Item], score: Callable[[list[tuple[str, str]]], np.ndarray], longest_first: bool = True) -> list[list[float]]:
    """Flatten items into (query, passage) pairs, score them in one call and regroup per item.

    ``longest_first`` sorts the pairs by length so each batch pads little; without it the pairs
    keep their order, so the candidates of one query stay together (an LLM reuses its cached prefix).
    """
    pairs = [(query, passage) for query, group in items for passage in group]
    if not pairs:
        return [[] for _ in items]
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1]))) if longest_first else list(range(len(pairs)))
    flat = np.empty(len(order), dtype=np.float64)
    flat[order] = np.asarray(score([pairs[i] for i in order]), dtype=np.float64).reshape(len(order))
    out, start = [], 0
    for _, group in items:
        out.append([float(x) for x in flat[start : start + len(group)]])
        start += len(group)
    return out


def _load_error(model_name: str, what: str, exc: Exception) -> SpecializeError:
    return SpecializeError(f"{model_name}: cannot load the {what} ({str(exc).splitlines()[0]})")


class CrossEncoderTeacher:
    """A sentence-transformers CrossEncoder on (query, passage) pairs, longest passages first per batch."""

    def __init__(self, model_name: str, batch_size: int = 32) -> None:
        import warnings

        from sentence_transformers import CrossEncoder

        self.name = f"cross-encoder:{model_name}"
        self.batch_size = batch_size
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.model = CrossEncoder(resolve_loadable(model_name))
        except (OSError, ValueError) as exc:
            raise _load_error(model_name, "cross-encoder", exc) from None

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        return self.score_many([(query, passages)])[0]

    def score_many(self, items: Sequence[Item]) -> list[list[float]]:
        """All pairs of all items in one predict call."""
        predict = lambda pairs: np.asarray(  # noqa: E731
            self.model.predict(pairs, batch_size=self.batch_size, show_progress_bar=False, convert_to_numpy=True)
        ).reshape(len(pairs), -1)[:, 0]
        return score_pairs(items, predict)


class T5Teacher:
    """A T5 reranker scoring the first decoder step: monoT5 or RankT5.

    - ``monot5`` (Nogueira et al., 2020, "Document Ranking with a Pretrained Sequence-to-Sequence
      Model"): input ``Query: q Document: d Relevant:``; score = P("true") from the softmax over
      the "true" and "false" logits.
    - ``rankt5`` (Zhuang et al., 2023, "RankT5"): input ``Query: q Document: d``; score = the raw
      logit of ``<extra_id_10>``.
    """

    TEMPLATES = {"monot5": "Query: {query} Document: {passage} Relevant:", "rankt5": "Query: {query} Document: {passage}"}

    def __init__(self, kind: str, model_name: str, batch_size: int = 32, max_length: int = 512) -> None:
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.name, self.kind = f"{kind}:{model_name}", kind
        self.batch_size, self.max_length = batch_size, max_length
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            path = resolve_loadable(model_name)
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSeq2SeqLM.from_pretrained(path).to(self.device).eval()
        except (OSError, ValueError) as exc:
            raise _load_error(model_name, f"{kind} reranker", exc) from None
        if kind == "monot5":
            self.token_ids = [self._single_token(word, model_name) for word in ("true", "false")]
        else:
            token = self.tokenizer.convert_tokens_to_ids("<extra_id_10>")
            if not isinstance(token, int) or token == self.tokenizer.unk_token_id:  # None: not in the vocabulary
                raise SpecializeError(f"{model_name}: the tokenizer has no <extra_id_10> token (is it a RankT5 model?)")
            self.token_ids = [token]

    def _single_token(self, word: str, model_name: str) -> int:
        ids = self.tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1 or ids[0] == self.tokenizer.unk_token_id:
            raise SpecializeError(f"{model_name}: {word!r} is not one token for this tokenizer (is it a monoT5 model?)")
        return ids[0]

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        return self.score_many([(query, passages)])[0]

    def score_many(self, items: Sequence[Item]) -> list[list[float]]:
        """All pairs in batches of ``batch_size``, longest first."""
        return score_pairs(items, self._score_pairs)

    def _score_pairs(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        import torch

        template = self.TEMPLATES[self.kind]
        out = []
        for start in range(0, len(pairs), self.batch_size):
            texts = [template.format(query=q, passage=p) for q, p in pairs[start : start + self.batch_size]]
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length).to(self.device)
            start_ids = torch.full((len(texts), 1), self.model.config.decoder_start_token_id, device=self.device)
            with torch.inference_mode():
                logits = self.model(**batch, decoder_input_ids=start_ids).logits[:, 0, :].float()
            chosen = logits[:, self.token_ids]
            out.append((chosen.softmax(-1)[:, 0] if self.kind == "monot5" else chosen[:, 0]).cpu().numpy())
        return np.concatenate(out)


JUDGE_SYSTEM = (
    "You judge search results. You are given a search query and a passage. Answer yes if the passage is "
    "relevant to the query: it answers the question, supports or refutes the claim, or holds the information "
    "the person searching wants. Otherwise answer no. Reply with one word: yes or no."
)
JUDGE_USER = "Query: {query}\n\nPassage: {passage}\n\nIs the passage relevant to the query? Answer yes or no."


def judge_messages(query: str, passage: str) -> list[dict[str, str]]:
    """The judge's chat prompt; the query comes before the passage so one query's prompts share a prefix."""
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": JUDGE_USER.format(query=query, passage=passage)}]


class LLMJudgeTeacher:
    """An instruct LLM as a pointwise judge: score = log P(yes) − log P(no) for the first answer token.

    This is the pointwise "relevance generation" scoring of Liang et al. (2022, HELM), as studied by
    Zhuang et al. (2023, "Beyond Yes and No"); the prompt is ours. The query comes first in the
    prompt, so the candidates of one query share the cached system text and query (llama.cpp
    keeps the prefix between calls; vLLM's prefix cache does the same on a GPU).
    """

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self.name = f"llm-judge:{llm.name}"

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        return self.score_many([(query, passages)])[0]

    def score_many(self, items: Sequence[Item]) -> list[list[float]]:
        """All pairs in one backend call, in query order (not sorted: prefixes stay adjacent)."""
        judge = lambda pairs: np.asarray(self.llm.yes_no([judge_messages(q, p) for q, p in pairs]))  # noqa: E731
        return score_pairs(items, judge, longest_first=False)


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

    ``minmax`` (default): the member's scores for the query min-max scaled to [0, 1], keeping the
    margins (73.5 nDCG@10 for BM25 + MiniLM on SciFact, benchmarks/results/teachers.md);
    ``percentile``: each score's percentile rank among the member's scores for the query (71.9).
    """

    def __init__(self, members: Sequence[tuple[Teacher, float]], normalization: str = "minmax") -> None:
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
    model = parsed.model
    if model is None:  # parse_teacher names a model for every other kind; a TeacherSpec built by hand may not
        raise SpecializeError(f"{parsed.kind} teacher: needs a model name; {SYNTAX}")
    if parsed.kind == "bi-encoder":
        from specialize.encoder import load_encoder

        return BiEncoderTeacher(load_encoder(model, config.backend, None, prefixes), config.batch_size, corpus)
    if parsed.kind in T5Teacher.TEMPLATES:
        return T5Teacher(parsed.kind, model, config.batch_size)
    if parsed.kind == "llm-judge":
        from specialize.llm import load_llm

        return LLMJudgeTeacher(load_llm(model, config.llm, config.seed))
    return CrossEncoderTeacher(model, config.batch_size)


AUTO = "auto"
