"""Any OpenAI-compatible chat-completions server (vLLM serve, llama.cpp server, TGI, OpenAI...).

The ``openai`` client retries 429, 5xx, connection errors and timeouts with exponential backoff
(honouring Retry-After) up to ``max_retries`` times; requests run ``max_concurrency`` at a time
from a thread pool. The server renders its model's chat template.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from specialize.config import LLMConfig
from specialize.errors import SpecializeError
from specialize.llm import NO_WORDS, YES_WORDS, Messages, require, sparse_log_odds

HINT = "pip install openai==3.51.0"
TOP_LOGPROBS = 20


class OpenAIBackend:
    """Chat completions from a server at ``config.base_url``, key from ``$<config.api_key_env>``."""

    def __init__(self, model: str, config: LLMConfig) -> None:
        openai = require("openai", "openai", HINT)
        if not config.base_url:
            raise SpecializeError("the openai backend needs llm.base_url (e.g. http://localhost:8000/v1)")
        self.name = model
        self.config = config
        self.errors = openai
        self.client = openai.OpenAI(
            base_url=config.base_url,
            api_key=os.environ.get(config.api_key_env) or "none",
            timeout=config.timeout,
            max_retries=config.max_retries,
        )

    def count_tokens(self, text: str) -> None:
        """A server does not expose its tokenizer: the prompt builder falls back to counting words."""
        return None

    def _call(self, messages: Messages, options: dict[str, Any]) -> Any:
        """One chat completion; every failure left after the client's retries is a one-line error."""
        where = self.config.base_url
        try:
            return self.client.chat.completions.create(model=self.name, messages=messages, **options)
        except self.errors.APITimeoutError:
            raise SpecializeError(f"{where}: no answer within {self.config.timeout:g}s after {self.config.max_retries} retries") from None
        except self.errors.APIConnectionError:
            raise SpecializeError(f"{where}: cannot reach the server (is it running? is llm.base_url right?)") from None
        except self.errors.APIStatusError as exc:
            hint = f" (is ${self.config.api_key_env} set?)" if exc.status_code in (401, 403) else ""
            raise SpecializeError(f"{where}: HTTP {exc.status_code} after {self.config.max_retries} retries{hint}: {_message(exc)}") from None

    def _map(self, work: Callable[[int], Any], count: int) -> list[Any]:
        """``work(i)`` for i < count, ``max_concurrency`` at a time, results in order."""
        with ThreadPoolExecutor(max_workers=self.config.max_concurrency) as pool:
            return list(pool.map(work, range(count)))

    def generate(self, prompts: Sequence[Messages], *, temperature: float, max_new_tokens: int, seeds: Sequence[int]) -> list[str]:
        """Concurrent chat completions, each with its own seed (servers that support seeds honour it)."""
        options = {"temperature": temperature, "max_tokens": max_new_tokens}
        responses = self._map(lambda i: self._call(prompts[i], {**options, "seed": seeds[i]}), len(prompts))
        return [response.choices[0].message.content or "" for response in responses]

    def yes_no(self, prompts: Sequence[Messages]) -> list[float]:
        """One greedy token with its top log-probabilities per prompt; log-odds of yes vs no."""
        options = {"temperature": 0.0, "max_tokens": 1, "logprobs": True, "top_logprobs": TOP_LOGPROBS}
        responses = self._map(lambda i: self._call(prompts[i], options), len(prompts))
        scores = []
        for response in responses:
            content = (response.choices[0].logprobs.content or []) if response.choices[0].logprobs else []
            if not content:
                raise SpecializeError(f"{self.config.base_url}: the server returned no logprobs (an LLM judge needs a server that supports top_logprobs)")
            top = {entry.token: entry.logprob for entry in content[0].top_logprobs}
            scores.append(sparse_log_odds(top, YES_WORDS, NO_WORDS))
        return scores


def _message(exc: Any) -> str:
    """The first line of an API error's message."""
    body = getattr(exc, "body", None)
    text = body.get("message") if isinstance(body, dict) and body.get("message") else str(exc)
    return str(text).splitlines()[0][:200]
