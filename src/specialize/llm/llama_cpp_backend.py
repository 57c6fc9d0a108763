"""llama.cpp through llama-cpp-python: GGUF models on CPU (or Metal/CUDA builds), the CPU default.

Prompts are rendered with the GGUF's own chat template (or ``llm.chat_template``) by
llama-cpp-python's Jinja formatter. Generation samples with ``create_completion`` after
evaluating the prompt's prefix (instructions and examples, shared by a group of prompts) once; the
judge evaluates the prompt itself so that the key-value cache of the prefix shared with the
previous prompt (system text and query, since the judge puts the query first) is kept and only
the rest is decoded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from specialize.config import LLMConfig
from specialize.errors import SpecializeError
from specialize.llm import Messages, answer_token_ids, chat_template, local_model, log_odds, require, retry_seed

HINT = "pip install llama-cpp-python==0.3.36; it builds from source in about 12 minutes"


def _load(model: str, config: LLMConfig, seed: int):
    """A ``llama_cpp.Llama`` for a GGUF path, bundled alias or ``owner/repo:file-pattern.gguf`` on the Hub."""
    llama_cpp = require("llama_cpp", "llama_cpp", HINT)
    options = {"n_ctx": config.context_tokens, "n_threads": config.threads or os.cpu_count(), "seed": seed, "verbose": False}
    repo, sep, pattern = model.partition(":")
    if sep and "/" in repo and pattern.lower().endswith(".gguf") and not model.startswith("bundled:"):
        try:
            return llama_cpp.Llama.from_pretrained(repo_id=repo, filename=pattern, **options)
        except Exception as exc:  # the hub client raises many types; all mean "cannot get it"
            raise SpecializeError(f"{model}: cannot download the GGUF ({str(exc).splitlines()[0]})") from None
    path = local_model(model)
    if not path.lower().endswith(".gguf"):
        raise SpecializeError(f"{model}: the llama_cpp backend needs a .gguf file (or owner/repo:file.gguf); use backend transformers for other models")
    try:
        return llama_cpp.Llama(model_path=path, **options)
    except ValueError as exc:
        raise SpecializeError(f"{path}: llama.cpp cannot load it ({str(exc).splitlines()[0]})") from None


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
        self._prefix: list[int] = []  # the prompt prefix that sample_until left evaluated in the KV cache
        self.yes_ids, self.no_ids = answer_token_ids(lambda word: self.llm.tokenize(word.encode(), add_bos=False, special=False))

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def render(self, messages: Messages) -> list[int]:
        """The chat template applied to ``messages`` with the generation prompt, as tokens (one BOS at most)."""
        prompt = self.formatter(messages=messages).prompt
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
        """``specialize.llm.sample_until``, one prompt at a time.

        A prompt is decoded in two steps: its prefix (the tokens it shares with the rendering of
        ``prefixes[i]``; none without prefixes), evaluated on its own from an empty cache, then the
        rest on top. The prefix stays in the KV cache, so the next prompt with the same prefix
        decodes only its rest. A prefix reused at another length, or a prompt decoded on top of
        whatever came before, would change the logits slightly (other kernels run on other batch
        sizes) and a seed would give other text; these two steps are the same whatever ran before.
        Retries follow at once and keep the prompt in the KV cache (llama.cpp re-decodes only its
        last token), so a retry costs its new tokens alone and still gives the same text for the same seed.
        """
        out = []
        for index, (messages, seed) in enumerate(zip(prompts, seeds, strict=True)):
            tokens = self.render(messages)
            shared = self.llm.longest_token_prefix(tokens, self.render(prefixes[index])) if prefixes else 0
            self._hold_prefix(tokens[:shared])
            tried: list[str] = []
            for attempt in range(attempts):
                result = self.llm.create_completion(tokens, temperature=temperature, max_tokens=max_new_tokens, seed=retry_seed(seed, attempt))
                tried.append(result["choices"][0]["text"])
                if accept(index, tried[-1]):
                    break
            out.append(tried)
        return out

    def _hold_prefix(self, prefix: list[int]) -> None:
        """Leave exactly ``prefix`` in the KV cache, evaluated on its own from an empty cache (kept when it is there already)."""
        if not prefix or prefix != self._prefix:
            self.llm.reset()
            if prefix:
                self.llm.eval(prefix)
            self._prefix = prefix
        self.llm.n_tokens = len(prefix)

    def yes_no(self, prompts: Sequence[Messages]) -> list[float]:
        """Next-token log-odds of yes vs no, decoding only what differs from the previous prompt."""
        return [log_odds(self.next_token_logits(self.render(messages)), self.yes_ids, self.no_ids) for messages in prompts]

    def next_token_logits(self, tokens: list[int]) -> np.ndarray:
        """Logits of the token after ``tokens``, reusing the cached prefix shared with the last call."""
        if len(tokens) >= self.llm.n_ctx():
            raise SpecializeError(f"{self.name}: a judge prompt of {len(tokens)} tokens exceeds the context ({self.llm.n_ctx()}); raise llm.context_tokens")
        self._prefix = []  # the cache is about to hold other text
        # At least one token must be decoded to get fresh logits.
        shared = min(self.llm.longest_token_prefix(self.llm.input_ids[: self.llm.n_tokens], tokens), len(tokens) - 1)
        if not self.llm._ctx.kv_cache_seq_rm(-1, shared, -1):  # some caches (sliding-window) cannot cut a suffix
            shared = 0
            self.llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        self.llm.n_tokens = shared
        self.llm.eval(tokens[shared:])
        import llama_cpp

        return np.ctypeslib.as_array(llama_cpp.llama_get_logits(self.llm.ctx), shape=(self.llm.n_vocab(),)).copy()
