"""Mining: fusion, round-trip and insertion rules by hand; real BM25 + MiniLM mining on a SciFact slice."""

from __future__ import annotations

import json

import pytest
import yaml
from test_cli import assert_one_line_error, cli

from specialize import encoder as encoder_module
from specialize.config import MineConfig
from specialize.encoder import encode_corpus, load_encoder
from specialize.errors import SpecializeError
from specialize.records import read_corpus
from specialize.retrieval import DenseRetriever, reciprocal_rank_fusion
from specialize.stages.mine import candidate_list, mine, passes_roundtrip, roundtrip_hits
from specialize.stages.prepare import prepare


def test_reciprocal_rank_fusion_by_hand():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "c", "d"]], k=60)
    assert [doc for doc, _ in fused] == ["b", "c", "a", "d"]
    expected = {"a": 1 / 61, "b": 1 / 62 + 1 / 61, "c": 1 / 63 + 1 / 62, "d": 1 / 63}
    assert dict(fused) == pytest.approx(expected, abs=1e-12)
    # Equal scores: the doc met at a better rank (then the earlier retriever) comes first.
    assert [doc for doc, _ in reciprocal_rank_fusion([["x", "y"], ["y", "x"]], k=1)] == ["x", "y"]
    assert [doc for doc, _ in reciprocal_rank_fusion([["x"], ["z", "y"], []], k=0)] == ["x", "z", "y"]


def test_roundtrip_any_and_all():
    rankings = [["s", "a", "b"], ["a", "b", "c", "s"]]
    assert roundtrip_hits(rankings, "s", depth=3) == [True, False]
    assert passes_roundtrip([True, False], "any") and not passes_roundtrip([True, False], "all")
    assert roundtrip_hits(rankings, "s", depth=4) == [True, True]
    assert passes_roundtrip([True, True], "all")
    assert not passes_roundtrip(roundtrip_hits(rankings, "z", depth=4), "any")


def test_source_is_put_in_when_it_falls_below_top_k():
    fused = ["a", "b", "c", "s", "d"]
    assert candidate_list(fused, "s", top_k=4) == (["a", "b", "c", "s"], 4)
    assert candidate_list(fused, "s", top_k=3) == (["a", "b", "s"], 4)  # replaces the last, keeps its fused rank
    assert candidate_list(fused, "a", top_k=10) == (fused, 1)


def test_depth_must_cover_top_k_and_roundtrip():
    with pytest.raises(ValueError, match="depth"):
        MineConfig(top_k=50, depth=40)
    with pytest.raises(ValueError, match="once"):
        MineConfig(retrievers=["bm25", "bm25"])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, scifact_slice, scifact_claims):
    """prepare on the slice, then its test claims as queries (source = first relevant doc), plus two that must drop."""
    work = tmp_path_factory.mktemp("mine")
    prepare(scifact_slice, work, max_passages=20)
    queries = [dict(query) for query in scifact_claims]
    corpus_ids = read_corpus(work / "corpus.jsonl")[0]
    queries.append({"qid": "gone", "text": queries[0]["text"], "type": "claim", "source_id": "no-such-doc", "generator": "t"})
    queries.append({"qid": "noise", "text": "zzyzx qwertyuiop", "type": "keywords", "source_id": corpus_ids[-1], "generator": "t"})
    (work / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    return work


@pytest.fixture(scope="module")
def minilm():
    return load_encoder("bundled:minilm", backend="torch")


def test_real_mining_on_scifact(workdir, monkeypatch):
    config = MineConfig(retrievers=["bm25", "bundled:minilm"], backend="torch")
    counts = mine(workdir, config)
    candidates = [json.loads(line) for line in (workdir / "candidates.jsonl").read_text().splitlines()]
    queries = {q["qid"]: q for q in map(json.loads, (workdir / "queries.jsonl").read_text().splitlines())}

    assert counts["queries"] == 32 and counts["kept"] == len(candidates) >= 27  # most real claims round-trip
    claim, keywords = counts["by_type"]["claim"], counts["by_type"]["keywords"]
    assert counts["dropped_source_missing"] == claim["dropped_source_missing"] == 1
    assert keywords["dropped_roundtrip"] == 1 and keywords["kept"] == 0
    for outcome in ("kept", "dropped_roundtrip", "dropped_source_missing"):
        assert counts[outcome] == claim[outcome] + keywords[outcome]
    assert counts["kept"] + counts["dropped_roundtrip"] + counts["dropped_source_missing"] == counts["queries"]
    assert 0.8 < counts["roundtrip_rate_bm25"] <= 1 and 0.8 < counts["roundtrip_rate_bundled:minilm"] <= 1
    for record in candidates:
        assert set(record) == {"qid", "doc_ids", "source_rank"}
        assert len(record["doc_ids"]) == 30 == len(set(record["doc_ids"]))
        assert queries[record["qid"]]["source_id"] in record["doc_ids"] and record["source_rank"] >= 1
    assert sum(record["source_rank"] == 1 for record in candidates) > len(candidates) / 2

    # Rerun: the corpus embeddings come from the shared cache, only queries are encoded.
    kinds = []
    original = encoder_module.Encoder.encode
    monkeypatch.setattr(encoder_module.Encoder, "encode", lambda self, texts, batch_size, kind: kinds.append(kind) or original(self, texts, batch_size, kind))
    assert mine(workdir, config) == counts and set(kinds) == {"query"}


def test_approximate_indexes_agree_with_flat_on_top1(workdir, minilm):
    ids, texts = read_corpus(workdir / "corpus.jsonl")
    queries = [json.loads(line)["text"] for line in (workdir / "queries.jsonl").read_text().splitlines()]
    embeddings = minilm.encode(queries, 64, kind="query")
    encode_corpus(minilm, ids, texts)  # cached once; each retriever below reads it
    top1 = {kind: DenseRetriever(minilm, ids, texts, kind).search(embeddings, 10)[:, 0] for kind in ("flat", "hnsw", "ivf")}
    assert (top1["hnsw"] == top1["flat"]).mean() >= 0.9
    assert (top1["ivf"] == top1["flat"]).mean() >= 0.9


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        ('{"qid": "q1", "text": "a claim", "type": "claim", "source_id": "d"}\n{"qid": "q2", "text": "b", "type": "claim"}\n',
         "queries.jsonl:2: missing field 'source_id'"),
        ('{"qid": "q1", "text": "", "type": "claim", "source_id": "d"}\n', "queries.jsonl:1: expected a non-empty string in field 'text'"),
        ('{"qid": "q1", "text": "a", "type": "claim", "source_id": ""}\n', "queries.jsonl:1: expected a non-empty string or null in field 'source_id'"),
        ('{"qid": "q1", "text": "a", "type": "claim", "source_id": "d"}\n{"qid": "q1", "text": "b", "type": "claim", "source_id": "d"}\n',
         "queries.jsonl:2: duplicate qid 'q1'"),
        ("\n", "queries.jsonl: no queries"),
    ],
)
def test_bad_queries_file(tmp_path, workdir, lines, fragment):
    (tmp_path / "corpus.jsonl").write_bytes((workdir / "corpus.jsonl").read_bytes())
    (tmp_path / "queries.jsonl").write_text(lines)
    with pytest.raises(SpecializeError, match=fragment):
        mine(tmp_path, MineConfig(retrievers=["bm25"]))
    assert not (tmp_path / "candidates.jsonl").exists()


def test_missing_inputs_name_the_stage_that_makes_them(tmp_path, workdir):
    with pytest.raises(SpecializeError, match="corpus.jsonl: not found; run `specialize prepare` first"):
        mine(tmp_path, MineConfig())
    (tmp_path / "corpus.jsonl").write_bytes((workdir / "corpus.jsonl").read_bytes())
    assert_one_line_error(cli("mine", "--workdir", str(tmp_path)), "queries.jsonl: not found", "specialize generate")


def test_cli_mines_and_skips_when_unchanged(tmp_path, workdir):
    for name in ("corpus.jsonl", "queries.jsonl"):
        (tmp_path / name).write_bytes((workdir / name).read_bytes())
    args = ("mine", "--workdir", str(tmp_path), "--retriever", "bm25", "--top-k", "25", "--set", "mine.roundtrip_depth=10")
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert "done in" in result.stdout and "roundtrip_rate_bm25" in result.stdout
    manifest = json.loads((tmp_path / "stages" / "mine.json").read_text())
    lines = (tmp_path / "candidates.jsonl").read_text().splitlines()
    assert manifest["counts"]["kept"] == len(lines) >= 25 and len(json.loads(lines[0])["doc_ids"]) == 25
    resolved = yaml.safe_load((tmp_path / "config.yaml").read_text())["mine"]
    assert resolved["retrievers"] == ["bm25"] and resolved["roundtrip_depth"] == 10
    again = cli(*args)
    assert again.returncode == 0 and "skipped" in again.stdout
    assert "done in" in cli(*args, "--force").stdout
