"""vLLM on one or more GPUs: continuous batching, tensor parallelism and automatic prefix caching.

Prompts are sent as whole lists (``LLM.chat`` renders each with the model's chat template and
batches them itself); prefix caching lets the judge's candidates of one query share the
cached system text and query.
"""

from __future__ import annotations

from collections.abc import Sequence

from specialize.config import LLMConfig
from specialize.llm import Messages, answer_token_ids, chat_template, local_model, require, sparse_log_odds

HINT = "pip install vllm on a machine with an NVIDIA GPU"
TOP_LOGPROBS = 20


class VLLMBackend:
    """An instruct model served in-process by vLLM."""

    def __init__(self, model: str, config: LLMConfig | None = None, seed: int = 0) -> None:
        vllm = require("vllm", "vllm", HINT)
        config = config or LLMConfig()
        self.name = model
        self.vllm = vllm
        self.engine = vllm.LLM(
            model=local_model(model),
            tensor_parallel_size=config.tensor_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
            max_model_len=config.context_tokens,
            enable_prefix_caching=True,
            seed=seed,
        )
        self.chat_template = chat_template(config)
        self.tokenizer = tokenizer = self.engine.get_tokenizer()
        self.yes_ids, self.no_ids = answer_token_ids(lambda word: tokenizer.encode(word, add_special_tokens=False))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def generate(self, prompts: Sequence[Messages], *, temperature: float, max_new_tokens: int, seeds: Sequence[int]) -> list[str]:
        """All prompts in one engine call, each with its own seed."""
        params = [self.vllm.SamplingParams(temperature=temperature, max_tokens=max_new_tokens, seed=seed) for seed in seeds]
        outputs = self.engine.chat(list(prompts), params, use_tqdm=False, chat_template=self.chat_template)
        return [output.outputs[0].text for output in outputs]

    def yes_no(self, prompts: Sequence[Messages]) -> list[float]:
        """One greedy token per prompt with its top log-probabilities; log-odds of yes vs no."""
        params = self.vllm.SamplingParams(temperature=0.0, max_tokens=1, logprobs=TOP_LOGPROBS)
        outputs = self.engine.chat(list(prompts), params, use_tqdm=False, chat_template=self.chat_template)
        scores = []
        for output in outputs:
            top = {token: entry.logprob for token, entry in output.outputs[0].logprobs[0].items()}
            scores.append(sparse_log_odds(top, self.yes_ids, self.no_ids))
        return scores
