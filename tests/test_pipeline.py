"""`specialize run` / `Pipeline(config).run()` end to end on a SciFact slice with tiny sizes: a kill in
the middle of a stage and the resume end in the same artifacts; the report carries the numbers."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from conftest import TINY_CHAT_TEMPLATE
from test_cli import assert_one_line_error, cli

from specialize.artifacts import read_jsonl
from specialize.config import QUERY_TYPES
from specialize.errors import SpecializeError
from specialize.pipeline import STAGES, Pipeline, stage_range
from specialize.stages.report import funnel


def _overrides(work, corpus):
    return {
        "workdir": str(work), "prepare.corpus": str(corpus), "prepare.max_passages": 10,
        "generate.model": "bundled:gemma-270m", "generate.llm.backend": "llama_cpp", "generate.llm.chat_template": TINY_CHAT_TEMPLATE,
        "generate.llm.context_tokens": 1024, "generate.max_new_tokens": 12, "generate.few_shot": 1, "generate.block": 2,
        "generate.queries_per_passage": 2,  # the option's path through every stage: two queries a passage, a passage per call
        "mine.retrievers": ["bm25", "bundled:minilm"], "mine.backend": "torch", "mine.top_k": 10, "mine.depth": 400, "mine.roundtrip_depth": 400,
        "label.teacher": "ensemble:bm25=1,bi-encoder:bundled:minilm=1", "label.backend": "torch", "label.min_list_size": 10,
        "label.list_size": 6, "label.require_source_first": False,
        "label.drop_below_percentile": 0, "label.dev_fraction": 0.3, "label.audit_queries": 6,
        "train.passages_per_query": 6, "train.batch_size": 2, "train.max_steps": 2, "train.query_max_length": 16,
        "train.passage_max_length": 32, "train.report_to": "none", "train.eval_steps": 1,
        "evaluate.backend": "torch", "evaluate.max_seq_length": 64,
    }


class KilledAfter:
    """The real LLM, killed (as by Ctrl-C) once it has been asked for ``limit`` prompts."""

    def __init__(self, llm, limit):
        self.llm, self.limit, self.name = llm, limit, llm.name
        self.count_tokens = llm.count_tokens

    def sample_until(self, prompts, **kwargs):
        if self.limit < len(prompts):
            raise KeyboardInterrupt
        self.limit -= len(prompts)
        return self.llm.sample_until(prompts, **kwargs)


def test_stage_range_and_errors():
    assert stage_range(None, None) == list(STAGES)
    assert stage_range("mine", "train") == ["mine", "label", "train"]
    with pytest.raises(SpecializeError, match="unknown stage 'lable'"):
        stage_range("lable", None)
    with pytest.raises(SpecializeError, match="--from train comes after --to mine"):
        stage_range("train", "mine")


@pytest.mark.slow  # a kill and a resume, with the kills of test_kills.py
def test_run_end_to_end_with_a_kill_and_a_resume(tmp_path, scifact_slice, gemma_llama_cpp, monkeypatch):
    import specialize.stages.generate.stage as generate_stage

    monkeypatch.setattr(generate_stage, "load_llm", lambda *args, **kwargs: gemma_llama_cpp)
    whole = Pipeline(None, **_overrides(tmp_path / "whole", scifact_slice))
    whole.run(stop="label")

    broken = Pipeline(None, **_overrides(tmp_path / "broken", scifact_slice))
    monkeypatch.setattr(generate_stage, "load_llm", lambda *args, **kwargs: KilledAfter(gemma_llama_cpp, 4))
    with pytest.raises(KeyboardInterrupt):
        broken.run(stop="label")
    assert not (tmp_path / "broken" / "queries.jsonl").exists() and not (tmp_path / "broken" / "stages" / "generate.json").exists()
    monkeypatch.setattr(generate_stage, "load_llm", lambda *args, **kwargs: gemma_llama_cpp)
    manifests = broken.run(stop="label")
    assert manifests["prepare"]["skipped"] and not manifests["generate"]["skipped"]
    assert manifests["generate"]["counts"]["generations_resumed"] == 4
    for name in ("queries.jsonl", "candidates.jsonl", "labels.jsonl", "train.jsonl", "dev.jsonl"):
        assert (tmp_path / "broken" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name

    manifests = broken.run(start="train")
    work = tmp_path / "broken"
    model = work / "models" / "student"
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(model)).encode(["a claim"]).shape == (1, 384)
    results = json.loads((work / "eval" / f"{scifact_slice.name}.json").read_text())
    assert set(results["models"]) == {"bundled:minilm", str(model)}
    md = (work / "report.md").read_text()
    for name, row in results["models"].items():  # a model trained in the work directory is named relative to it
        label = "models/student" if name == str(model) else name
        assert f"| {label} | {100 * row['ndcg@10']:.2f} | {100 * row['recall@100']:.2f} |" in md
    kept = json.loads((work / "stages" / "label.json").read_text())["counts"]["kept"]
    assert re.search(rf"\| all \| \d+ \| \d+ \| \d+ \| {kept} \|", md)
    # The funnel, read from the manifests the run wrote, against the queries the run wrote: its types and totals.
    generated, kept_types = (Counter(row["type"] for row in read_jsonl(work / name)) for name in ("generations.jsonl", "queries.jsonl"))
    types, steps, per_type = funnel(work)
    assert set(types) <= set(QUERY_TYPES) and set(generated) <= set(types) and steps[:2] == ["generated", "after cleaning"]
    assert {kind: per_type[kind][:2] for kind in types} == {kind: [generated[kind], kept_types[kind]] for kind in types}
    assert f"| all | {sum(generated.values())} | {sum(kept_types.values())} |" in md
    assert (work / "report.html").stat().st_size > 10_000 and (work / "audit.json").is_file()
    # Everything done: a second run skips every stage.
    again = Pipeline(None, **_overrides(work, scifact_slice)).run()
    assert all(manifest["skipped"] for manifest in again.values())


def test_cli_run_checks_its_stage_range(tmp_path):
    assert_one_line_error(cli("run", "--workdir", str(tmp_path), "--from", "train", "--to", "mine"), "comes after")
    assert_one_line_error(cli("run", "--workdir", str(tmp_path), "--from", "mine"), "corpus.jsonl: not found")
