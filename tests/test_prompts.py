"""The prompt bank: bundled types and their examples, user files, the type mixture, messages, truncation."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from specialize.config import QUERY_TYPES
from specialize.errors import SpecializeError
from specialize.stages.generate.cleaning import QueryDeduper, clean_query, copies_passage
from specialize.stages.generate.prompts import WORDS_PER_TOKEN, assign_types, build_messages, load_prompt_types, truncate_passage, type_mixture

BUNDLED = load_prompt_types()
FEW_SHOT_TYPES = [name for name in QUERY_TYPES if name != "web_search"]
EXAMPLES = [(name, example) for name in FEW_SHOT_TYPES for example in BUNDLED[name].examples]

FULL_TYPE = """\
description: A riddle whose answer is the passage.
system: You write riddles.
user: |-
  Write a riddle.

  {examples}Passage: {passage}
  Query:
examples:
  - passage: The Sun is a star at the centre of the Solar System.
    query: What burns at the middle of our planets' home?
  - passage: Paris is the capital of France.
    query: Which city is the seat of the French government?
"""


def _write(folder, name, text):
    path = folder / name
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- the bundled bank -------------------------------------------------------------------------


def test_every_query_type_is_bundled():
    assert set(BUNDLED) == set(QUERY_TYPES)
    for name, prompt in BUNDLED.items():
        assert prompt.name == name and "\n" not in prompt.description
        assert "one line" in prompt.system or "single line" in prompt.system


@pytest.mark.parametrize("name", FEW_SHOT_TYPES)
def test_few_shot_banks_are_large_and_varied(name):
    examples = BUNDLED[name].examples
    assert len(examples) >= 15
    assert all(example.domain for example in examples)
    assert len({example.domain for example in examples}) >= 5
    assert len({example.passage for example in examples}) == len(examples)


def test_web_search_is_zero_shot():
    web_search = BUNDLED["web_search"]
    assert web_search.examples == () and "{examples}" not in web_search.user
    content = build_messages(web_search, "Some passage.", seed=1, key="d1")[1]["content"]
    assert content.count("Passage:") == 1 and content.endswith("Passage: Some passage.\nQuery:")


@pytest.mark.parametrize(("name", "example"), EXAMPLES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(EXAMPLES)])
def test_bank_examples_obey_the_cleaning_rules(name, example):
    assert clean_query(example.query, example.passage) == (example.query, None)
    assert not copies_passage(example.query, example.passage, 6), "paraphrase: no 6-word run of the passage"
    sentences = len(re.findall(r"[.!?](?:\s|$)", example.passage))
    assert 1 <= sentences <= 5


def test_bank_queries_are_distinct_across_types():
    deduper = QueryDeduper()
    assert [example.query for _, example in EXAMPLES if deduper.check(example.query)] == []


def test_type_specific_example_shapes():
    for example in BUNDLED["keywords"].examples:
        assert 2 <= len(example.query.split(",")) <= 6
    for example in BUNDLED["msmarco"].examples:
        assert example.query == example.query.lower() and len(example.query.split()) <= 10
    for example in BUNDLED["claim"].examples:
        assert example.query.endswith(".") and "?" not in example.query
    for example in BUNDLED["question"].examples:
        assert example.query.endswith("?")


# --- user files -------------------------------------------------------------------------------


def test_user_file_extends_a_bundled_type(tmp_path):
    path = _write(tmp_path, "question.yaml", """\
extend: true
description: Questions, with one more example.
examples:
  - passage: The office is open from 9 to 5 on weekdays.
    query: What are the office opening hours?
    domain: web
""")
    question = load_prompt_types([path])["question"]
    assert question.examples[:-1] == BUNDLED["question"].examples
    assert question.examples[-1].query == "What are the office opening hours?"
    assert question.description == "Questions, with one more example."
    assert (question.system, question.user) == (BUNDLED["question"].system, BUNDLED["question"].user)


def test_extending_keeps_or_replaces_passage_title(tmp_path):
    kept = load_prompt_types([_write(tmp_path / "a", "title.yaml", "extend: true\ndescription: Titles.\n")])["title"]
    assert kept.passage_title is False and kept.examples == BUNDLED["title"].examples
    shown = load_prompt_types([_write(tmp_path / "b", "title.yaml", "extend: true\npassage_title: true\n")])["title"]
    assert shown.passage_title is True and shown.user == BUNDLED["title"].user


def test_a_type_may_cut_its_passage_at_its_own_length(tmp_path):
    assert {kind: BUNDLED[kind].passage_tokens for kind in QUERY_TYPES if BUNDLED[kind].passage_tokens} == {"claim": 384}
    kept = load_prompt_types([_write(tmp_path / "a", "claim.yaml", "extend: true\ndescription: Claims.\n")])["claim"]
    assert kept.passage_tokens == 384
    longer = load_prompt_types([_write(tmp_path / "b", "question.yaml", "extend: true\npassage_tokens: 512\n")])["question"]
    assert longer.passage_tokens == 512 and longer.examples == BUNDLED["question"].examples


def test_user_file_overrides_a_bundled_type_and_adds_a_new_one(tmp_path):
    folder = tmp_path / "prompts"
    folder.mkdir()
    _write(folder, "claim.yaml", FULL_TYPE)
    _write(folder, "riddle.yml", FULL_TYPE)
    _write(folder, "notes.txt", "not a prompt file")
    types = load_prompt_types([folder])
    assert set(types) == {*QUERY_TYPES, "riddle"}
    assert types["claim"].system == "You write riddles." and len(types["claim"].examples) == 2
    assert types["riddle"].examples[1].domain is None
    assert types["question"] == BUNDLED["question"]


def test_later_user_files_win(tmp_path):
    first, second, third = (tmp_path / name for name in "abc")
    for folder in (first, second, third):
        folder.mkdir()
    _write(first, "riddle.yaml", FULL_TYPE)
    _write(second, "riddle.yaml", FULL_TYPE.replace("You write riddles.", "You write hard riddles."))
    _write(third, "riddle.yaml", "extend: true\nexamples:\n  - {passage: Ice is cold water., query: 'What is frozen water?'}\n")
    riddle = load_prompt_types([first, second, third])["riddle"]
    assert riddle.system == "You write hard riddles." and len(riddle.examples) == 3


BAD_FILES = [
    ("", None, "expected a mapping"),
    ("- a\n- b\n", None, "expected a mapping"),
    ("description: x\nsystem: [unclosed\n", 3, "not valid YAML"),
    ("description: x\nuser: '{passage}'\n", None, "missing field 'system'"),
    ("description: x\nsystem: ''\nuser: '{passage}'\n", 2, "system: expected a non-empty string"),
    ("description: |\n  two\n  lines\nsystem: s\nuser: '{passage}'\n", 1, "description: expected one line"),
    ("description: x\nsystem: s\nuser: Write a query.\n", 3, "{passage} placeholder"),
    ("description: x\nsystem: s\nuser: '{passage} {pasage}'\n", 3, "unknown placeholder {pasage}"),
    ("description: x\nsystem: s\nuser: '{passage} {'\n", 3, "bad template"),
    ("description: x\nsystem: s\nuser: '{passage}'\nexampels: []\n", 4, "exampels: unknown field (did you mean 'examples'?)"),
    ("description: x\nsystem: s\nuser: '{examples}{passage}'\nexamples: some text\n", 4, "examples: expected a list"),
    ("description: x\nsystem: s\nuser: '{examples}{passage}'\nexamples: [just text]\n", 4, "examples[0]: expected a mapping"),
    (
        "description: x\nsystem: s\nuser: '{examples}{passage}'\nexamples:\n  - {passage: p, query: q}\n  - passage: p\n",
        6,
        "examples[1]: missing field 'query'",
    ),
    ("description: x\nsystem: s\nuser: '{examples}{passage}'\nexamples:\n  - {passage: p, query: 3}\n", 5, "examples[0].query: expected a non-empty string"),
    (
        "description: x\nsystem: s\nuser: '{examples}{passage}'\nexamples:\n  - {passage: p, query: q, qeury: r}\n",
        5,
        "examples[0].qeury: unknown field (did you mean 'query'?)",
    ),
    ("description: x\nsystem: s\nuser: '{passage}'\nexamples:\n  - {passage: p, query: q}\n", 3, "no {examples} placeholder"),
    ("description: x\nsystem: s\nuser: '{examples}{passage}'\n", 3, "the type has no examples"),
    ("extend: yes please\n", 1, "extend: expected true or false"),
    ("description: x\nsystem: s\nuser: '{passage}'\npassage_title: maybe\n", 4, "passage_title: expected true or false"),
    ("description: x\nsystem: s\nuser: '{passage}'\npassage_tokens: 8\n", 4, "passage_tokens: expected a whole number of tokens, at least 16, got 8"),
    ("description: x\nsystem: s\nuser: '{passage}'\npassage_tokens: long\n", 4, "passage_tokens: expected a whole number of tokens"),
]


@pytest.mark.parametrize(("text", "line", "fragment"), BAD_FILES)
def test_bad_files_give_a_one_line_error_naming_file_line_and_field(tmp_path, text, line, fragment):
    path = _write(tmp_path, "riddle.yaml", text)
    with pytest.raises(SpecializeError) as caught:
        load_prompt_types([path])
    message = str(caught.value)
    assert "\n" not in message and fragment in message
    assert message.startswith(f"{path}:{line}: " if line is not None else f"{path}: ")


def test_extending_an_unknown_type_suggests_the_closest(tmp_path):
    path = _write(tmp_path, "questions.yaml", "extend: true\n")
    with pytest.raises(SpecializeError, match=r"questions.yaml:1: extend: there is no type 'questions' to extend \(did you mean 'question'\?\)"):
        load_prompt_types([path])


def test_missing_or_undecodable_prompt_file(tmp_path):
    with pytest.raises(SpecializeError, match="nothing.yaml: prompt file not found"):
        load_prompt_types([tmp_path / "nothing.yaml"])
    path = tmp_path / "latin1.yaml"
    path.write_bytes("description: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SpecializeError, match="latin1.yaml: not valid UTF-8"):
        load_prompt_types([path])


# --- the type mixture -------------------------------------------------------------------------


def test_type_mixture_weights():
    assert type_mixture(["question", "claim"], None, BUNDLED) == (["question", "claim"], [0.5, 0.5])
    names, probabilities = type_mixture(["question", "claim", "title"], {"question": 2, "title": 0}, BUNDLED)
    assert names == ["question", "claim"] and probabilities == pytest.approx([2 / 3, 1 / 3])


@pytest.mark.parametrize(
    ("types", "weights", "fragment"),
    [
        ([], None, "generate.types: list at least one"),
        (["questoin"], None, "generate.types: unknown query type 'questoin' (did you mean 'question'?)"),
        (["question", "question"], None, "'question' is listed more than once"),
        (["question"], {"cliam": 1}, "generate.type_weights: unknown query type 'cliam' (did you mean 'claim'?)"),
        (["question"], {"claim": 1}, "'claim' has a weight but is not in generate.types"),
        (["question"], {"question": -1}, "generate.type_weights.question: expected a finite number >= 0, got -1"),
        (["question"], {"question": float("nan")}, "got nan"),
        (["question"], {"question": float("inf")}, "got inf"),
        (["question"], {"question": "heavy"}, "got 'heavy'"),
        (["question"], {"question": True}, "got True"),
        (["question", "claim"], {"question": 0, "claim": 0}, "every listed type has weight 0"),
    ],
)
def test_type_mixture_errors(types, weights, fragment):
    with pytest.raises(SpecializeError) as caught:
        type_mixture(types, weights, BUNDLED)
    assert fragment in str(caught.value)


def test_assign_types_depends_only_on_seed_and_passage_id():
    names, probabilities = type_mixture(list(QUERY_TYPES), None, BUNDLED)
    ids = [f"doc{i}" for i in range(1000)]
    everything = dict(zip(ids, assign_types(ids, names, probabilities, seed=7)))
    assert assign_types(ids[:10], names, probabilities, seed=7) == [everything[pid] for pid in ids[:10]]
    shuffled = ids[::-1]
    assert assign_types(shuffled, names, probabilities, seed=7) == [everything[pid] for pid in shuffled]
    assert assign_types(ids, names, probabilities, seed=8) != list(everything.values())


def test_assign_types_follows_the_weights():
    names, probabilities = type_mixture(["question", "claim", "keywords"], {"question": 3, "claim": 1, "keywords": 2}, BUNDLED)
    counts = Counter(assign_types([f"p{i}" for i in range(6000)], names, probabilities, seed=42))
    for name, probability in zip(names, probabilities):
        assert counts[name] / 6000 == pytest.approx(probability, abs=0.02)


# --- messages and truncation ------------------------------------------------------------------


def _shown_queries(messages):
    return re.findall(r"^Query: (.+)$", messages[1]["content"], flags=re.MULTILINE)


def test_build_messages_draws_distinct_examples_deterministically():
    question = BUNDLED["question"]
    messages = build_messages(question, "Whales {sing} songs.", seed=3, key="doc1")
    assert [message["role"] for message in messages] == ["system", "user"]
    assert messages[0]["content"] == question.system
    shown = _shown_queries(messages)
    assert len(shown) == len(set(shown)) == 3
    assert set(shown) <= {example.query for example in question.examples}
    assert messages[1]["content"].endswith("Passage: Whales {sing} songs.\nQuery:")
    assert build_messages(question, "Whales {sing} songs.", seed=3, key="doc1") == messages
    draws = {tuple(_shown_queries(build_messages(question, "x", seed=3, key=f"doc{i}"))) for i in range(20)}
    assert len(draws) > 10  # other passages get other examples


def test_build_messages_few_shot_count():
    question = BUNDLED["question"]
    assert _shown_queries(build_messages(question, "x", seed=1, key="k", few_shot=0)) == []
    every = _shown_queries(build_messages(question, "x", seed=1, key="k", few_shot=100))
    assert sorted(every) == sorted(example.query for example in question.examples)


def test_truncate_passage_by_word_estimate():
    text = " ".join(f"word{i}" for i in range(100))
    assert truncate_passage("short text", None, 10) == "short text"
    cut = truncate_passage(text, None, 15)
    assert cut.split() == text.split()[: int(15 * WORDS_PER_TOKEN)]


def test_truncate_passage_with_a_token_counter_cuts_on_word_boundaries():
    assert truncate_passage("alpha beta  gamma", len, 12) == "alpha beta"
    assert truncate_passage("alpha beta  gamma", len, 17) == "alpha beta  gamma"
    assert truncate_passage("alphabet soup", len, 4) == ""
