"""The generate stage: real gemma-270m output for every type, cleaning drops by reason, resume
after a kill, the OpenAI-compatible backend over HTTP, and one-line errors from the command line."""

from __future__ import annotations

import json
import re

import pytest
from conftest import TINY_CHAT_TEMPLATE
from test_cli import assert_one_line_error, cli
from test_llm import Server

from specialize.artifacts import fingerprint
from specialize.config import QUERY_TYPES, GenerateConfig, LLMConfig
from specialize.datasets import load_corpus
from specialize.errors import SpecializeError
from specialize.llm import load_llm, retry_seed
from specialize.stages.generate.cleaning import copies_passage
from specialize.stages.generate.prompts import WORDS_PER_TOKEN, assign_types, load_prompt_types
from specialize.stages.generate.stage import GENERATION_DROPS, Mixture, generate, passage_messages, passage_seed, passage_text, query_id

BUNDLED = load_prompt_types()
# Tiny prompts and replies: gemma-270m on 2 busy cores takes seconds per prompt.
ONE = {"queries_per_passage": 1}
"""One query a passage: the tests below count replies per passage; two per passage (the default) has tests of its own."""
SMALL = {**ONE, "few_shot": 1, "passage_tokens": 48, "max_new_tokens": 12}


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write_passages(folder, docs):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "passages.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    return folder


@pytest.fixture(scope="module")
def one_per_type(scifact_slice):
    """Six SciFact abstracts that the default mixture (seed 42) gives one type each."""
    chosen: dict[str, dict] = {}
    for doc in load_corpus(scifact_slice):
        (kind,) = assign_types([doc["_id"]], list(QUERY_TYPES), [1 / 6] * 6, 42)
        chosen.setdefault(kind, doc)
        if len(chosen) == len(QUERY_TYPES):
            break
    return [chosen[kind] for kind in QUERY_TYPES]


@pytest.fixture(scope="module")
def gemma():
    """conftest's gemma_llama_cpp on one thread: on 2 cores shared with other jobs, llama.cpp's
    spinning threads make two threads 3-5x slower than one."""
    return load_llm("bundled:gemma-270m", LLMConfig(backend="llama_cpp", chat_template=TINY_CHAT_TEMPLATE, context_tokens=1024, threads=1))


@pytest.fixture(scope="module")
def gemma_run(tmp_path_factory, one_per_type, gemma):
    """An uninterrupted run of the real gemma-270m over the six passages."""
    work = _write_passages(tmp_path_factory.mktemp("gemma") / "whole", one_per_type)
    counts = generate(work, GenerateConfig(block=2, **SMALL), llm=gemma)
    return work, counts


# --- real output ------------------------------------------------------------------------------


def test_every_bundled_type_gets_a_reply_and_kept_queries_are_clean(gemma_run, one_per_type):
    work, counts = gemma_run
    replies = _lines(work / "generations.jsonl")
    assert [r["source_id"] for r in replies] == [doc["_id"] for doc in one_per_type]
    assert [r["type"] for r in replies] == list(QUERY_TYPES)
    assert all(r["qid"] == query_id(r["source_id"]) and isinstance(r["raw"], str) for r in replies)
    texts = {doc["_id"]: passage_text(doc) for doc in one_per_type}
    queries = _lines(work / "queries.jsonl")
    for query in queries:
        assert set(query) == {"qid", "text", "type", "source_id", "generator"}
        assert query["generator"] == "bundled:gemma-270m" and query["qid"] == query_id(query["source_id"])
        text = query["text"]
        assert "\n" not in text and text == text.strip() and 5 <= len(text) <= GenerateConfig().max_chars
        assert text[0] not in "\"'`*" and not text.lower().startswith(("query:", "question:"))
        assert not copies_passage(text, texts[query["source_id"]])
    assert counts["passages"] == counts["generated"] == 6 and counts["generated_now"] == 6
    assert counts["kept"] == len(queries) and counts["kept"] + sum(counts[f"dropped_{r}"] for r in GENERATION_DROPS) == 6
    assert list(counts["by_type"]) == list(QUERY_TYPES)
    for kind in QUERY_TYPES:
        row = counts["by_type"][kind]
        assert row["generated"] == 1 and row["kept"] + sum(row[f"dropped_{r}"] for r in GENERATION_DROPS) == 1
    assert counts["queries_per_second"] > 0 and counts["generations_reused"] == 0


class Killable:
    """An LLM wrapper that dies (as by Ctrl-C) when asked for more than ``limit`` prompts in all."""

    def __init__(self, llm, limit=None):
        self.inner, self.limit, self.asked = llm, limit, []

    def __getattr__(self, name):  # the name, and the tokenizer the stage cuts passages with
        return getattr(self.inner, name)

    def sample_until(self, prompts, **options):
        if self.limit is not None and len(self.asked) + len(prompts) > self.limit:
            raise KeyboardInterrupt
        self.asked += [messages[-1]["content"] for messages in prompts]
        return self.inner.sample_until(prompts, **options)


def test_resume_after_a_kill_matches_an_uninterrupted_run(gemma_run, one_per_type, gemma, tmp_path):
    whole, expected = gemma_run
    broken = _write_passages(tmp_path / "broken", one_per_type)
    config = GenerateConfig(block=2, **SMALL)
    with pytest.raises(KeyboardInterrupt):
        generate(broken, config, llm=Killable(gemma, limit=3))  # a block never spans two types: one prompt each here
    assert not (broken / "queries.jsonl").exists() and not (broken / "generations.jsonl").exists()
    (partial,) = broken.glob(".generations.jsonl.*.partial")
    assert [r["source_id"] for r in _lines(partial)] == [doc["_id"] for doc in one_per_type[:3]]
    with open(partial, "a") as handle:
        handle.write('{"qid": "gen-torn", "source_id": "torn", "ty')  # a write cut off by the kill

    llm = Killable(gemma)
    resumed = generate(broken, config, llm=llm)
    assert len(llm.asked) == 3 and not any(passage_text(doc)[:40] in "".join(llm.asked) for doc in one_per_type[:3])
    for name in ("generations.jsonl", "queries.jsonl"):
        assert (broken / name).read_bytes() == (whole / name).read_bytes(), name
    assert resumed["generations_resumed"] == 3 and resumed["generated_now"] == 3
    same = {key for key in expected if key not in ("generations_resumed", "generated_now", "queries_per_second")}
    assert {key: resumed[key] for key in same} == {key: expected[key] for key in same}
    assert not list(broken.glob(".generations.jsonl.*.partial"))


def test_a_passage_asked_twice_is_two_replies_in_one_call_and_a_kill_loses_neither(gemma, one_per_type, tmp_path):
    docs = one_per_type[:2]
    config = GenerateConfig(types=["msmarco"], block=3, **{**SMALL, "queries_per_passage": 2})  # a passage per call
    whole = _write_passages(tmp_path / "whole", docs)
    expected = generate(whole, config, llm=gemma)
    rows = _lines(whole / "generations.jsonl")
    assert [row["qid"] for row in rows] == [query_id(doc["_id"], sample) for doc in docs for sample in (0, 1)]
    assert [row["qid"] for row in rows][:2] == [f"gen-{docs[0]['_id']}", f"gen-{docs[0]['_id']}~2"]
    assert expected["passages"] == 2 and expected["generated"] == 4 and expected["generated_now"] == 4
    assert len({passage_seed(42, doc["_id"], sample) for doc in docs for sample in (0, 1)}) == 4
    assert passage_seed(42, docs[0]["_id"], 0) == passage_seed(42, docs[0]["_id"])  # the first query's seed is one-per-passage's

    broken = _write_passages(tmp_path / "broken", docs)
    with pytest.raises(KeyboardInterrupt):
        generate(broken, config, llm=Killable(gemma, limit=3))  # the second passage's queries are never asked
    (partial,) = broken.glob(".generations.jsonl.*.partial")
    assert [row["qid"] for row in _lines(partial)] == [row["qid"] for row in rows[:2]]
    llm = Killable(gemma)
    resumed = generate(broken, config, llm=llm)
    assert len(llm.asked) == 2 and resumed["generations_resumed"] == 2 and resumed["generated_now"] == 2
    for name in ("generations.jsonl", "queries.jsonl"):
        assert (broken / name).read_bytes() == (whole / name).read_bytes(), name


def test_prompts_sharing_a_prefix_evaluate_it_once_and_decode_side_by_side(gemma, one_per_type):
    """Three prompts of one type and example group: the prefix once, each rest once, the replies one forward pass per token."""
    from specialize.llm.llama_cpp_backend import Sequences
    from specialize.stages.generate.prompts import build_messages

    question = BUNDLED["question"]
    prefix = build_messages(question, "", 42, "group-0", 1)
    prompts = [build_messages(question, passage_text(doc)[:200], 42, "group-0", 1) for doc in one_per_type[:3]]
    options = {"temperature": 0.8, "max_new_tokens": 8, "accept": lambda index, reply: True, "attempts": 1}
    passes = []
    forward = Sequences._forward
    Sequences._forward = lambda self, rows: (passes.append([(position, sequence, logits) for _, position, sequence, logits in rows]), forward(self, rows))[1]
    try:
        gemma.yes_no([prompts[0]])  # other text in the judge's cache first
        shared = gemma.sample_until(prompts, seeds=[1, 2, 3], prefixes=[prefix] * 3, **options)
        first = list(passes)
        passes.clear()
        again = gemma.sample_until(prompts, seeds=[1, 2, 3], prefixes=[prefix] * 3, **options)  # the prefix is still there
        kept = list(passes)
        passes.clear()
        alone = gemma.sample_until(prompts, seeds=[1, 2, 3], **options)  # no prefix named: what a prompt shares with the one before
        unshared = list(passes)
        passes.clear()
        greedy = {**options, "temperature": 0, "max_new_tokens": 12}
        twice = gemma.sample_until([prompts[0], prompts[0], prompts[1]], seeds=[1, 2, 3], prefixes=[prefix] * 3, **greedy)
        repeated = list(passes)
    finally:
        Sequences._forward = forward
    lengths = [len(gemma.render(messages)) for messages in prompts]
    head = gemma.llm.longest_token_prefix(gemma.render(prompts[0]), gemma.render(prefix))
    evaluated = lambda log: sum(not logits for rows in log for *_, logits in rows)  # noqa: E731  prompt tokens, no logits wanted
    assert 100 < head < min(lengths) and shared == again and all(len(tried) == 1 and tried[0].strip() for tried in shared)
    assert evaluated(first) == head + sum(length - head - 1 for length in lengths)  # the prefix once, each rest but its last token
    assert evaluated(kept) == sum(length - head - 1 for length in lengths)
    assert evaluated(unshared) == lengths[0] - 1 + sum(length - head - 1 for length in lengths[1:]) and len(alone) == 3
    decoding = [rows for rows in first if all(logits for *_, logits in rows)]
    assert [sequence for _, sequence, _ in decoding[0]] == [0, 1, 2]  # each prompt's last token, side by side
    assert [position for position, _, _ in decoding[0]] == [length - 1 for length in lengths]
    assert len(decoding) <= 8 and max(len(rows) for rows in decoding) == 3  # a pass per new token, not per reply and token
    # A prompt asked for twice in a row is read once: the second sequence shares the first's cells, and
    # decodes from them what the first does (greedy).
    assert evaluated(repeated) == head + (lengths[0] - head - 1) + (lengths[1] - head - 1)
    assert twice[0] == twice[1] and twice[0][0].strip()



# --- cleaning, with a scripted LLM --------------------------------------------------------------


class Repeating:
    """An LLM whose first attempt at each query of a passage is the same reply; a retry writes a new one."""

    name = "repeating"

    def __init__(self):
        self.seeds = []

    def count_tokens(self, text):
        return None

    def generate(self, prompts, *, temperature, max_new_tokens, seeds):
        self.seeds.append(list(seeds))
        titles = [messages[-1]["content"].rsplit("Passage: ", 1)[1].split(".")[0] for messages in prompts]
        first = {passage_seed(42, f"d-{title}", sample) for title in titles for sample in (0, 1)}
        return [f"what does the {title} passage say" + ("" if seed in first else f" again {seed}") for title, seed in zip(titles, seeds)]


class Scripted:
    """An LLM whose reply to each passage is written in advance, keyed by the passage title."""

    name = "scripted"

    def __init__(self, replies):
        self.replies, self.calls = replies, []

    def count_tokens(self, text):
        return None

    def generate(self, prompts, *, temperature, max_new_tokens, seeds):
        self.calls.append((len(prompts), temperature, max_new_tokens, list(seeds)))
        titles = [messages[-1]["content"].rsplit("Passage: ", 1)[1].split(".")[0] for messages in prompts]
        return [self.replies[title] for title in titles]


OCTOPUS = "An octopus has about 500 million neurons, and two thirds of them sit in its arms rather than in its brain"
SCRIPT = {
    "quoted": '"How much of an octopus brain is in its arms?"',
    "prefixed": "Query: octopus neurons arms",
    "listed": "Sure! Here is a query:\n1. **where are octopus neurons**\n2. another",
    "empty": "  \n\n ",
    "short": "no",
    "long": "octopus " * 40,
    "echo": f"echo. {OCTOPUS}",
    "duplicate": "how much of an octopus brain is in its arms",
    "example": BUNDLED["question"].examples[0].query,
    "instructions": "No preamble, no quotation marks, no explanation.",
}
KEPT = {"quoted": "How much of an octopus brain is in its arms?", "prefixed": "octopus neurons arms", "listed": "where are octopus neurons"}
DROPPED = {"empty": "empty", "short": "too_short", "long": "too_long", "echo": "copies_passage", "duplicate": "duplicate", "example": "copies_example",
           "instructions": "copies_prompt"}


def test_cleaning_keeps_the_query_and_counts_every_drop_by_reason_and_type(tmp_path):
    docs = [{"_id": f"d-{title}", "title": title, "text": OCTOPUS} for title in SCRIPT]
    work = _write_passages(tmp_path, docs)
    config = GenerateConfig(types=["question", "msmarco"], type_weights={"msmarco": 3}, block=4, retries=0, **ONE)
    llm = Scripted(SCRIPT)
    counts = generate(work, config, llm=llm)
    kinds = dict(zip((doc["_id"] for doc in docs), assign_types([doc["_id"] for doc in docs], ["question", "msmarco"], [0.25, 0.75], 42)))
    queries = _lines(work / "queries.jsonl")
    assert {q["source_id"]: q["text"] for q in queries} == {f"d-{title}": text for title, text in KEPT.items()}
    assert all(q["type"] == kinds[q["source_id"]] and q["generator"] == "scripted" for q in queries)
    assert counts["kept"] == 3 and counts["generated"] == len(SCRIPT)
    for reason in GENERATION_DROPS:
        assert counts[f"dropped_{reason}"] == list(DROPPED.values()).count(reason)
        for kind in ("question", "msmarco"):
            expected = sum(DROPPED.get(title) == reason and kinds[f"d-{title}"] == kind for title in SCRIPT)
            assert counts["by_type"][kind][f"dropped_{reason}"] == expected, (reason, kind)
    sizes = [list(kinds.values()).count(kind) for kind in ("question", "msmarco")]
    assert [call[0] for call in llm.calls] == [min(4, n - start) for n in sizes for start in range(0, n, 4)] == [1, 4, 4, 1]  # a block, one type
    assert all(call[1:3] == (0.8, 50) for call in llm.calls)
    # One example group (32 passages): the prompts of one type one after the other, in passage order within a type.
    by_type = sorted(docs, key=lambda doc: ["question", "msmarco"].index(kinds[doc["_id"]]))
    assert [seed for call in llm.calls for seed in call[3]] == [passage_seed(42, doc["_id"]) for doc in by_type]
    assert [row["source_id"] for row in _lines(work / "generations.jsonl")] == [doc["_id"] for doc in by_type]
    assert [q["source_id"] for q in queries] == [doc["_id"] for doc in docs if doc["_id"] in {q["source_id"] for q in queries}]

    # Only a cleaning threshold changed: the replies are cleaned again, no model is asked.
    stricter = generate(work, config.model_copy(update={"min_chars": 30}), llm=Scripted({}))
    assert stricter["generations_reused"] == 1 and stricter["generated_now"] == 0
    assert stricter["kept"] == 1 and stricter["dropped_too_short"] == 3
    laxer = generate(work, config.model_copy(update={"max_copied_prompt_words": 8}), llm=Scripted({}))
    assert laxer["generations_reused"] == 1 and laxer["kept"] == 4 and laxer["dropped_copies_prompt"] == 0


class Flaky:
    """An LLM that copies the passage on the first attempt of the passages named in ``bad`` (all of
    their attempts when ``stubborn``), and otherwise writes a query naming the passage's title."""

    name = "flaky"

    def __init__(self, bad, stubborn=()):
        self.bad, self.stubborn, self.seeds = set(bad), set(stubborn), []

    def count_tokens(self, text):
        return None

    def generate(self, prompts, *, temperature, max_new_tokens, seeds):
        self.seeds.append(list(seeds))
        replies = []
        for messages, seed in zip(prompts, seeds):
            passage = messages[-1]["content"].rsplit("Passage: ", 1)[1].removesuffix("\nQuery:")
            title = passage.split(".")[0]
            first = seed == passage_seed(42, f"d-{title}")
            copies = title in self.stubborn or (first and title in self.bad)
            replies.append(passage if copies else f"what does the {title} passage say, attempt seed {seed}")
        return replies


class Asking(Scripted):
    """A scripted LLM that also records each prompt and the prefix it was said to share."""

    def __init__(self, reply="what do octopus arms hold"):
        super().__init__({})
        self.reply, self.asked = reply, []

    def sample_until(self, prompts, *, temperature, max_new_tokens, seeds, accept, attempts, prefixes=None):
        self.asked += list(zip(prompts, prefixes))
        return [[f"{self.reply} {seed}"] for seed in seeds]


def test_a_group_of_passages_shows_one_draw_of_examples_per_type(tmp_path):
    docs = [{"_id": f"d{number}", "title": f"T{number}", "text": OCTOPUS} for number in range(12)]
    work = _write_passages(tmp_path / "groups", docs)
    config = GenerateConfig(types=["question", "keywords"], few_shot_group=6, block=4, retries=0, **ONE)
    llm = Asking()
    generate(work, config, llm=llm)
    kinds = dict(zip((doc["_id"] for doc in docs), assign_types([doc["_id"] for doc in docs], config.types, [0.5, 0.5], 42)))
    asked = [(messages[-1]["content"].rsplit("Passage: T", 1)[1].split(".")[0], messages, prefix) for messages, prefix in llm.asked]
    assert sorted(int(number) for number, _, _ in asked) == list(range(12))
    for number, messages, prefix in asked:
        # The prefix is the prompt with its passage left empty, and the prompt starts with all of it but the end.
        assert messages[0] == prefix[0] and messages[1]["content"].startswith(prefix[1]["content"].split("Passage: ")[0])
    shown = {(int(number) // 6, kinds[f"d{number}"]): set() for number, _, _ in asked}
    for number, messages, _ in asked:
        shown[(int(number) // 6, kinds[f"d{number}"])].add(messages[1]["content"].split("Passage: T")[0])
    assert all(len(texts) == 1 for texts in shown.values())  # one draw per group and type
    assert len({next(iter(texts)) for texts in shown.values()}) == len(shown)  # each group and type its own
    # Within a group, the prompts of one type follow each other.
    groups = [[kinds[f"d{number}"] for number, _, _ in asked[start : start + 6]] for start in (0, 6)]
    assert all(order == sorted(order, key=config.types.index) for order in groups)

    # A draw per passage with few_shot_group 1: another key, and the prompts of a type differ.
    single = Asking()
    generate(_write_passages(tmp_path / "single", docs), config.model_copy(update={"few_shot_group": 1}), llm=single)
    question = [messages[1]["content"].split("Passage: T")[0] for messages, _ in single.asked if "question" in messages[0]["content"]]
    assert len(set(question)) > 1


def test_a_generations_file_that_does_not_hold_each_query_once_is_an_error(tmp_path):
    docs = [{"_id": f"d{number}", "title": f"T{number}", "text": OCTOPUS} for number in range(3)]
    work = _write_passages(tmp_path, docs)
    config = GenerateConfig(types=["question"], retries=0, **ONE)
    generate(work, config, llm=Asking())
    whole = (work / "generations.jsonl").read_text()
    rows = whole.splitlines()
    key_file = work / ".generations.key"
    key = key_file.read_text().split()[0]
    for broken, message in ((rows[:2], "no reply 'gen-d2' to passage 'd2'"),
                            ([*rows, rows[0]], r"generations.jsonl:4: a second reply 'gen-d0' to passage 'd0'"),
                            ([*rows, rows[0].replace('d0"', 'd9"')], r"generations.jsonl:4: a reply 'gen-d9' to passage 'd9', which passages.jsonl")):
        (work / "generations.jsonl").write_text("".join(row + "\n" for row in broken))
        # Edited, the file is generated again...
        generate(work, config.model_copy(update={"min_chars": 6}), llm=Asking())
        assert (work / "generations.jsonl").read_text() == whole
        # ...unless its key vouches for it as it is: then cleaning finds what is wrong.
        (work / "generations.jsonl").write_text("".join(row + "\n" for row in broken))
        key_file.write_text(f"{key}\n{fingerprint(work / 'generations.jsonl')}\n")
        with pytest.raises(SpecializeError, match=message):
            generate(work, config.model_copy(update={"min_chars": 6}), llm=Asking())


def test_a_reply_repeating_an_earlier_one_of_its_passage_is_sampled_again(tmp_path):
    docs = [{"_id": f"d-{title}", "title": title, "text": OCTOPUS} for title in ("alpha", "beta")]
    work = _write_passages(tmp_path / "twice", docs)
    config = GenerateConfig(types=["question"], queries_per_passage=2, retries=1)
    llm = Repeating()
    counts = generate(work, config, llm=llm)
    seeds = [passage_seed(42, doc["_id"], sample) for doc in docs for sample in (0, 1)]
    assert llm.seeds == [seeds, [retry_seed(seeds[1], 1), retry_seed(seeds[3], 1)]]  # only each passage's second query again
    rows = _lines(work / "generations.jsonl")
    assert [row["rejected"] for row in rows] == [[], ["what does the alpha passage say"], [], ["what does the beta passage say"]]
    assert [q["qid"] for q in _lines(work / "queries.jsonl")] == [query_id(doc["_id"], sample) for doc in docs for sample in (0, 1)]
    assert counts["kept"] == 4 and counts["retried"] == 2 and counts["recovered"] == 2 and counts["dropped_duplicate"] == 0
    # Without retries the repeat is kept out as a duplicate.
    single = generate(_write_passages(tmp_path / "once", docs), config.model_copy(update={"retries": 0}), llm=Repeating())
    assert single["kept"] == 2 and single["dropped_duplicate"] == 2 and single["generated"] == 4


def test_retries_resample_rejected_replies_and_count_what_they_recover(tmp_path):
    titles = ["alpha", "beta", "gamma", "delta"]
    docs = [{"_id": f"d-{title}", "title": title, "text": OCTOPUS} for title in titles]
    work = _write_passages(tmp_path / "retry", docs)
    llm = Flaky(bad={"beta", "delta"}, stubborn={"delta"})
    counts = generate(work, GenerateConfig(types=["question"], block=4, retries=2, **ONE), llm=llm)
    first = [passage_seed(42, doc["_id"]) for doc in docs]
    assert llm.seeds == [first, [retry_seed(first[1], 1), retry_seed(first[3], 1)], [retry_seed(first[3], 2)]]
    rows = {row["source_id"]: row for row in _lines(work / "generations.jsonl")}
    assert [len(rows[doc["_id"]]["rejected"]) for doc in docs] == [0, 1, 0, 2]
    assert rows["d-beta"]["raw"].endswith(str(retry_seed(first[1], 1))) and rows["d-beta"]["rejected"][0].startswith("beta. ")
    assert {q["source_id"] for q in _lines(work / "queries.jsonl")} == {"d-alpha", "d-beta", "d-gamma"}
    assert (counts["retried"], counts["recovered"], counts["kept"], counts["dropped_copies_passage"]) == (2, 1, 3, 1)
    assert (counts["by_type"]["question"]["retried"], counts["by_type"]["question"]["recovered"]) == (2, 1)

    # Without retries the same first replies are dropped; the retries setting is part of the key.
    plain = generate(work, GenerateConfig(types=["question"], block=4, retries=0, **ONE), llm=Flaky(bad={"beta", "delta"}))
    assert plain["generated_now"] == 4 and (plain["kept"], plain["retried"], plain["dropped_copies_passage"]) == (2, 0, 2)
    # With retries on, a cleaning threshold decides what is retried: changing it asks the model again.
    again = generate(work, GenerateConfig(types=["question"], block=4, retries=1, max_copied_words=12, **ONE), llm=Flaky(bad={"beta"}))
    assert again["generated_now"] == 4 and again["recovered"] == 1


def test_the_title_type_sees_the_passage_without_its_title(tmp_path):
    assert {kind for kind in QUERY_TYPES if not BUNDLED[kind].passage_title} == {"title", "claim"}
    docs = [{"_id": "d-1", "title": "Octopus neurons", "text": OCTOPUS}]
    asked = {}

    class Recorder(Scripted):
        def generate(self, prompts, *, temperature, max_new_tokens, seeds):
            asked[len(asked)] = prompts[0][-1]["content"]
            return ["Where an octopus keeps its neurons"]

    for kind in ("title", "question"):
        generate(_write_passages(tmp_path / kind, docs), GenerateConfig(types=[kind], retries=0, **ONE), llm=Recorder({}))
    shown = [text.rsplit("Passage: ", 1)[1] for text in asked.values()]
    assert shown == [f"{OCTOPUS}\nQuery:", f"Octopus neurons. {OCTOPUS}\nQuery:"]


def test_claims_read_more_of_the_passage_than_the_other_types():
    words = " ".join(f"w{i}" for i in range(1000))
    mixture, count = Mixture(GenerateConfig()), lambda text: len(text.split())
    shown = {kind: passage_messages({"_id": "d", "title": "", "text": words}, kind, "group-0", mixture, GenerateConfig(), count)[-1]["content"]
             for kind in ("claim", "question")}
    cut = {kind: len(text.rsplit("Passage: ", 1)[1].split()) - 1 for kind, text in shown.items()}  # less the "Query:" line
    assert cut == {"claim": 384, "question": GenerateConfig().passage_tokens} and GenerateConfig().passage_tokens == 256
    assert passage_messages({"_id": "d", "title": "", "text": words}, "question", "group-0", mixture, GenerateConfig(passage_tokens=100), count)[-1][
        "content"].rsplit("Passage: ", 1)[1].split()[-2] == "w99"


def test_seeds_and_qids_depend_only_on_the_passage():
    assert passage_seed(42, "a") == passage_seed(42, "a") != passage_seed(43, "a")
    assert 0 <= passage_seed(42, "b") < 2**31
    assert query_id("doc1") == "gen-doc1" != "doc1"
    assert passage_text({"title": "Octopus", "text": "Arms."}) == "Octopus. Arms."
    assert passage_text({"title": "Why?", "text": "Arms."}) == "Why? Arms."
    assert passage_text({"title": "", "text": "Arms."}) == "Arms."


def test_bad_passages_files_are_one_line_errors(tmp_path):
    config = GenerateConfig()
    with pytest.raises(SpecializeError, match="not found; run `specialize prepare` first"):
        generate(tmp_path, config, llm=Scripted({}))
    (tmp_path / "passages.jsonl").write_text("")
    with pytest.raises(SpecializeError, match="no passages"):
        generate(tmp_path, config, llm=Scripted({}))
    _write_passages(tmp_path, [{"_id": "a", "text": "x"}, {"_id": "a", "text": "y"}])
    with pytest.raises(SpecializeError, match="duplicate passage id 'a'"):
        generate(tmp_path, config, llm=Scripted({}))
    _write_passages(tmp_path, [{"_id": "a", "body": "x"}])
    with pytest.raises(SpecializeError, match=r"passages.jsonl:1: expected string fields '_id' and 'text'"):
        generate(tmp_path, config, llm=Scripted({}))


# --- an OpenAI-compatible server over HTTP --------------------------------------------------------


class EchoServer(Server):
    """A chat-completions server whose reply names the first words of the prompt's passage."""

    @staticmethod
    def answer(body):
        passage = body["messages"][-1]["content"].rsplit("Passage: ", 1)[1].removesuffix("\nQuery:")
        text = f'"what about {" ".join(passage.split()[:3])}"\nmore words'
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"], "choices": [choice]}


@pytest.fixture
def echo_server():
    server = EchoServer(delay=0.02)
    yield server
    server.close()


def test_openai_backend_end_to_end(echo_server, one_per_type, tmp_path):
    work = _write_passages(tmp_path, one_per_type)
    llm = LLMConfig(backend="openai", base_url=echo_server.url, max_concurrency=2, max_retries=0)
    counts = generate(work, GenerateConfig(model="served-model", llm=llm, passage_tokens=16, block=4, **ONE))
    queries = _lines(work / "queries.jsonl")
    assert counts["kept"] == len(queries) == 6 and counts["generated_now"] == 6
    for doc, query in zip(one_per_type, queries):
        assert query["text"] == "what about " + " ".join(passage_text(doc, BUNDLED[query["type"]].passage_title).split()[:3])
        assert query["generator"] == "served-model"
    requests = sorted(echo_server.requests, key=lambda body: body["seed"])
    assert [body["seed"] for body in requests] == sorted(passage_seed(42, doc["_id"]) for doc in one_per_type)
    assert {(body["model"], body["temperature"], body["max_tokens"]) for body in requests} == {("served-model", 0.8, 50)}
    # No tokenizer behind a server: the passage is cut by the word estimate (16 tokens = 12 words).
    shown = requests[0]["messages"][-1]["content"].rsplit("Passage: ", 1)[1].removesuffix("\nQuery:")
    assert len(shown.split()) == int(16 * WORDS_PER_TOKEN)


# --- the command line -----------------------------------------------------------------------------


def test_cli_generates_through_a_server_and_skips_when_unchanged(echo_server, one_per_type, tmp_path):
    work = _write_passages(tmp_path, one_per_type)
    args = ("generate", "-w", str(work), "--backend", "openai", "--base-url", echo_server.url, "--model", "served", "--types", "question,claim")
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert "done in" in result.stdout and re.search(r"^ +kept +3 +3 +6$", result.stdout, re.M)  # types as columns, then all
    assert "dropped_copies_passage" not in result.stdout  # a row of zeros is hidden; --verbose shows every count
    assert re.search(r"^ +dropped_copies_passage +0 +0 +0$", cli("--verbose", *args, "--force").stdout, re.M)
    manifest = json.loads((work / "stages" / "generate.json").read_text())
    assert set(manifest["outputs"]) == {"generations.jsonl", "queries.jsonl"} and manifest["counts"]["kept"] == 6
    assert {q["type"] for q in _lines(work / "queries.jsonl")} <= {"question", "claim"}
    again = cli(*args)
    assert again.returncode == 0 and "skipped" in again.stdout


@pytest.mark.parametrize(
    ("passages", "args", "fragments"),
    [
        (None, (), ("passages.jsonl: not found", "specialize prepare")),
        ("", (), ("passages.jsonl: no passages",)),
        ("ok", ("--types", "question,quiz"), ("generate.types: unknown query type 'quiz'", "did you mean 'question'")),
        ("ok", ("--model", "/no/such/model.gguf"), ("/no/such/model.gguf: model file not found",)),
        ("ok", ("--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--set", "generate.llm.max_retries=0"),
         ("http://127.0.0.1:9/v1: cannot reach the server",)),
    ],
    ids=["missing-passages", "empty-passages", "unknown-type", "missing-model", "unreachable-server"],
)
def test_cli_one_line_errors(tmp_path, passages, args, fragments):
    if passages is not None:
        text = json.dumps({"_id": "d1", "title": "", "text": "An octopus has most of its neurons in its arms."}) + "\n"
        (tmp_path / "passages.jsonl").write_text(text if passages else "")
    assert_one_line_error(cli("generate", "-w", str(tmp_path), *args), *fragments)
