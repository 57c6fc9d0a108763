"""Model teachers whose weights cannot be had here: T5 rerankers built locally, the LLM judge's plumbing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specialize.config import LabelConfig
from specialize.errors import SpecializeError
from specialize.teachers import LLMJudgeTeacher, judge_messages, load_teacher, parse_teacher, score_pairs

WORDS = "protein folding yeast cells the a of in is true false".split()
PASSAGES = ["protein folding in yeast cells", "the a", "folding of protein is in the cells of yeast"]


def _tiny_t5(path, extra_tokens=("<extra_id_10>",), words=WORDS):
    """A random 1-layer T5 with a whitespace word-level tokenizer, saved as a Hugging Face folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in [*words, "Query:", "Document:", "Relevant:", *extra_tokens]:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", additional_special_tokens=list(extra_tokens)
    ).save_pretrained(path)
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(vocab), d_model=16, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=8,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )
    T5ForConditionalGeneration(config).save_pretrained(path)
    return vocab


def _first_step_scores(teacher, text):
    """The first decoder step's scores through ``generate`` (an independent code path)."""
    batch = teacher.tokenizer([text], return_tensors="pt")
    out = teacher.model.generate(**batch, max_new_tokens=1, do_sample=False, output_scores=True, return_dict_in_generate=True)
    return out.scores[0][0]


@pytest.mark.parametrize("kind", ["monot5", "rankt5"])
def test_t5_rerankers_score_the_first_decoder_step(tmp_path, kind):
    vocab = _tiny_t5(tmp_path / "t5")
    teacher = load_teacher(f"{kind}:{tmp_path / 't5'}", LabelConfig(batch_size=2))
    assert teacher.name == f"{kind}:{tmp_path / 't5'}"
    scores = teacher.score("protein folding", PASSAGES)
    for passage, score in zip(PASSAGES, scores):
        template = "Query: protein folding Document: {} Relevant:" if kind == "monot5" else "Query: protein folding Document: {}"
        logits = _first_step_scores(teacher, template.format(passage))
        if kind == "monot5":
            expected = torch.softmax(logits[[vocab["true"], vocab["false"]]], -1)[0]
            assert 0 < score < 1
        else:
            expected = logits[vocab["<extra_id_10>"]]
        assert score == pytest.approx(float(expected), abs=1e-5)
    assert len(set(np.round(scores, 6))) == 3  # the passages are told apart
    # Batching several queries (sorted longest first) gives each pair its own score.
    items = [("protein folding", PASSAGES), ("yeast", PASSAGES[:1]), ("cells", [])]
    assert teacher.score_many(items) == [pytest.approx(teacher.score(q, p), abs=1e-5) for q, p in items]


def test_t5_rerankers_refuse_a_model_without_their_tokens(tmp_path):
    _tiny_t5(tmp_path / "plain", extra_tokens=(), words=["protein", "true false"])
    with pytest.raises(SpecializeError, match="no <extra_id_10> token"):
        load_teacher(f"rankt5:{tmp_path / 'plain'}")
    with pytest.raises(SpecializeError, match="'true' is not one token"):
        load_teacher(f"monot5:{tmp_path / 'plain'}")
    with pytest.raises(SpecializeError, match="cannot load the monot5 reranker") as info:
        load_teacher(f"monot5:{tmp_path / 'missing'}")
    assert "\n" not in str(info.value)


def test_new_teacher_specs_parse():
    assert str(parse_teacher("monot5:castorini/monot5-base-msmarco")) == "monot5:castorini/monot5-base-msmarco"
    assert str(parse_teacher("ensemble:llm-judge:bundled:qwen-1.5b=2,bm25")) == "ensemble:llm-judge:bundled:qwen-1.5b=2,bm25=1"
    with pytest.raises(SpecializeError, match="llm-judge needs a model, e.g. llm-judge:bundled:qwen-1.5b"):
        parse_teacher("llm-judge:")
    with pytest.raises(SpecializeError, match="did you mean 'rankt5:x'"):
        parse_teacher("rank5:x")


def test_score_pairs_regroups_in_either_order():
    items = [("q1", ["aaaa", "b"]), ("q2", []), ("q3", ["cc"])]
    seen = []

    def score(pairs):
        seen.append(pairs)
        return np.array([len(p) for _, p in pairs], dtype=float)

    assert score_pairs(items, score) == [[4.0, 1.0], [], [2.0]]
    assert [p for _, p in seen[0]] == ["aaaa", "cc", "b"]  # longest first
    assert score_pairs(items, score, longest_first=False) == [[4.0, 1.0], [], [2.0]]
    assert [p for _, p in seen[1]] == ["aaaa", "b", "cc"]  # query order kept


def test_llm_judge_puts_the_query_first_and_keeps_query_order():
    class Recorder:
        name = "fake"

        def __init__(self):
            self.prompts = []

        def yes_no(self, prompts):
            self.prompts.extend(prompts)
            return [float(len(m[1]["content"])) for m in prompts]

    llm = Recorder()
    judge = LLMJudgeTeacher(llm)
    assert judge.name == "llm-judge:fake"
    items = [("what folds proteins?", ["chaperones fold proteins", "x"]), ("yeast", ["yeast cells"])]
    scores = judge.score_many(items)
    users = [m[1]["content"] for m in llm.prompts]
    assert [u.split("\n")[0] for u in users] == ["Query: what folds proteins?"] * 2 + ["Query: yeast"]
    assert scores == [[len(users[0]), len(users[1])], [len(users[2])]]
    first, second = (judge_messages("q", p) for p in ("one passage", "another"))
    assert first[0] == second[0] and first[1]["content"].startswith("Query: q\n\nPassage: ")
