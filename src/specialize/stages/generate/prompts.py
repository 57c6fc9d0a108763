"""The prompt bank: one YAML file per query type, the type mixture, and the chat messages.

A prompt file ``<name>.yaml`` defines the query type ``<name>`` (the file name is the type)::

    description: one line saying what the query is
    system: the system prompt
    user: |-
      the user prompt template: {passage} is the passage, {examples} the few-shot block
    passage_title: true  # optional: false shows the passage without its title (the "title" type)
    passage_tokens: 384  # optional: this type's passage cut, in place of generate.passage_tokens
    examples:            # required exactly when the template has {examples}
      - domain: medicine # optional; the bundled bank uses it to check its variety
        passage: ...
        query: ...       # one line

``{examples}`` becomes the drawn examples, each as ``Passage: ...`` / ``Query: ...`` and followed
by a blank line (nothing when no example is drawn), so a template reads
``...instructions...\\n\\n{examples}Passage: {passage}\\nQuery:``. Write a literal brace as ``{{``.

User files are read after the bundled ones, in the order given; a folder stands for its
``*.yaml`` / ``*.yml`` files in name order. A file named after a type already loaded replaces it
entirely, unless it sets ``extend: true``: then its examples are added to that type's, and any of
description / system / user / passage_title / passage_tokens it gives replace that type's. Any other file name
defines a new type.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import random
import re
import reprlib
import string
from bisect import bisect_right
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

import yaml

from specialize.config import BUNDLED_PROMPTS, field_default
from specialize.errors import SpecializeError, located

TEXT_FIELDS = ("description", "system", "user")
FILE_FIELDS = (*TEXT_FIELDS, "passage_title", "passage_tokens", "examples", "extend")
EXAMPLE_FIELDS = ("passage", "query", "domain")
PLACEHOLDERS = ("passage", "examples")
WORDS_PER_TOKEN = 0.75  # rule of thumb for English with a subword tokenizer (the fallback counter)

YamlPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Example:
    """A few-shot pair: a passage and the query written for it."""

    passage: str
    query: str
    domain: str | None = None


@dataclass(frozen=True)
class PromptType:
    """A query type: its prompts and its bank of few-shot examples."""

    name: str
    description: str
    system: str
    user: str
    examples: tuple[Example, ...] = ()
    passage_title: bool = True  # whether {passage} starts with the passage's title
    passage_tokens: int | None = None  # the type's own passage cut; None: generate.passage_tokens


def load_prompt_types(extra: Sequence[str | Path] = ()) -> dict[str, PromptType]:
    """The bundled query types, then the user's prompt files or folders (see the module doc)."""
    types: dict[str, PromptType] = {}
    files = [*_yaml_files(BUNDLED_PROMPTS), *(file for entry in extra for file in _yaml_files(Path(entry)))]
    for path in files:
        prompt = _parse_file(path, types)
        types[prompt.name] = prompt
    return types


def type_mixture(
    types: Sequence[str], weights: Mapping[str, float] | None, available: Collection[str]
) -> tuple[list[str], list[float]]:
    """The types to draw from and their probabilities.

    Weights are relative; a listed type without a weight weighs 1, and a weight of 0 leaves it out.
    """
    if not types:
        raise SpecializeError("generate.types: list at least one query type")
    _check_known(types, available, "generate.types")
    repeated = sorted({name for name in types if types.count(name) > 1})
    if repeated:
        raise SpecializeError(f"generate.types: {repeated[0]!r} is listed more than once")
    weights = weights or {}
    _check_known(list(weights), available, "generate.type_weights")
    for name, weight in weights.items():
        _check_weight(name, weight, types)
    relative = {name: float(weights.get(name, 1.0)) for name in types}
    total = sum(relative.values())
    if total == 0:
        raise SpecializeError("generate.type_weights: every listed type has weight 0")
    names = [name for name in types if relative[name] > 0]
    return names, [relative[name] / total for name in names]


def assign_types(passage_ids: Sequence[str], names: Sequence[str], probabilities: Sequence[float], seed: int) -> list[str]:
    """The query type of each passage, drawn from a uniform that hashes only (seed, passage id).

    A passage gets the same type whatever the other passages are and in whatever order, so a
    resumed or grown run keeps the types already drawn.
    """
    bounds = list(accumulate(probabilities))
    last = len(names) - 1
    return [names[min(bisect_right(bounds, _uniform(seed, "type", pid)), last)] for pid in passage_ids]


def build_messages(
    prompt_type: PromptType, passage: str, seed: int, key: str, few_shot: int = field_default("generate.few_shot")
) -> list[dict[str, str]]:
    """System and user chat messages for one passage, with ``few_shot`` distinct examples drawn
    at random, deterministically in (seed, type, key); none for a type without examples."""
    rng = random.Random(_hash64(seed, "few-shot", prompt_type.name, key))
    shots = rng.sample(prompt_type.examples, min(few_shot, len(prompt_type.examples)))
    user = prompt_type.user.format(passage=passage, examples=_examples_block(shots))
    return [{"role": "system", "content": prompt_type.system}, {"role": "user", "content": user}]


def truncate_passage(text: str, tokenizer_count: Callable[[str], int] | None, max_tokens: int) -> str:
    """The longest prefix of whole words that fits ``max_tokens``.

    Without a token counter, tokens are estimated from whitespace-separated words (a text
    without spaces, such as Chinese, then counts as one word and is not cut).
    """
    count = tokenizer_count or _estimate_tokens
    if count(text) <= max_tokens:
        return text
    ends = [match.end() for match in re.finditer(r"\S+", text)]
    low, high = 0, len(ends)  # the answer (a number of words) lies in [low, high]
    while low < high:
        middle = (low + high + 1) // 2
        if count(text[: ends[middle - 1]]) <= max_tokens:
            low = middle
        else:
            high = middle - 1
    return text[: ends[low - 1]] if low else ""


# --- prompt files -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Where:
    """A prompt file and the line of each node in it, to make one-line errors."""

    path: Path
    lines: Mapping[YamlPath, int]

    def error(self, at: YamlPath, message: str) -> SpecializeError:
        """An error naming the file, the line of ``at`` (or of its closest known parent) and the field."""
        known = next((at[:size] for size in range(len(at), 0, -1) if at[:size] in self.lines), None)
        field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in at).lstrip(".")
        return located(self.path, self.lines[known] if known else None, f"{field}: {message}" if field else message)


def _yaml_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(file for file in path.iterdir() if file.suffix in (".yaml", ".yml"))
    if not path.is_file():
        raise located(path, None, "prompt file not found")
    return [path]


def _read_yaml(path: Path) -> tuple[dict[str, Any], _Where]:
    """The file's top-level mapping, and where its nodes are."""
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except UnicodeDecodeError:
        raise located(path, None, "not valid UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or exc
        raise located(path, mark.line + 1 if mark else None, f"not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise located(path, None, f"expected a mapping of fields ({', '.join(FILE_FIELDS)}), got {reprlib.repr(data)}")
    return data, _Where(path, _node_lines(root, ()))


def _node_lines(node: yaml.Node, at: YamlPath) -> dict[YamlPath, int]:
    """The 1-based line of this node and of every node under it, by path."""
    lines = {at: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            lines.update(_node_lines(value, (*at, key.value)))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(_node_lines(item, (*at, index)))
    return lines


def _parse_file(path: Path, loaded: Mapping[str, PromptType]) -> PromptType:
    """One prompt file, on top of the types ``loaded`` so far."""
    data, where = _read_yaml(path)
    _check_keys(data, FILE_FIELDS, where, ())
    extend = _flag(data, "extend", False, where)
    if extend and path.stem not in loaded:
        raise where.error(("extend",), f"there is no type {path.stem!r} to extend{_did_you_mean(path.stem, list(loaded))}")
    base = loaded[path.stem] if extend else None
    texts = {
        field: getattr(base, field) if base is not None and field not in data else _text(data, field, where, ())
        for field in TEXT_FIELDS
    }
    if "\n" in texts["description"]:
        raise where.error(("description",), "expected one line")
    examples = (base.examples if base is not None else ()) + _examples(data.get("examples"), where)
    passage_title = _flag(data, "passage_title", base.passage_title if base is not None else True, where)
    passage_tokens = _tokens(data, "passage_tokens", base.passage_tokens if base is not None else None, where)
    prompt = PromptType(path.stem, **texts, examples=examples, passage_title=passage_title, passage_tokens=passage_tokens)
    _check_template(prompt, where)
    return prompt


def _flag(data: Mapping[str, Any], key: str, default: bool, where: _Where) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise where.error((key,), f"expected true or false, got {reprlib.repr(value)}")
    return value


def _tokens(data: Mapping[str, Any], key: str, default: int | None, where: _Where) -> int | None:
    value = data.get(key, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 16):
        raise where.error((key,), f"expected a whole number of tokens, at least 16, got {reprlib.repr(value)}")
    return value


def _examples(value: Any, where: _Where) -> tuple[Example, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise where.error(("examples",), f"expected a list of passage/query pairs, got {reprlib.repr(value)}")
    return tuple(_example(item, where, ("examples", index)) for index, item in enumerate(value))


def _example(item: Any, where: _Where, at: YamlPath) -> Example:
    if not isinstance(item, dict):
        raise where.error(at, f"expected a mapping with 'passage' and 'query', got {reprlib.repr(item)}")
    _check_keys(item, EXAMPLE_FIELDS, where, at)
    query = _text(item, "query", where, at)
    if "\n" in query:
        raise where.error((*at, "query"), "expected one line")
    domain = _text(item, "domain", where, at) if "domain" in item else None
    return Example(_text(item, "passage", where, at), query, domain)


def _text(mapping: Mapping[str, Any], key: str, where: _Where, at: YamlPath) -> str:
    """The stripped, non-empty string ``mapping[key]``."""
    if key not in mapping:
        raise where.error(at, f"missing field {key!r}")
    value = mapping[key]
    if not isinstance(value, str) or not value.strip():
        raise where.error((*at, key), f"expected a non-empty string, got {reprlib.repr(value)}")
    return value.strip()


def _check_keys(mapping: Mapping[Any, Any], allowed: Sequence[str], where: _Where, at: YamlPath) -> None:
    for key in mapping:
        if key not in allowed:
            raise where.error((*at, str(key)), f"unknown field{_did_you_mean(str(key), allowed)}")


def _check_template(prompt: PromptType, where: _Where) -> None:
    """The user template has {passage}, and {examples} exactly when the type has examples."""
    fields = _placeholders(prompt.user, where)
    if "passage" not in fields:
        raise where.error(("user",), "the template needs a {passage} placeholder")
    if prompt.examples and "examples" not in fields:
        raise where.error(("user",), f"the type has {len(prompt.examples)} examples but no {{examples}} placeholder")
    if "examples" in fields and not prompt.examples:
        raise where.error(("user",), "the template has an {examples} placeholder but the type has no examples")


def _placeholders(template: str, where: _Where) -> set[str]:
    hint = "write a literal brace as {{ or }}"
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise where.error(("user",), f"bad template: {exc} ({hint})") from None
    unknown = sorted(fields - set(PLACEHOLDERS))
    if unknown:
        raise where.error(("user",), f"unknown placeholder {{{unknown[0]}}} (use {{passage}} and {{examples}}; {hint})")
    return fields


def _examples_block(examples: Sequence[Example]) -> str:
    return "".join(f"Passage: {example.passage}\nQuery: {example.query}\n\n" for example in examples)


# --- mixture helpers --------------------------------------------------------------------------


def _check_known(names: Sequence[str], available: Collection[str], setting: str) -> None:
    for name in names:
        if name not in available:
            raise SpecializeError(f"{setting}: unknown query type {name!r}{_did_you_mean(name, sorted(available))}")


def _check_weight(name: str, weight: Any, types: Sequence[str]) -> None:
    if name not in types:
        raise SpecializeError(f"generate.type_weights: {name!r} has a weight but is not in generate.types ({', '.join(types)})")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
        raise SpecializeError(f"generate.type_weights.{name}: expected a finite number >= 0, got {weight!r}")


def _did_you_mean(word: str, options: Sequence[str]) -> str:
    """' (did you mean ...?)' for the closest option, else the list of options."""
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else f" (expected one of: {', '.join(options)})"


def _hash64(*parts: object) -> int:
    """A stable 64-bit hash of the parts (Python's hash() changes between processes)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def _uniform(*parts: object) -> float:
    """A number in [0, 1) fixed by the parts."""
    return _hash64(*parts) / 2**64


def _estimate_tokens(text: str) -> int:
    return math.ceil(len(text.split()) / WORDS_PER_TOKEN)
