"""llama.cpp through llama-cpp-python: GGUF models on CPU (or Metal/CUDA builds), the CPU default.

Prompts are rendered with the GGUF's own chat template (or ``llm.chat_template``) by
llama-cpp-python's Jinja formatter. Generation runs in a llama.cpp context of its own
(``Sequences``): prompts that share a prefix (instructions and examples) are decoded
``llm.batch_size`` at a time over that prefix, evaluated once (and a prompt repeated in a batch read once),
one token of every reply per forward pass. The judge evaluates the prompt itself on the ``Llama``'s context, so that the key-value cache
of the prefix shared with the previous prompt (system text and query, since the judge puts the
query first) is kept and only the rest is decoded.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from specialize.config import LLMConfig
from specialize.errors import SpecializeError
from specialize.llm import Messages, answer_token_ids, chat_template, local_model, log_odds, require, retry_seed
from specialize.models import derived_file
from specialize.progress import stderr

if TYPE_CHECKING:
    from llama_cpp.llama_types import ChatCompletionRequestMessage

HINT = "pip install llama-cpp-python==0.3.36; it builds from source in about 12 minutes"


def _load(model: str, config: LLMConfig, seed: int):
    """A ``llama_cpp.Llama`` for a GGUF path, bundled alias or ``owner/repo:file-pattern.gguf`` on the Hub."""
    llama_cpp = require("llama_cpp", "llama_cpp", HINT)
    threads = config.threads or os.cpu_count() or 1
    options = {"n_ctx": config.context_tokens, "n_threads": threads, "n_threads_batch": threads, "seed": seed, "verbose": False,
               "flash_attn": config.flash_attention}
    repo, sep, pattern = model.partition(":")
    if sep and "/" in repo and pattern.lower().endswith(".gguf") and not model.startswith("bundled:"):
        try:
            downloaded = llama_cpp.Llama.from_pretrained(repo_id=repo, filename=pattern, **options)
        except Exception as exc:  # the hub client raises many types; all mean "cannot get it"
            raise SpecializeError(f"{model}: cannot download the GGUF ({str(exc).splitlines()[0]})") from None
        path = requantized(downloaded.model_path, config.requantize, threads)
        return downloaded if path == downloaded.model_path else llama_cpp.Llama(model_path=path, **options)
    path = local_model(model)
    if not path.lower().endswith(".gguf"):
        raise SpecializeError(f"{model}: the llama_cpp backend needs a .gguf file (or owner/repo:file.gguf); use backend transformers for other models")
    try:
        return llama_cpp.Llama(model_path=requantized(path, config.requantize, threads), **options)
    except ValueError as exc:
        raise SpecializeError(f"{path}: llama.cpp cannot load it ({str(exc).splitlines()[0]})") from None


def requantized(path: str, kind: str | None, threads: int) -> str:
    """The GGUF to run for ``llm.requantize``: ``path`` itself, or its copy requantized to ``kind``, made once and cached.

    Requantizing a Q4_K_M file to IQ4_NL keeps its size and lets llama.cpp use its repacked CPU kernels:
    generation runs ~1.4x faster, at a cost in quality (``benchmarks/results/README.md``, generate).
    """
    if kind is None:
        return path
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    def build(target: Path) -> None:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize, params.nthread = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind.upper()}"), True, threads
        stderr.print(f"requantizing {Path(path).name} to {kind}, once (about a minute for 0.5B weights on 2 cores)")
        with suppress_stdout_stderr(disable=False):  # llama.cpp logs every tensor
            failed = llama_cpp.llama_model_quantize(path.encode(), str(target).encode(), ctypes.byref(params))
        if failed or not target.is_file():
            raise SpecializeError(f"{path}: llama.cpp cannot requantize it to {kind} (set llm.requantize: null to run it as it is)")

    return str(derived_file(Path(path), f"{Path(path).stem}.{kind}.gguf", build))


class LlamaCppBackend:
    """An instruct GGUF model run by llama.cpp."""

    def __init__(self, model: str, config: LLMConfig | None = None, seed: int = 0) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        config = config or LLMConfig()
        self.name = model
        self.llm = _load(model, config, seed)
        template = chat_template(config) or self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise SpecializeError(f"{model}: the GGUF has no chat template (use an instruct model, or set llm.chat_template)")
        special = lambda token: self.llm.detokenize([token], special=True).decode("utf-8", "replace") if token >= 0 else ""  # noqa: E731
        self.formatter = Jinja2ChatFormatter(template, eos_token=special(self.llm.token_eos()), bos_token=special(self.llm.token_bos()))
        self.width = config.batch_size
        self._sequences: Sequences | None = None  # the generation context, made on first use
        self.yes_ids, self.no_ids = answer_token_ids(lambda word: self.llm.tokenize(word.encode(), add_bos=False, special=False))

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def render(self, messages: Messages) -> list[int]:
        """The chat template applied to ``messages`` with the generation prompt, as tokens (one BOS at most)."""
        # A message is a role/content dict: the shape of llama-cpp-python's TypedDicts, which a plain dict type cannot name.
        prompt = self.formatter(messages=cast("list[ChatCompletionRequestMessage]", messages)).prompt
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        bos = self.llm.token_bos()
        wants_bos = self.llm._model.add_bos_token() and bos >= 0
        return [bos, *tokens] if wants_bos and tokens[:1] != [bos] else tokens

    def generate(self, prompts: Sequence[Messages], *, temperature: float, max_new_tokens: int, seeds: Sequence[int]) -> list[str]:
        """One completion per prompt, each seeded with its own seed; stops at the end-of-turn token."""
        replies = self.sample_until(prompts, temperature=temperature, max_new_tokens=max_new_tokens, seeds=seeds,
                                    accept=lambda index, reply: True, attempts=1)
        return [tried[0] for tried in replies]

    def sample_until(
        self, prompts: Sequence[Messages], *, temperature: float, max_new_tokens: int, seeds: Sequence[int],
        accept: Callable[[int, str], bool], attempts: int, prefixes: Sequence[Messages] | None = None,
    ) -> list[list[str]]:
        """``specialize.llm.sample_until``, ``llm.batch_size`` prompts at a time.

        Neighbouring prompts with the same prefix (the tokens a prompt shares with the rendering of
        ``prefixes[i]``; none without prefixes) form a batch of up to ``batch_size`` that fits the
        context. The batch's replies are decoded side by side (``Sequences``). Every attempt of the
        batch is sampled before the next, the rejected prompts' retries in one batch again; a
        prompt stays in the cache, so a retry costs its new tokens alone. The same prompts in the
        same batch with the same seeds give the same text, whatever ran before.
        """
        tokens = [self.render(messages) for messages in prompts]
        for prompt in tokens:
            if len(prompt) + max_new_tokens > self.llm.n_ctx():
                raise SpecializeError(f"{self.name}: a prompt of {len(prompt)} tokens and {max_new_tokens} new ones exceed the "
                                      f"context ({self.llm.n_ctx()}); raise llm.context_tokens or lower generate.passage_tokens")
        if prefixes:
            heads = [min(self.llm.longest_token_prefix(prompt, self.render(prefix)), len(prompt) - 1) for prompt, prefix in zip(tokens, prefixes, strict=True)]
        else:
            heads = [0] * len(tokens)
        if self._sequences is None:
            self._sequences = Sequences(self.llm, self.width)
        out: list[list[str]] = [[] for _ in prompts]
        for batch in self._batches(tokens, heads, max_new_tokens):
            prefix = tokens[batch[0]][: heads[batch[0]]]
            self._sequences.start(prefix, [tokens[index][len(prefix) :] for index in batch])
            pending = list(range(len(batch)))
            for attempt in range(attempts):
                seeded = [retry_seed(seeds[batch[slot]], attempt) for slot in pending]
                replies = self._sequences.decode(pending, temperature, seeded, max_new_tokens)
                for slot, reply in zip(pending, replies, strict=True):
                    text = self.llm.detokenize(reply, prev_tokens=tokens[batch[slot]]).decode("utf-8", errors="ignore")
                    out[batch[slot]].append(text)
                pending = [slot for slot in pending if not accept(batch[slot], out[batch[slot]][-1])]
                if not pending:
                    break
        return out

    def _batches(self, tokens: list[list[int]], heads: list[int], max_new_tokens: int) -> Iterator[list[int]]:
        """Runs of neighbouring prompts with the same prefix, cut at ``batch_size`` prompts or the context's cells."""
        assert self._sequences is not None, "sample_until makes the generation context before it batches"
        batch: list[int] = []
        cells = 0
        for index, prompt in enumerate(tokens):
            need = len(prompt) - heads[index] + max_new_tokens
            same = batch and tokens[batch[0]][: heads[batch[0]]] == prompt[: heads[index]]
            if batch and not (same and len(batch) < self.width and cells + need <= self._sequences.cells):
                yield batch
                batch = []
            if not batch:
                cells = heads[index]
            batch.append(index)
            cells += need
        if batch:
            yield batch

    def yes_no(self, prompts: Sequence[Messages]) -> list[float]:
        """Next-token log-odds of yes vs no, decoding only what differs from the previous prompt."""
        return [log_odds(self.next_token_logits(self.render(messages)), self.yes_ids, self.no_ids) for messages in prompts]

    def next_token_logits(self, tokens: list[int]) -> np.ndarray:
        """Logits of the token after ``tokens``, reusing the cached prefix shared with the last call."""
        if len(tokens) >= self.llm.n_ctx():
            raise SpecializeError(f"{self.name}: a judge prompt of {len(tokens)} tokens exceeds the context ({self.llm.n_ctx()}); raise llm.context_tokens")
        # At least one token must be decoded to get fresh logits.
        shared = min(self.llm.longest_token_prefix(self.llm.input_ids[: self.llm.n_tokens], tokens), len(tokens) - 1)
        if not self.llm._ctx.kv_cache_seq_rm(-1, shared, -1):  # some caches (sliding-window) cannot cut a suffix
            shared = 0
            self.llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        self.llm.n_tokens = shared
        self.llm.eval(tokens[shared:])
        import llama_cpp

        return np.ctypeslib.as_array(llama_cpp.llama_get_logits(self.llm.ctx), shape=(self.llm.n_vocab(),)).copy()


class Sequences:
    """A llama.cpp context of its own in which up to ``width`` replies are decoded side by side over one prefix.

    Its cache is unified: the prefix is evaluated once on sequence 0, from an empty cache, and shared by
    the other sequences; each prompt's rest is then evaluated on its own sequence, less the start it shares
    with the rest before it (a prompt sampled several times is read once). Replies take one
    forward pass per token for the whole batch, so decoding (bound by reading the weights on a CPU)
    serves several replies for about the price of one. The context copies the ``Llama``'s settings
    (threads, batch size), with ``width`` sequences over its ``n_ctx`` cells.
    """

    CHUNK = 512
    """Tokens per forward pass when a prompt is evaluated, as ``Llama.eval`` (its ``n_batch``)."""

    def __init__(self, llm: Any, width: int) -> None:
        import llama_cpp
        from llama_cpp import _internals
        from llama_cpp._utils import suppress_stdout_stderr

        self.api = llama_cpp
        params = type(llm.context_params).from_buffer_copy(llm.context_params)
        params.n_seq_max, params.kv_unified, params.swa_full = width, True, True  # swa_full: a sliding-window cache cannot drop a reply
        params.n_batch = params.n_ubatch = max(self.CHUNK, width)
        with suppress_stdout_stderr(disable=False):  # llama.cpp logs the cache it makes
            self.context = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        self.batch = _internals.LlamaBatch(n_tokens=params.n_batch, embd=0, n_seq_max=width, verbose=False)
        self.vocab = llm._model.vocab
        self.cells = self.context.n_ctx()
        self.prefix: list[int] = []  # what sequence 0 holds after the last start()
        self.ends: list[int] = []  # per sequence: its prompt's length
        self.last: list[int] = []  # per sequence: its prompt's last token

    def start(self, prefix: list[int], rests: list[list[int]]) -> None:
        """Hold ``prefix`` (kept when it is there already), then each rest but its last token on sequences 0, 1, …

        A rest's start that the rest before it shares (all but the last token of the same prompt,
        sampled again) is not evaluated again: its cells are shared with the sequence before.
        """
        memory = self.context.memory
        if prefix != self.prefix or not prefix:
            self.api.llama_memory_clear(memory, True)
            self._evaluate(prefix, 0, 0)
            self.prefix = prefix
        else:  # every sequence's cells past the prefix
            self.api.llama_memory_seq_rm(memory, -1, len(prefix), -1)
        for sequence in range(1, len(rests)):
            self.api.llama_memory_seq_cp(memory, 0, sequence, 0, len(prefix))
        for sequence, rest in enumerate(rests):
            shared = 0
            if sequence:
                before = rests[sequence - 1]
                shared = min(self.api.Llama.longest_token_prefix(before, rest), len(before) - 1, len(rest) - 1)
                self.api.llama_memory_seq_cp(memory, sequence - 1, sequence, len(prefix), len(prefix) + shared)
            self._evaluate(rest[shared:-1], len(prefix) + shared, sequence)
        self.ends = [len(prefix) + len(rest) for rest in rests]
        self.last = [rest[-1] for rest in rests]

    def decode(self, sequences: list[int], temperature: float, seeds: list[int], max_new_tokens: int) -> list[list[int]]:
        """A reply (its tokens, without the end-of-turn) for each of ``sequences``, decoded side by side, replacing any earlier one."""
        for sequence in sequences:  # an earlier reply, and the prompt's last token (whose logits are needed again)
            self.api.llama_memory_seq_rm(self.context.memory, sequence, self.ends[sequence] - 1, -1)
        samplers = {sequence: _sampler(temperature, seed) for sequence, seed in zip(sequences, seeds, strict=True)}
        replies: dict[int, list[int]] = {sequence: [] for sequence in sequences}
        step = [(self.last[sequence], self.ends[sequence] - 1, sequence, True) for sequence in sequences]
        while step:
            self._forward(step)
            following = []
            for row, (_, position, sequence, _) in enumerate(step):
                token = samplers[sequence].sample(self.context, row)
                if self.api.llama_vocab_is_eog(self.vocab, token):
                    continue
                replies[sequence].append(token)
                if len(replies[sequence]) < max_new_tokens:
                    following.append((token, position + 1, sequence, True))
            step = following
        return [replies[sequence] for sequence in sequences]

    def _evaluate(self, tokens: list[int], start: int, sequence: int) -> None:
        """``tokens`` at positions ``start``, ``start + 1``, … of ``sequence``, ``CHUNK`` per forward pass, no logits."""
        for offset in range(0, len(tokens), self.CHUNK):
            chunk = tokens[offset : offset + self.CHUNK]
            self._forward([(token, start + offset + i, sequence, False) for i, token in enumerate(chunk)])

    def _forward(self, rows: list[tuple[int, int, int, bool]]) -> None:
        """One ``llama_decode`` of (token, position, sequence, wants logits) rows."""
        batch = self.batch.batch
        batch.n_tokens = len(rows)
        for i, (token, position, sequence, logits) in enumerate(rows):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, position, 1, logits
            batch.seq_id[i][0] = sequence
        self.context.decode(self.batch)


def _sampler(temperature: float, seed: int) -> Any:
    """llama-cpp-python's default sampler chain (``Llama.create_completion``'s), seeded."""
    from llama_cpp import _internals

    sampler = _internals.LlamaSampler()
    if temperature == 0:
        sampler.add_greedy()
        return sampler
    sampler.add_top_k(40)
    sampler.add_typical(1.0, 1)
    sampler.add_top_p(0.95, 1)
    sampler.add_min_p(0.05, 1)
    sampler.add_temp(temperature)
    sampler.add_dist(seed)
    return sampler
