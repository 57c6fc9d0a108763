"""Your own queries in place of generation: the reader of every format and its one-line errors, the generate stage
without an LLM, mine and label without a source passage, the report, and `specialize run --queries` end to end."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re

import pytest
import yaml
from test_cli import assert_one_line_error, cli

from specialize.config import GenerateConfig, LabelConfig, load_config
from specialize.datasets import load_qrels, load_queries, load_user_queries
from specialize.errors import SpecializeError
from specialize.pipeline import run_stage
from specialize.stages.generate.stage import generate
from specialize.stages.label.stage import list_filter
from specialize.stages.prepare import prepare
from specialize.stages.report import funnel


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def claims(scifact_slice):
    """The slice's first 12 SciFact test claims, {qid: text}, in qrels order."""
    texts = load_queries(scifact_slice)
    return {qid: texts[qid] for qid in list(load_qrels(scifact_slice, "test"))[:12]}


def _table(claims, header, delimiter):
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([qid, text, *(["claim"] if len(header) == 3 else [])] for qid, text in claims.items())
    return out.getvalue()


# --- the reader: every format -----------------------------------------------------------------


FORMATS = {
    "ids.jsonl": (lambda claims: "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in claims.items()), ""),
    "typed.jsonl": (lambda claims: "".join(json.dumps({"qid": int(q), "query": t, "type": "claim"}) + "\n" for q, t in claims.items()), "claim"),
    "q.csv": (lambda claims: _table(claims, ["id", "text"], ","), ""),
    "q.tsv": (lambda claims: _table(claims, ["qid", "query", "type"], "\t"), "claim"),
}


@pytest.mark.parametrize("name", FORMATS)
def test_each_structured_format_gives_ids_texts_and_types(name, claims, tmp_path):
    write, kind = FORMATS[name]
    path = tmp_path / name
    path.write_text(write(claims))
    assert list(load_user_queries(path)) == [{"_id": qid, "text": text, "type": kind} for qid, text in claims.items()]


def test_a_text_file_is_one_query_per_line_and_ids_name_the_line(claims, tmp_path):
    texts = list(claims.values())[:3]
    path = tmp_path / "q.txt"
    path.write_bytes(("\ufeff" + f"{texts[0]}\r\n\n   \n  {texts[1]}  \n{texts[2]}").encode())  # BOM, CRLF, blank lines, no final newline
    expected = [{"_id": "line-1", "text": texts[0], "type": ""}, {"_id": "line-4", "text": texts[1], "type": ""},
                {"_id": "line-5", "text": texts[2], "type": ""}]
    assert list(load_user_queries(path)) == expected
    packed = tmp_path / "q.txt.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    assert list(load_user_queries(packed)) == expected


# --- the reader: one line per bad file ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("q.txt", b"", "q.txt: no queries found"),
        ("q.txt", b"\n  \n", "q.txt: no queries found"),
        ("q.jsonl", b"", "q.jsonl: no queries found"),
        ("q.csv", b"id,text\n", "q.csv: no queries found"),
        ("q.txt", b"a fine claim\nbad \xff\xfe bytes\n", "q.txt:2: not valid UTF-8 text (binary file?)"),
        ("q.jsonl", b'{"id": "1", "text": "a fine claim"}\n{"id": "2", "text": "bad \xff"}\n', "q.jsonl:2: not valid UTF-8 (invalid start byte at byte 25)"),
        ("q.csv", b"id,text\n1,bad \xff bytes\n", "q.csv:2: text field 'text' is not valid UTF-8 text (binary data?)"),
        ("q.jsonl", b'{"id": "1", "text": "a claim"}\n{"id": "2", "title": "no text"}\n',
         "q.jsonl:2: missing text field (looked for text, query); record has: id, title"),
        ("q.jsonl", b'{"id": "1", "text": "   "}\n', "q.jsonl:1: empty text in field 'text' (id '1')"),
        ("q.tsv", b"qid\tquery\n1\ta claim\n2\t\n", "q.tsv:3: empty text in field 'query' (id '2')"),
        ("q.jsonl", b'{"text": "a claim"}\n', "q.jsonl:1: missing id field (looked for _id, id, qid); record has: text"),
        ("q.jsonl", b'{"id": "1", "text": "a claim"}\n{"id": 1, "text": "another"}\n', "q.jsonl:2: duplicate id '1'"),
        ("q.csv", b"id,text\n7,a claim\n8,another\n7,a third\n", "q.csv:4: duplicate id '7'"),
        ("q.csv", b"id,question\n1,why is the sky blue?\n", "q.csv:2: missing text field (looked for text, query); record has: id, question"),
        ("q.jsonl", b'{"id": "1", "text": "a claim", "type": 3}\n', "q.jsonl:1: type field 'type' is int, expected a string"),
        ("q.docx", b"a claim\n", "q.docx: unsupported format .docx; supported: .jsonl, .csv, .tsv (id and text fields), .txt (one query per line), "
         "each optionally .gz; .json, .parquet"),
    ],
    ids=["empty-txt", "blank-txt", "empty-jsonl", "header-only-csv", "encoding-txt", "encoding-jsonl", "encoding-csv", "no-text",
         "empty-text", "empty-cell", "no-id", "duplicate-jsonl", "duplicate-csv", "csv-without-text-column", "bad-type", "unsupported"],
)
def test_bad_files_are_one_line_naming_the_file_and_line(name, content, message, tmp_path):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SpecializeError) as info:
        list(load_user_queries(path))
    assert str(info.value) == f"{tmp_path}/{message}"


def test_a_missing_file(tmp_path):
    with pytest.raises(SpecializeError, match=r"nope\.tsv: queries file not found"):
        load_user_queries(tmp_path / "nope.tsv")


# --- the generate stage without an LLM --------------------------------------------------------


def test_generate_writes_the_files_queries_without_a_source_and_nothing_half_written(claims, tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"id": qid, "text": text, **({"type": "claim"} if i % 2 else {})} for i, (qid, text) in enumerate(claims.items())]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    work = tmp_path / "work"
    counts = generate(work, GenerateConfig(queries=str(path), model="/no/such/model.gguf"))  # a model would fail to load
    queries = _lines(work / "queries.jsonl")
    assert queries == [{"qid": row["id"], "text": row["text"], "type": row.get("type", "user"), "source_id": None, "generator": str(path)} for row in rows]
    assert counts == {"user_queries": 12, "kept": 12, "by_type": {"claim": {"kept": 6}, "user": {"kept": 6}}}
    assert not (work / "generations.jsonl").exists()

    before = (work / "queries.jsonl").read_bytes()
    path.write_text(path.read_text() + '{"id": "extra", "text": ""}\n')
    with pytest.raises(SpecializeError, match=r"mine\.jsonl:13: empty text in field 'text' \(id 'extra'\)"):
        generate(work, GenerateConfig(queries=str(path)))
    assert (work / "queries.jsonl").read_bytes() == before and not list(work.glob(".queries.jsonl.*"))


def test_the_file_is_the_stage_input_editing_it_reruns_generate_and_mine(claims, scifact_slice, tmp_path):
    work, path = tmp_path / "work", tmp_path / "claims.txt"
    prepare(scifact_slice, work, max_passages=5)
    path.write_text("\n".join(claims.values()) + "\n")
    overrides = {"workdir": str(work), "generate.queries": str(path), "mine.retrievers": ["bm25"], "mine.top_k": 8}
    cfg = load_config(None, overrides)
    assert [run_stage(cfg, stage)["skipped"] for stage in ("generate", "mine")] == [False, False]
    mined = json.loads((work / "stages" / "mine.json").read_text())["counts"]
    assert mined["kept"] == mined["kept_no_source"] == mined["by_type"]["user"]["kept"] == 12 and mined["dropped_roundtrip"] == 0
    assert not any(key.startswith("roundtrip_rate") for key in mined)  # no query had a source to find
    for record in _lines(work / "candidates.jsonl"):
        assert record["source_rank"] is None and len(record["doc_ids"]) == 8 == len(set(record["doc_ids"]))

    assert [run_stage(cfg, stage)["skipped"] for stage in ("generate", "mine")] == [True, True]
    llm_changed = load_config(None, {**overrides, "generate.model": "bundled:qwen-1.5b", "generate.types": ["claim"]})
    assert run_stage(llm_changed, "generate")["skipped"]  # the LLM settings do not matter
    path.write_text("\n".join(list(claims.values())[:5]) + "\n")
    assert [run_stage(cfg, stage)["skipped"] for stage in ("generate", "mine")] == [False, False]
    assert len(_lines(work / "queries.jsonl")) == len(_lines(work / "candidates.jsonl")) == 5


# --- label and the report ---------------------------------------------------------------------


def test_require_source_first_steps_aside_without_a_source_and_other_filters_apply():
    config = LabelConfig(min_list_size=3)
    assert list_filter(["a", "b", "c"], [0.1, 0.9, 0.5], "a", config) == "source_not_first"
    assert list_filter(["a", "b", "c"], [0.1, 0.9, 0.5], None, config) is None
    assert list_filter(["a", "b"], [0.1, 0.9], None, config) == "short_list"


def test_the_funnel_of_user_queries(tmp_path):
    from specialize.records import Manifest
    from specialize.workdir import Workdir

    work = Workdir(tmp_path)
    for stage, counts in {"generate": {"user_queries": 9, "kept": 9, "by_type": {"claim": {"kept": 4}, "user": {"kept": 5}}},
                          "mine": {"by_type": {"claim": {"kept": 4}, "user": {"kept": 5}}},
                          "label": {"by_type": {"claim": {"kept": 3, "train": 2}, "user": {"kept": 4, "train": 3}}}}.items():
        Manifest(stage=stage, version="test", config_hash="0", inputs={}, outputs={}, counts=counts, seconds=1.0,
                 finished_at="2026-12-03T10:00:00+0000").write(work.manifest_path(stage))
    assert funnel(tmp_path) == (["claim", "user"], ["from your queries file", "mined (no round trip)", "after teacher filters", "train"],
                                {"claim": [4, 4, 3, 2], "user": [5, 5, 4, 3]})


# --- the command line, end to end -------------------------------------------------------------


def test_cli_generate_takes_queries_and_errors_are_one_line(claims, tmp_path):
    path = tmp_path / "claims.tsv"
    path.write_text(_table(claims, ["id", "text"], "\t"))
    args = ("generate", "-w", str(tmp_path / "work"), "--queries", str(path), "--model", "/no/such/model.gguf")
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert "user_queries 12" in result.stdout and re.search(r"kept +12 +12", result.stdout)  # totals, then the types table
    assert yaml.safe_load((tmp_path / "work" / "config.yaml").read_text())["generate"]["queries"] == str(path)
    assert "skipped" in cli(*args).stdout
    assert_one_line_error(cli("generate", "-w", str(tmp_path / "w2"), "--queries", str(tmp_path / "nope.txt")), "nope.txt: queries file not found")
    (tmp_path / "bad.csv").write_text("id,question\n1,why?\n")
    assert_one_line_error(cli("generate", "-w", str(tmp_path / "w2"), "--queries", str(tmp_path / "bad.csv")), "bad.csv:2: missing text field")
    assert not (tmp_path / "w2" / "queries.jsonl").exists()


@pytest.fixture(scope="module")
def user_run(tmp_path_factory, scifact_slice, claims):
    """`specialize run --queries claims.tsv` on the slice: no LLM (its model does not exist), tiny mining, labels and training."""
    folder = tmp_path_factory.mktemp("user_run")
    queries = folder / "claims.tsv"
    queries.write_text(_table(claims, ["qid", "query"], "\t"))
    config = {
        "workdir": str(folder / "work"),
        "prepare": {"corpus": str(scifact_slice), "max_passages": 5},
        "generate": {"model": "/no/such/model.gguf"},
        "mine": {"retrievers": ["bm25", "bundled:minilm"], "backend": "torch", "top_k": 10},
        "label": {"backend": "torch", "min_list_size": 10, "list_size": 6, "dev_fraction": 0.3, "audit_queries": 6},
        "train": {"passages_per_query": 6, "batch_size": 2, "max_steps": 2, "eval_steps": 1, "logging_steps": 1, "query_max_length": 16,
                  "passage_max_length": 32, "warmup_epochs": 0, "report_to": "none"},
        "evaluate": {"backend": "torch", "max_seq_length": 64},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    result = cli("run", str(folder / "config.yaml"), "--queries", str(queries))
    assert result.returncode == 0, result.stderr
    return folder / "work", result


def test_run_with_your_own_queries_end_to_end(user_run, claims, scifact_slice):
    work, result = user_run
    assert [(q["qid"], q["text"], q["type"], q["source_id"]) for q in _lines(work / "queries.jsonl")] == [
        (qid, text, "user", None) for qid, text in claims.items()]
    assert not (work / "generations.jsonl").exists()

    mined = json.loads((work / "stages" / "mine.json").read_text())["counts"]
    candidates = _lines(work / "candidates.jsonl")
    assert mined["kept"] == mined["kept_no_source"] == len(candidates) == 12 and mined["dropped_roundtrip"] == 0
    assert all(record["source_rank"] is None and len(record["doc_ids"]) == 10 for record in candidates)

    labelled = json.loads((work / "stages" / "label.json").read_text())["counts"]
    rows = _lines(work / "train.jsonl") + _lines(work / "dev.jsonl")
    assert labelled["labelled"] == labelled["labelled_no_source"] == 12
    assert yaml.safe_load((work / "config.yaml").read_text())["label"]["require_source_first"] is True  # the default, and yet:
    assert labelled["dropped_source_not_first"] == 0
    assert labelled["kept"] == len(rows) == 12 - labelled["dropped_low_top_score"] - labelled["dropped_short_list"] >= 6
    assert {row["type"] for row in rows} == {"user"} and all(len(row["doc_ids"]) == 6 for row in rows)
    assert json.loads((work / "audit.json").read_text())["synthetic"] is None  # no source passage to audit against
    # Nothing to choose a teacher on (no source, only test qrels): the default fusion, unmeasured, and the gate decides.
    selection = json.loads((work / "teacher.json").read_text())
    assert selection["headroom"] is None and selection["candidates"] == [] and "not measured" in selection["reason"]
    assert labelled["teacher"] == selection["chosen"] == "ensemble:bm25=1,bi-encoder:bundled:minilm=1" and "teacher_headroom" not in labelled
    assert json.loads((work / "train.json").read_text())["gate"]["queries"] > 0  # trained, not stopped

    model = work / "models" / "student"
    assert (model / "modules.json").is_file() and (model / "README.md").is_file()
    results = json.loads((work / "eval" / f"{scifact_slice.name}.json").read_text())
    assert set(results["models"]) == {"bundled:minilm", str(model)} and results["queries"] == 30

    report = (work / "report.md").read_text()
    assert "12 queries came from your queries file" in report and "stepped aside" in report
    # The run ends, and the report starts, with the result against the base and the publish decision.
    summary = json.loads((work / "train.json").read_text())
    base = f"nDCG@10 {100 * results['models']['bundled:minilm']['ndcg@10']:.2f}"
    first = report.split("\n## ")[1]
    assert first.startswith("Result") and base in first and summary["verdict"] in first
    end = result.stdout[result.stdout.index("result"):]
    assert base in end and summary["verdict"] in end and f"SentenceTransformer({str(model)!r})" in end
    assert "model.encode_query" in end and "--set prepare.max_passages=1000" in end and "report.html" in end
    # Piped, not a terminal: whole lines only (no bar redrawn with \r, no colour codes), the trainer's steps included.
    assert not re.search(r"\r|\x1b\[", result.stdout + result.stderr) and "{'loss'" not in result.stdout + result.stderr
    assert re.search(r"^training: 2/2 steps · [\d.]+ steps/s · \d+:\d\d:\d\d$", result.stderr, re.M)
    assert "| type | from your queries file | mined (no round trip) | after teacher filters | train |" in report
    assert f"| user | 12 | 12 | {labelled['kept']} | {labelled['train']} |" in report
