"""Any Hugging Face causal LM through transformers, with the tokenizer's own chat template.

A GGUF file loads too (transformers dequantizes it; needs the ``gguf`` package): slow on CPU,
but no compiler needed. Prompts are batched with left padding, so the last position of every
row is the next token.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from specialize.config import LLMConfig
from specialize.errors import SpecializeError
from specialize.llm import Messages, answer_token_ids, chat_template, local_model, log_odds


class TransformersBackend:
    """An instruct causal LM run by transformers (CPU, or the first GPU when there is one)."""

    def __init__(self, model: str, config: LLMConfig | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        config = config or LLMConfig()
        self.name = model
        self.batch_size = config.batch_size
        path = local_model(model)
        options = {}
        if path.lower().endswith(".gguf"):
            path, options = str(Path(path).parent), {"gguf_file": Path(path).name}
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, **options)
            loaded = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **options)
            # PreTrainedModel.to is decorated with functools.wraps(nn.Module.to): mypy sees the unbound function (self first).
            self.model = loaded.to(self.device).eval()  # type: ignore[arg-type]
        except (OSError, ValueError, ImportError) as exc:
            raise SpecializeError(f"{model}: transformers cannot load it ({str(exc).splitlines()[0]})") from None
        if not self.tokenizer.chat_template and options:
            self.tokenizer.chat_template = gguf_chat_template(Path(path) / options["gguf_file"])
        self.tokenizer.chat_template = chat_template(config) or self.tokenizer.chat_template
        if not self.tokenizer.chat_template:
            raise SpecializeError(f"{model}: the tokenizer has no chat template (use an instruct model, or set llm.chat_template)")
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.yes_ids, self.no_ids = answer_token_ids(lambda word: self.tokenizer.encode(word, add_special_tokens=False))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def _batches(self, prompts: Sequence[Messages]):
        """(start, tokenized batch) over the prompts rendered with the chat template."""
        texts = [self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in prompts]
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start : start + self.batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            yield start, batch.to(self.device)

    def generate(self, prompts: Sequence[Messages], *, temperature: float, max_new_tokens: int, seeds: Sequence[int]) -> list[str]:
        """Sampled completions, one batch at a time; a batch is seeded with the seed of its first prompt."""
        import torch

        out: list[str] = []
        for start, batch in self._batches(prompts):
            torch.manual_seed(seeds[start])
            with torch.inference_mode():
                tokens = self.model.generate(
                    **batch,
                    do_sample=temperature > 0,
                    temperature=temperature if temperature > 0 else None,
                    top_p=None,
                    top_k=None,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new = tokens[:, batch["input_ids"].shape[1] :]
            out.extend(self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return out

    def yes_no(self, prompts: Sequence[Messages]) -> list[float]:
        """Log-odds of yes vs no from the logits of the last position of each prompt."""
        import torch

        scores: list[float] = []
        for _, batch in self._batches(prompts):
            with torch.inference_mode():
                logits = self.model(**batch).logits[:, -1, :].float()
            scores.extend(log_odds(row.log_softmax(-1).cpu().numpy(), self.yes_ids, self.no_ids) for row in logits)
        return scores


def gguf_chat_template(path: Path) -> str | None:
    """The chat template stored in a GGUF file's metadata (transformers does not carry it over)."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("tokenizer.chat_template")
    return field.contents() if field is not None else None
