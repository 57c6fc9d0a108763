"""Cleaning of generated queries: every rule by hand, and the deduper."""

from __future__ import annotations

import pytest

from specialize.stages.generate.cleaning import QUERY_DROPS, QueryDeduper, clean_query, copies_passage, normalize_query, shares_words

PASSAGE = (
    "The James Webb Space Telescope observes mainly in the infrared, which lets it see through dust clouds "
    "and detect light from the first galaxies, stretched to longer wavelengths by the expansion of the universe."
)


def _clean(raw: str, **options) -> str | None:
    return clean_query(raw, PASSAGE, **options)[0]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Why does JWST observe in infrared?", "Why does JWST observe in infrared?"),
        ("\n\n  Why does JWST observe in infrared?  \nIt sees through dust.", "Why does JWST observe in infrared?"),
        ("Here is a question for the passage:\nWhy infrared telescopes?", "Why infrared telescopes?"),
        ("Sure! Here's a search query for this passage:\n\n**jwst infrared dust**", "jwst infrared dust"),
        ("Query:\nwebb telescope infrared", "webb telescope infrared"),
        ("```\nwebb telescope infrared\n```", "webb telescope infrared"),
        ("```text\nwebb telescope infrared\n```", "webb telescope infrared"),
        ("---\nwebb telescope infrared", "webb telescope infrared"),
        ("<think>The passage is about JWST.\nA question...</think>\n\nWhat does JWST see?", "What does JWST see?"),
        ("why   does\tJWST  use\u00a0infrared", "why does JWST use infrared"),
    ],
)
def test_first_usable_line_with_whitespace_collapsed(raw, expected):
    assert clean_query(raw, PASSAGE) == (expected, None)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('"What does JWST see?"', "What does JWST see?"),
        ("'webb telescope infrared'", "webb telescope infrared"),
        ("'what's special about webb'", "what's special about webb"),
        ("“What does JWST see?”", "What does JWST see?"),
        ("‘webb infrared’", "webb infrared"),
        ("«webb infrared»", "webb infrared"),
        ("`webb infrared`", "webb infrared"),
        ("**What does JWST see?**", "What does JWST see?"),
        ("__What does JWST see?__", "What does JWST see?"),
        ("*webb infrared*", "webb infrared"),
        ('**"What does JWST see?"**', "What does JWST see?"),
        ('"Hello" by Adele "Someone Like You"', '"Hello" by Adele "Someone Like You"'),
        ("**webb** vs **hubble**", "**webb** vs **hubble**"),
    ],
)
def test_wrapping_quotes_backticks_and_bold_are_stripped(raw, expected):
    assert _clean(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "Query: webb infrared",
        "query:webb infrared",
        "Search query: webb infrared",
        "Web search query: webb infrared",
        "SEARCH: webb infrared",
        "Claim: webb infrared",
        "Question: webb infrared",
        "Title: webb infrared",
        "Keywords: webb infrared",
        "Q: webb infrared",
        "Query 1: webb infrared",
        "**Query:** webb infrared",
        "**Query**: webb infrared",
        '**Query:** "webb infrared"',
        "1. webb infrared",
        "2) webb infrared",
        "- webb infrared",
        "* webb infrared",
        "• webb infrared",
        '- Query: "webb infrared"',
    ],
)
def test_labels_and_list_markers_are_stripped(raw):
    assert _clean(raw) == "webb infrared"


@pytest.mark.parametrize(
    "raw",
    ["1.5 million galaxies seen by webb", "-40 degree mirrors on webb", "Titles of webb papers", "Queries about webb"],
)
def test_text_that_only_looks_like_a_marker_or_label_is_kept(raw):
    assert _clean(raw) == raw


@pytest.mark.parametrize(
    "raw",
    ["", "   \n\t\n", '""', "**", "Query:", "Here is your query:", "```\n```", "<think>The passage is about JWST and I need"],
)
def test_empty(raw):
    assert clean_query(raw, PASSAGE) == (None, "empty")


def test_length_limits():
    assert clean_query("jwst", PASSAGE) == (None, "too_short")
    assert clean_query("jwst", PASSAGE, min_chars=4) == ("jwst", None)
    long_query = "webb " * 61
    assert clean_query(long_query, PASSAGE) == (None, "too_long")
    assert clean_query(long_query, PASSAGE, max_chars=400) == (long_query.strip(), None)


def test_copying_a_run_of_the_passage():
    allowed = "Webb can see through dust clouds and detect light from the early universe"
    copied = "What lets WEBB see through dust clouds, and detect light from the first galaxies?"
    assert copies_passage(copied, PASSAGE)  # eleven words copied, despite case and punctuation
    assert clean_query(copied, PASSAGE) == (None, "copies_passage")
    assert clean_query(allowed, PASSAGE) == (allowed, None)  # a run of nine words is allowed
    assert clean_query("see through dust clouds and detect light", PASSAGE, max_copied_words=5) == (None, "copies_passage")
    assert clean_query("dust clouds and infrared light", PASSAGE, max_copied_words=5) == ("dust clouds and infrared light", None)


def test_echoing_a_short_passage_is_copying():
    assert clean_query("Aspirin reduces fever?", "Aspirin reduces fever.") == (None, "copies_passage")
    assert clean_query("Does aspirin reduce fever?", "Aspirin reduces fever.") == ("Does aspirin reduce fever?", None)


def test_a_whole_sentence_of_the_passage_is_copying_however_short():
    passage = "Octopus arms. Two thirds of the neurons of an octopus are in its arms! Are they smart? Yes."
    for sentence in ("Octopus arms", "two thirds of the neurons of an octopus are in its arms", "Are they smart?"):
        assert clean_query(sentence, passage) == (None, "copies_passage"), sentence
    assert clean_query("Octopus arms are smart", passage) == ("Octopus arms are smart", None)
    assert clean_query("Are octopus arms smart?", passage) == ("Are octopus arms smart?", None)


def test_shares_words_counts_consecutive_words_only():
    prompt = "Reply with the claim only, on a single line: no preamble, no quotation marks, no explanation."
    assert shares_words("No preamble. No quotation marks. No explanation.", prompt, 6)
    assert shares_words("No preamble. No quotation marks. No explanation.", prompt, 7)
    assert not shares_words("No preamble. No quotation marks. No explanation.", prompt, 8)
    assert not shares_words("a line with no claim", prompt, 3) and shares_words("a single line", prompt, 3)
    assert shares_words("claim only on a single", prompt, 5) and not shares_words("a single claim only", prompt, 3)


def test_deduper_reports_a_query_already_seen():
    deduper = QueryDeduper(seen=["webb telescope infrared"])
    assert deduper.check("Webb  Telescope infrared.") == "duplicate"
    assert deduper.check("What does JWST see?") is None
    assert deduper.check("what does jwst see") == "duplicate"
    assert deduper.check("What does JWST see in infrared?") is None
    assert normalize_query("  ＪＷＳＴ   Mirrors?! ") == "jwst mirrors"


def test_every_drop_reason_is_listed():
    reasons = {
        clean_query("", PASSAGE)[1],
        clean_query("ab", PASSAGE)[1],
        clean_query("x" * 400, PASSAGE)[1],
        clean_query(PASSAGE, PASSAGE)[1],
        QueryDeduper(["q"]).check("q"),
    }
    assert reasons == set(QUERY_DROPS)
