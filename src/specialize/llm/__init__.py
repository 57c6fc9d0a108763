"""Instruct LLMs behind one interface, for query generation and yes/no relevance judging.

Backends: ``llama_cpp`` (GGUF through llama-cpp-python, the CPU default), ``transformers`` (any
causal LM), ``vllm`` (GPU: batched, tensor parallel, prefix caching) and ``openai`` (any
OpenAI-compatible HTTP server). A prompt is a list of chat messages; every backend renders it
with the model's own chat template, never with one written here per model family.

Each backend has two calls:

- ``generate(prompts, temperature=, max_new_tokens=, seeds=)``: one completion per prompt;
- ``yes_no(prompts)``: for each prompt, log P(yes) − log P(no) of the first answer token
  (the spellings "yes", "Yes", " yes"... are pooled), the score of an LLM judge.

``sample_until`` samples a prompt again, with a new seed, while its reply is rejected (the
generate stage's retries); llama.cpp does it natively, keeping the prompt in its KV cache.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from specialize.config import LLMConfig
from specialize.errors import SpecializeError

Messages = list[dict[str, str]]
BACKENDS = ("llama_cpp", "transformers", "vllm", "openai")
YES_WORDS = ("yes", "Yes", "YES", " yes", " Yes", " YES")
NO_WORDS = ("no", "No", "NO", " no", " No", " NO")


class LLM(Protocol):
    """What the generate stage and the LLM judge need from a model."""

    name: str

    def generate(self, prompts: Sequence[Messages], *, temperature: float, max_new_tokens: int, seeds: Sequence[int]) -> list[str]:
        """One completion per prompt; ``seeds[i]`` seeds the sampling of prompt i where the backend allows."""
        ...

    def yes_no(self, prompts: Sequence[Messages]) -> list[float]:
        """log P(yes) − log P(no) of the first answer token of each prompt."""
        ...

    def count_tokens(self, text: str) -> int | None:
        """Tokens of ``text`` for this model (None when the backend cannot tell, as a remote server)."""
        ...


def retry_seed(seed: int, attempt: int) -> int:
    """The sampling seed of a prompt's attempt ``attempt``: ``seed`` itself first, then one fixed by both, in [0, 2**31)."""
    return seed if attempt == 0 else random.Random(f"{seed}\x1fretry\x1f{attempt}").getrandbits(31)


def sample_until(
    llm: LLM, prompts: Sequence[Messages], *, temperature: float, max_new_tokens: int, seeds: Sequence[int],
    accept: Callable[[int, str], bool], attempts: int, prefixes: Sequence[Messages] | None = None,
) -> list[list[str]]:
    """Up to ``attempts`` replies per prompt, stopping at the first that ``accept(index, reply)`` takes.

    Each prompt's list ends with the reply to use (the accepted one, or the last rejected); attempt k
    is seeded with ``retry_seed(seed, k)``. A backend with its own ``sample_until`` runs it (llama.cpp:
    the prompt stays in the KV cache, so a retry costs only its new tokens; ``prefixes[i]``, prompt i
    with its variable part left empty, names the prefix it shares with its neighbours, which
    llama.cpp evaluates once); the others get the prompts still rejected back as one batch per
    attempt (vLLM's prefix cache makes that cheap, and finds shared prefixes by itself).
    """
    native = getattr(llm, "sample_until", None)
    if native is not None:
        return native(prompts, temperature=temperature, max_new_tokens=max_new_tokens, seeds=seeds, accept=accept, attempts=attempts,
                      prefixes=prefixes)
    replies = [[reply] for reply in llm.generate(prompts, temperature=temperature, max_new_tokens=max_new_tokens, seeds=seeds)]
    for attempt in range(1, attempts):
        redo = [index for index, tried in enumerate(replies) if not accept(index, tried[-1])]
        if not redo:
            break
        again = llm.generate([prompts[index] for index in redo], temperature=temperature, max_new_tokens=max_new_tokens,
                             seeds=[retry_seed(seeds[index], attempt) for index in redo])
        for index, reply in zip(redo, again, strict=True):
            replies[index].append(reply)
    return replies


def answer_token_ids(encode: Callable[[str], list[int]]) -> tuple[list[int], list[int]]:
    """The token ids that spell yes and no as one token each (spellings that take two tokens are skipped)."""
    yes = sorted({ids[0] for word in YES_WORDS if len(ids := encode(word)) == 1})
    no = sorted({ids[0] for word in NO_WORDS if len(ids := encode(word)) == 1})
    if not yes or not no:
        raise SpecializeError("LLM judge: the tokenizer has no single token for 'yes' or 'no'")
    return yes, no


def log_odds(logprobs: Iterable[float] | np.ndarray, yes_ids: Sequence[int], no_ids: Sequence[int]) -> float:
    """log Σ P(yes spellings) − log Σ P(no spellings) from next-token log-probabilities (or logits)."""
    values = np.asarray(logprobs, dtype=np.float64)
    return float(np.logaddexp.reduce(values[list(yes_ids)]) - np.logaddexp.reduce(values[list(no_ids)]))


def sparse_log_odds(top: Mapping[Hashable, float], yes: Sequence[Hashable], no: Sequence[Hashable]) -> float:
    """``log_odds`` from the top-k log-probabilities an engine returns (keyed by token id or text).

    Each answer pools the spellings found in the top k; an answer with none there gets the k-th
    value, an upper bound on its log-probability.
    """
    floor = min(top.values()) if top else 0.0

    def mass(keys: Sequence[Hashable]) -> float:
        found = [top[key] for key in keys if key in top]
        return float(np.logaddexp.reduce(found)) if found else floor

    return mass(yes) - mass(no)


def choose_backend(model: str, backend: str) -> str:
    """``auto``: llama.cpp for a GGUF file or a bundled LLM, vLLM when a GPU and vLLM are there, else transformers."""
    if backend != "auto":
        return backend
    if model.startswith("bundled:") or model.lower().endswith(".gguf"):
        return "llama_cpp"
    try:
        import torch

        if torch.cuda.is_available():
            import vllm  # noqa: F401

            return "vllm"
    except ImportError:
        pass
    return "transformers"


def load_llm(model: str, config: LLMConfig | None = None, seed: int = 0) -> LLM:
    """Load ``model`` with the backend ``config.backend`` names; a missing file or package is a one-line error."""
    config = config or LLMConfig()
    backend = choose_backend(model, config.backend)
    if backend == "openai":
        from specialize.llm.openai_backend import OpenAIBackend

        return OpenAIBackend(model, config)
    if backend == "llama_cpp":
        from specialize.llm.llama_cpp_backend import LlamaCppBackend

        return LlamaCppBackend(model, config, seed)
    if backend == "vllm":
        from specialize.llm.vllm_backend import VLLMBackend

        return VLLMBackend(model, config, seed)
    from specialize.llm.transformers_backend import TransformersBackend

    return TransformersBackend(model, config)


def local_model(model: str) -> str:
    """A model name as a local path or HF id; a path that looks local but is missing is a one-line error."""
    from specialize.models import resolve_model

    path = resolve_model(model)
    looks_local = path.startswith((".", "/", "~")) or path.lower().endswith(".gguf") or os.sep + os.sep in path
    if looks_local and not Path(path).expanduser().exists():
        raise SpecializeError(f"{path}: model file not found")
    return path


def require(package: str, backend: str, hint: str) -> Any:
    """Import ``package`` for a backend, or stop with a one-line error saying how to get it."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise SpecializeError(f"the {backend} backend needs the {package!r} package ({hint})") from None


def chat_template(config: LLMConfig) -> str | None:
    """``config.chat_template`` as template text (read from the file it names), or None."""
    value = config.chat_template
    if value is None or "{" in value:
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise SpecializeError(f"llm.chat_template: {value}: not a file and not a template (a template holds '{{')")
    return path.read_text(encoding="utf-8")
