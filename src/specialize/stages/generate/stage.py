"""The generate stage: ``queries_per_passage`` synthetic queries per sampled passage, of a type drawn from the mixture.

Two steps, like label's scoring and filtering:

1. The LLM writes ``queries_per_passage`` raw replies for each passage of ``passages.jsonl``
   (streamed), sampled from the same prompt with seeds of their own, ``block`` prompts of one type per
   backend call; a reply that cleaning would drop for itself, or that repeats an earlier reply of its
   passage, is sampled again, up to ``retries`` times. Each reply is appended and flushed to a
   partial ``generations.jsonl`` (``{"qid", "source_id", "type", "raw", "rejected"}``: the reply
   to use and the earlier attempts) keyed by everything the replies depend on, so a killed run
   resumes after its last finished block and never asks again for a query already answered,
   whether it was kept or not. The finished file is renamed into place.
2. Cleaning: the replies are cleaned, checked and deduplicated in passage order and the kept
   queries written to ``queries.jsonl`` atomically. With ``retries: 0``, when only the cleaning
   thresholds change, step 1 is reused and no model is loaded.

Everything random is fixed by the seed and the passage: its type and sampling seed by its id, its
few-shot examples by its type and its group of ``few_shot_group`` consecutive passages, so a resumed
run writes what an uninterrupted one would. Within a group the prompts of one type run one after
the other, in blocks that never span two types: they share everything before the passage, which
llama.cpp then evaluates once per group and type, and a passage's prompts are the same text, which
it evaluates once for all of them; a block's replies are decoded side by side (vLLM's prefix cache
does the same), and ``generations.jsonl`` is in that order.

With ``queries`` set (the user's own queries file) there is no LLM and no step 1: the file's
queries are written to ``queries.jsonl`` as they are, with no source passage (``source_id``
null) and the file's type, else ``user``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

from specialize.artifacts import fingerprint, finish_partial, finished_with_key, iter_jsonl, resume_partial, write_jsonl
from specialize.config import Config, GenerateConfig
from specialize.counts import TypeCounts
from specialize.datasets import load_user_queries
from specialize.errors import SpecializeError, located
from specialize.llm import LLM, Messages, load_llm, sample_until
from specialize.progress import progress_bar
from specialize.stages.generate.cleaning import QUERY_DROPS, QueryDeduper, clean_query, normalize_query, shares_words
from specialize.stages.generate.prompts import PromptType, assign_types, build_messages, load_prompt_types, truncate_passage, type_mixture
from specialize.workdir import Workdir

# Cleaning's reasons; a reply that repeats a bank example, or a run of words of its prompt.
GENERATION_DROPS = (*QUERY_DROPS, "copies_example", "copies_prompt")
USER_TYPE = "user"  # the type of a user's query whose file gives none
GENERATION_FIELDS = {"queries_per_passage", "few_shot", "few_shot_group", "temperature", "max_new_tokens", "passage_tokens", "seed", "retries"}
CHECK_FIELDS = {"min_chars", "max_chars", "max_copied_words", "max_copied_prompt_words"}  # what decides a retry
LLM_FIELDS = {"backend", "chat_template", "context_tokens", "batch_size", "flash_attention", "requantize"}  # those that can change the text


def query_id(source_id: str, sample: int = 0) -> str:
    """The qid of a passage's query number ``sample`` (from 0): fixed by the passage, never equal to a document id."""
    return f"gen-{source_id}" if sample == 0 else f"gen-{source_id}~{sample + 1}"


def passage_seed(seed: int, source_id: str, sample: int = 0) -> int:
    """The sampling seed of a passage's query number ``sample``, fixed by (seed, passage id, sample), in [0, 2**31)."""
    name = f"{seed}\x1fgenerate\x1f{source_id}" + (f"\x1f{sample}" if sample else "")
    return random.Random(name).getrandbits(31)


def example_key(position: int, config: GenerateConfig) -> str:
    """What draws the few-shot examples of the passage at ``position`` in passages.jsonl, with the seed and the type: its group."""
    return f"group-{position // config.few_shot_group}"


def passage_text(record: Mapping[str, Any], with_title: bool = True) -> str:
    """The passage as the LLM sees it: its title as a first sentence (unless ``with_title`` is false), then its text."""
    title = (record.get("title") or "").strip() if with_title else ""
    if not title:
        return record["text"]
    return f"{title}{'' if title[-1] in '.?!:' else '.'} {record['text']}"


def read_passages(path: Path) -> Iterator[dict[str, Any]]:
    """The records of ``passages.jsonl``, each checked for a string '_id' and 'text'."""
    if not path.is_file():
        raise SpecializeError(f"{path}: not found; run `specialize prepare` first")
    for number, record in iter_jsonl(path):
        if not isinstance(record.get("_id"), str) or not record["_id"] or not isinstance(record.get("text"), str):
            raise located(path, number, "expected string fields '_id' and 'text' (rerun `specialize prepare`)")
        if not isinstance(record.get("title") or "", str):
            raise located(path, number, "expected a string 'title' (rerun `specialize prepare`)")
        yield record


def count_passages(path: Path) -> int:
    """How many passages ``passages.jsonl`` holds; every record is checked and ids must be unique."""
    seen: set[str] = set()
    for record in read_passages(path):
        if record["_id"] in seen:
            raise SpecializeError(f"{path}: duplicate passage id {record['_id']!r} (rerun `specialize prepare`)")
        seen.add(record["_id"])
    if not seen:
        raise SpecializeError(f"{path}: no passages (rerun `specialize prepare` on a non-empty corpus)")
    return len(seen)


def token_counter(llm: LLM) -> Callable[[str], int] | None:
    """The backend's token counter, or None when it cannot count (a server): passages are then cut by words."""
    if llm.count_tokens("") is None:
        return None

    def count(text: str) -> int:
        tokens = llm.count_tokens(text)
        assert tokens is not None, "a backend that counts one text counts all"
        return tokens

    return count


# --- step 1: raw replies ----------------------------------------------------------------------


class Mixture:
    """The query types to draw from, with their prompts and probabilities."""

    def __init__(self, config: GenerateConfig) -> None:
        available = load_prompt_types(config.prompts)
        self.names, self.probabilities = type_mixture(config.types, config.type_weights, available)
        self.prompts: dict[str, PromptType] = {name: available[name] for name in self.names}
        # A reply repeating a few-shot example is not a query of its passage.
        self.example_queries = {normalize_query(example.query) for prompt in self.prompts.values() for example in prompt.examples}

    def instructions(self, kind: str, key: str, config: GenerateConfig) -> Messages:
        """The prompt of a type and example group without its passage: what the group's prompts of that type share."""
        return build_messages(self.prompts[kind], "", config.seed, key, config.few_shot)

    def check(self, raw: str, passage: Mapping[str, Any], kind: str, key: str, config: GenerateConfig) -> tuple[str | None, str | None]:
        """(query, None) for a usable reply, else (None, drop reason); duplicates are the caller's."""
        query, reason = clean_query(raw, passage_text(passage), min_chars=config.min_chars,
                                    max_chars=config.max_chars, max_copied_words=config.max_copied_words)
        if query is None:
            return None, reason
        if normalize_query(query) in self.example_queries:
            return None, "copies_example"
        # The prompt without its passage: the instructions and the examples shown with it.
        instructions = self.instructions(kind, key, config)
        if shares_words(query, "\n".join(message["content"] for message in instructions), config.max_copied_prompt_words):
            return None, "copies_prompt"
        return query, None


def generations_key(config: GenerateConfig, generator: str, mixture: Mixture, passages: Path) -> str:
    """What the raw replies depend on: the model, the mixture and its prompts, the sampling settings, the passages."""
    payload = [
        generator,
        mixture.names,
        mixture.probabilities,
        [repr(mixture.prompts[name]) for name in mixture.names],
        config.model_dump(mode="json", include=GENERATION_FIELDS | (CHECK_FIELDS if config.retries else set())),
        config.llm.model_dump(mode="json", include=LLM_FIELDS),
        fingerprint(passages),
    ]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def passage_messages(
    record: Mapping[str, Any], kind: str, key: str, mixture: Mixture, config: GenerateConfig, count: Callable[[str], int] | None
) -> Messages:
    """The chat messages for one passage, its type and example group, the passage cut to ``passage_tokens`` by ``count``."""
    prompt = mixture.prompts[kind]
    passage = truncate_passage(passage_text(record, prompt.passage_title), count, prompt.passage_tokens or config.passage_tokens)
    return build_messages(prompt, passage, config.seed, key, config.few_shot)


Work = tuple[dict[str, Any], str, str, int]  # a passage, its type, its example group, the number of its query


def write_generations(workdir: Path, config: GenerateConfig, llm: LLM, mixture: Mixture, key: str, total: int) -> dict[str, int | float]:
    """Write ``generations.jsonl``, ``queries_per_passage`` raw replies per passage, resuming from a partial file with the same key."""
    final = Workdir(workdir).generations
    partial, done = resume_partial(final, key, "qid")
    count = token_counter(llm)
    started = time.perf_counter()
    # Transient: a backend failure (an unreachable server) then ends in its one-line error alone.
    bar = progress_bar(f"{llm.name} · generating", total=total - len(done), unit="queries", transient=True)
    with open(partial, "a", encoding="utf-8", newline="\n") as out, bar as advance:

        def run_block(block: list[Work]) -> None:
            """Ask for one reply per (passage, type, example key, query number) and append them, flushed."""
            accept = sibling_check(block, mixture, config)
            replies = sample_until(
                llm, [passage_messages(record, kind, group, mixture, config, count) for record, kind, group, _ in block],
                temperature=config.temperature, max_new_tokens=config.max_new_tokens,
                seeds=[passage_seed(config.seed, record["_id"], sample) for record, _, _, sample in block],
                accept=accept, attempts=1 + config.retries,
                prefixes=[mixture.instructions(kind, group, config) for _, kind, group, _ in block],
            )
            for (record, kind, _, sample), tried in zip(block, replies, strict=True):
                row = {"qid": query_id(record["_id"], sample), "source_id": record["_id"], "type": kind, "raw": tried[-1], "rejected": tried[:-1]}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()
            advance(len(block))

        def run_group(records: list[dict[str, Any]], group: str) -> None:
            """The group's queries still to ask for, type by type (prompts that share their prefix), a passage's
            in the same call (the same prompt), ``block`` per call."""
            types = assign_types([record["_id"] for record in records], mixture.names, mixture.probabilities, config.seed)
            order = sorted(range(len(records)), key=lambda index: mixture.names.index(types[index]))  # stable: passage order within a type
            per_call = max(1, config.block // config.queries_per_passage)  # passages
            for _, same_type in groupby(((records[index], types[index], group) for index in order), key=lambda item: item[1]):
                work = [[(record, kind, key, sample) for sample in range(config.queries_per_passage) if query_id(record["_id"], sample) not in done]
                        for record, kind, key in same_type]
                for start in range(0, len(work), per_call):
                    run_block([query for passage in work[start : start + per_call] for query in passage])

        passages = enumerate(read_passages(Workdir(workdir).passages))
        for group, members in groupby(passages, key=lambda item: example_key(item[0], config)):
            pending = [record for _, record in members
                       if any(query_id(record["_id"], sample) not in done for sample in range(config.queries_per_passage))]
            if pending:
                run_group(pending, group)
        os.fsync(out.fileno())
    seconds = time.perf_counter() - started
    finish_partial(final, key)
    generated = total - len(done)
    return {"generations_resumed": len(done), "generated_now": generated,
            "queries_per_second": round(generated / seconds, 3) if generated and seconds > 0 else 0.0}


def sibling_check(block: Sequence[Work], mixture: Mixture, config: GenerateConfig) -> Callable[[int, str], bool]:
    """``sample_until``'s test of a block's replies: usable for itself, and not the query an earlier reply of its passage gave.

    Replies are tested in block order on every attempt (as both ``sample_until`` paths do), so a passage's
    first query is never retried for its siblings, and a later one is when it repeats one kept before it.
    """
    taken: dict[int, str] = {}  # block index -> the normalized query of its accepted reply

    def accept(index: int, raw: str) -> bool:
        record, kind, group, _ = block[index]
        query = mixture.check(raw, record, kind, group, config)[0]
        if query is None:
            return False
        key = normalize_query(query)
        if any(taken.get(other) == key for other in range(index) if block[other][0]["_id"] == record["_id"]):
            return False
        taken[index] = key
        return True

    return accept


# --- step 2: cleaning -------------------------------------------------------------------------


def _paired(workdir: Path, per_passage: int) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(passage, raw reply) pairs, in passage order and query number; a generations file that does not hold each
    of a passage's ``per_passage`` replies once is an error."""
    generations = Workdir(workdir).generations
    replies: dict[Any, tuple[int, dict[str, Any]]] = {}
    for number, reply in iter_jsonl(generations):
        if reply.get("qid") in replies:
            raise located(generations, number, f"a second reply {reply.get('qid')!r} to passage {reply.get('source_id')!r} (delete it and rerun)")
        replies[reply.get("qid")] = (number, reply)
    for passage in read_passages(Workdir(workdir).passages):
        for qid in (query_id(passage["_id"], sample) for sample in range(per_passage)):
            if qid not in replies:
                raise SpecializeError(f"{generations}: no reply {qid!r} to passage {passage['_id']!r} of passages.jsonl (delete it and rerun)")
            yield passage, replies.pop(qid)[1]
    for number, reply in replies.values():
        raise located(generations, number, f"a reply {reply.get('qid')!r} to passage {reply.get('source_id')!r}, which passages.jsonl "
                      "does not ask for (delete it and rerun)")


def clean_generations(workdir: Path, config: GenerateConfig, generator: str, mixture: Mixture) -> dict[str, Any]:
    """Write ``queries.jsonl``: each raw reply cleaned, checked and deduplicated; counts per reason and type."""
    counts = TypeCounts()
    deduper = QueryDeduper()

    def records() -> Iterator[dict[str, Any]]:
        for index, (passage, reply) in enumerate(_paired(workdir, config.queries_per_passage)):
            kind = reply["type"]
            query, reason = mixture.check(reply["raw"], passage, kind, example_key(index // config.queries_per_passage, config), config)
            if query is not None:
                reason = deduper.check(query)
            counts.add("generated", kind)
            counts.add("retried", kind, bool(reply["rejected"]))
            if reason is not None:
                counts.add(f"dropped_{reason}", kind)
                continue
            counts.add("kept", kind)
            counts.add("recovered", kind, bool(reply["rejected"]))
            yield {"qid": reply["qid"], "text": query, "type": kind, "source_id": passage["_id"], "generator": generator}

    write_jsonl(Workdir(workdir).queries, records())
    outcomes = ["generated", "kept", "retried", "recovered", *(f"dropped_{reason}" for reason in GENERATION_DROPS)]
    return counts.summary(outcomes, mixture.names)


# --- the user's own queries ---------------------------------------------------------------------


def write_user_queries(workdir: Path, path: str) -> dict[str, Any]:
    """Write ``queries.jsonl`` from the user's queries file: no source passage, the file as the generator; counts per type."""
    counts = TypeCounts()
    kinds: set[str] = set()

    def records() -> Iterator[dict[str, Any]]:
        for query in load_user_queries(path):
            kind = query["type"] or USER_TYPE
            counts.add("kept", kind)
            kinds.add(kind)
            yield {"qid": query["_id"], "text": query["text"], "type": kind, "source_id": None, "generator": path}

    total = write_jsonl(Workdir(workdir).queries, records())
    return {"user_queries": total, **counts.summary(["kept"], sorted(kinds))}


# --- the stage --------------------------------------------------------------------------------


def generate(workdir: Path, config: GenerateConfig, llm: LLM | None = None) -> dict[str, Any]:
    """Write ``generations.jsonl`` and ``queries.jsonl`` for the work directory; return the manifest counts.

    ``llm`` replaces the model ``config.model`` names (tests, benchmarks). With ``config.queries`` only
    ``queries.jsonl`` is written, from that file, and no model is loaded.
    """
    if config.queries is not None:
        return write_user_queries(workdir, config.queries)
    mixture = Mixture(config)
    passages = Workdir(workdir).passages
    passage_count = count_passages(passages)
    total = passage_count * config.queries_per_passage
    generator = llm.name if llm is not None else config.model
    key = generations_key(config, generator, mixture, passages)
    if finished_with_key(Workdir(workdir).generations, key):
        written: dict[str, int | float] = {"generations_reused": 1, "generations_resumed": 0, "generated_now": 0, "queries_per_second": 0.0}
    else:
        llm = llm or load_llm(config.model, config.llm, config.seed)
        written = {"generations_reused": 0, **write_generations(workdir, config, llm, mixture, key, total)}
    return {"passages": passage_count, **clean_generations(workdir, config, generator, mixture), **written}


def run(work: Workdir, config: Config) -> dict[str, Any]:
    """The stage as the pipeline runs it."""
    return generate(work.root, config.generate)
