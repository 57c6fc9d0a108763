"""Tests for corpus loading, validation, dedup, sampling and the prepare stage."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest

from specialize.artifacts import read_jsonl, write_jsonl
from specialize.datasets import load_corpus, load_qrels, load_queries, relevant_test_ids, resolve_dataset
from specialize.errors import SpecializeError
from specialize.stages.prepare import deduplicate, normalize_for_dedup, prepare, sample_passages

Docs = list[dict[str, str]]


@pytest.fixture(scope="module")
def docs() -> Docs:
    """The first 200 SciFact abstracts, as load_corpus returns them."""
    return list(itertools.islice(load_corpus("demo:scifact"), 200))


def error_of(source: str | Path, **options: object) -> str:
    """The message of the SpecializeError that loading ``source`` raises."""
    with pytest.raises(SpecializeError) as info:
        list(load_corpus(source, **options))
    return str(info.value)


# --- the bundled data set ----------------------------------------------------------------


def test_demo_scifact_sizes() -> None:
    assert sum(1 for _ in load_corpus("demo:scifact")) == 5183
    assert len(load_queries("demo:scifact")) == 1109
    assert len(load_qrels("demo:scifact", "test")) == 300
    assert len(load_qrels(resolve_dataset("demo:scifact"), "train")) == 809


def test_demo_scifact_records() -> None:
    first = next(load_corpus("demo:scifact"))
    assert list(first) == ["_id", "title", "text"]
    assert first["_id"] == "4983"
    assert first["title"].startswith("Microstructural development of human newborn")
    assert load_queries("demo:scifact")["0"] == "0-dimensional biomaterials lack inductive properties."
    assert load_qrels("demo:scifact", "test")["1"] == {"31715818": 1}


# --- formats -----------------------------------------------------------------------------


def write_csv(path: Path, rows: Docs, delimiter: str, fields: tuple[str, str, str]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(fields)
        writer.writerows([doc["_id"], doc["title"], doc["text"]] for doc in rows)


def as_jsonl(tmp: Path, docs: Docs) -> Path:
    write_jsonl(tmp / "c.jsonl", docs)
    return tmp / "c.jsonl"


def as_jsonl_gz(tmp: Path, docs: Docs) -> Path:
    write_jsonl(tmp / "c.jsonl.gz", docs)
    return tmp / "c.jsonl.gz"


def as_json_list(tmp: Path, docs: Docs) -> Path:
    rows = [{"id": int(d["_id"]), "title": d["title"], "text": d["text"]} for d in docs]
    (tmp / "c.json").write_text(json.dumps(rows), encoding="utf-8")
    return tmp / "c.json"


def as_json_mapping(tmp: Path, docs: Docs) -> Path:
    mapping = {d["_id"]: {"title": d["title"], "text": d["text"]} for d in docs}
    (tmp / "c.json").write_text(json.dumps(mapping), encoding="utf-8")
    return tmp / "c.json"


def as_json_wrapped(tmp: Path, docs: Docs) -> Path:
    with gzip.open(tmp / "c.json.gz", "wt", encoding="utf-8") as handle:
        json.dump({"corpus": docs}, handle)
    return tmp / "c.json.gz"


def as_csv(tmp: Path, docs: Docs) -> Path:
    write_csv(tmp / "c.csv", docs, ",", ("id", "title", "text"))
    return tmp / "c.csv"


def as_tsv(tmp: Path, docs: Docs) -> Path:
    write_csv(tmp / "c.tsv", docs, "\t", ("docid", "title", "contents"))
    return tmp / "c.tsv"


def as_parquet(tmp: Path, docs: Docs) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(docs), tmp / "c.parquet", row_group_size=64)
    return tmp / "c.parquet"


def as_markdown_folder(tmp: Path, docs: Docs) -> Path:
    for doc in docs:
        (tmp / f"{doc['_id']}.md").write_text(f"# {doc['title']}\n\n{doc['text']}\n", encoding="utf-8")
    return tmp


def as_hf_dataset(tmp: Path, docs: Docs) -> Path:
    from datasets import Dataset

    Dataset.from_list(docs).save_to_disk(str(tmp / "ds"))
    return tmp / "ds"


def as_hf_dataset_dict(tmp: Path, docs: Docs) -> Path:
    from datasets import Dataset, DatasetDict

    queries = Dataset.from_list([{"_id": "q1", "text": "a query"}])
    DatasetDict({"queries": queries, "corpus": Dataset.from_list(docs)}).save_to_disk(str(tmp / "ds"))
    return tmp / "ds"


def as_beir_folder(tmp: Path, docs: Docs) -> Path:
    write_jsonl(tmp / "beir" / "corpus.jsonl", [{**d, "metadata": {}} for d in docs])
    return tmp / "beir"


WRITERS: list[Callable[[Path, Docs], Path]] = [
    as_jsonl,
    as_jsonl_gz,
    as_json_list,
    as_json_mapping,
    as_json_wrapped,
    as_csv,
    as_tsv,
    as_parquet,
    as_markdown_folder,
    as_hf_dataset,
    as_hf_dataset_dict,
    as_beir_folder,
]


@pytest.mark.parametrize("write", WRITERS, ids=[w.__name__.removeprefix("as_") for w in WRITERS])
def test_every_format_gives_the_same_docs(write: Callable[[Path, Docs], Path], docs: Docs, tmp_path: Path) -> None:
    loaded = list(load_corpus(write(tmp_path, docs)))
    if write is as_markdown_folder:  # files are read in path order, and a document file says which it was
        order = {d["_id"]: i for i, d in enumerate(docs)}
        loaded.sort(key=lambda d: order[d["_id"]])
        assert [(d.pop("source"), d.pop("format")) for d in loaded] == [(f"{d['_id']}.md", "markdown") for d in docs]
    assert loaded == docs


def test_explicit_fields(docs: Docs, tmp_path: Path) -> None:
    rows = [{"key": d["_id"], "heading": d["title"], "body_text": d["text"], "text": "ignored"} for d in docs[:5]]
    write_jsonl(tmp_path / "c.jsonl", rows)
    loaded = list(load_corpus(tmp_path / "c.jsonl", id_field="key", title_field="heading", text_field="body_text"))
    assert loaded == docs[:5]


def test_normalizes_ids_and_whitespace(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "c.jsonl", [{"doc_id": 7, "body": "  some text here \n"}, {"pid": " x ", "passage": "more"}])
    assert list(load_corpus(tmp_path / "c.jsonl")) == [
        {"_id": "7", "title": "", "text": "some text here"},
        {"_id": "x", "title": "", "text": "more"},
    ]


def test_text_folder_ids_and_titles(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("plain text without a heading\nsecond line", encoding="utf-8")
    (tmp_path / "guide.md").write_text("\n# The Guide\nBody of the guide.", encoding="utf-8")
    (tmp_path / ".hidden.md").write_text("# skipped", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n")
    assert list(load_corpus(tmp_path)) == [
        {"_id": "guide", "title": "The Guide", "text": "Body of the guide.", "source": "guide.md", "format": "markdown"},
        {"_id": "sub/notes", "title": "notes", "text": "plain text without a heading\nsecond line", "source": "sub/notes.txt", "format": "text"},
    ]


def test_csv_allows_huge_fields(tmp_path: Path) -> None:
    text = "word " * 100_000
    write_csv(tmp_path / "c.csv", [{"_id": "1", "title": "", "text": text}], ",", ("id", "title", "text"))
    assert len(next(load_corpus(tmp_path / "c.csv"))["text"]) == len(text.strip())


# --- errors, each naming the file and line ------------------------------------------------


GOOD = '{"_id": "1", "text": "first text"}\n{"_id": "2", "text": "second text"}\n'


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"title": "t", "text": "no id here"}', "missing id field"),
        ('{"_id": "3", "title": "no text"}', "missing text field"),
        ('{"_id": "1", "text": "duplicate"}', "duplicate id '1'"),
        ('{"_id": "3", "text": "cut off', "not valid JSON"),
        ('{"_id": "3", "text": 42}', "text field 'text' is int, expected a string"),
        ('["not", "an", "object"]', "expected a JSON object"),
    ],
)
def test_jsonl_errors_name_file_and_line(line: str, expected: str, tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text(GOOD + line + "\n", encoding="utf-8")
    message = error_of(tmp_path / "bad.jsonl")
    assert message.startswith(f"{tmp_path / 'bad.jsonl'}:3: ")
    assert expected in message


def test_non_utf8_bytes(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_bytes(GOOD.encode() + b'{"_id": "3", "text": "caf\xe9"}\n')
    message = error_of(tmp_path / "bad.jsonl")
    assert message.startswith(f"{tmp_path / 'bad.jsonl'}:3: ") and "UTF-8" in message


def test_lone_surrogate_escape_is_bad_encoding(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text(GOOD + '{"_id": "3", "text": "x\\ud800y"}\n', encoding="utf-8")
    message = error_of(tmp_path / "bad.jsonl")
    assert message.startswith(f"{tmp_path / 'bad.jsonl'}:3: text field 'text' is not valid UTF-8")


@pytest.mark.parametrize("name", ["corpus.jsonl", "corpus.csv", "corpus.json"])
def test_binary_file(name: str, tmp_path: Path) -> None:
    (tmp_path / name).write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8\xff\xe0" * 8)
    message = error_of(tmp_path / name)
    assert message.startswith(f"{tmp_path / name}:1: ")


def test_not_gzip(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl.gz").write_text(GOOD, encoding="utf-8")
    assert error_of(tmp_path / "c.jsonl.gz").startswith(f"{tmp_path / 'c.jsonl.gz'}: not a valid gzip file")


def test_binary_file_in_text_folder(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a fine text file", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes(b"line one\nline two\n\xff\xfe\x00binary")
    message = error_of(tmp_path)
    assert message.startswith(f"{tmp_path / 'b.txt'}:3: not valid UTF-8")
    (tmp_path / "b.txt").write_bytes(b"text\x00with NUL")
    assert error_of(tmp_path).startswith(f"{tmp_path / 'b.txt'}: text field 'text' is not valid UTF-8")


def test_csv_errors_name_the_row_line(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text('id,title,text\n1,t,"a text\nover two lines"\n2,t\n', encoding="utf-8")
    assert error_of(path) == f"{path}:4: 2 fields where the header has 3"
    path.write_text("id,title,text\n1,t,fine text\n2,t,x,extra\n", encoding="utf-8")
    assert error_of(path) == f"{path}:3: 4 fields where the header has 3"
    path.write_bytes(b"id,title,text\n1,t,fine text\n2,t,caf\xe9\n")
    assert error_of(path).startswith(f"{path}:3: text field 'text' is not valid UTF-8")


def test_csv_unclosed_quote_stops_instead_of_swallowing_rows(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    good = 'id,text\nd0,"a fine text\nover two lines"\n'
    for tail, where in [
        ('d1,"an unclosed quote\nd2,a row it swallows\nd3,another\n', "(line 6: unexpected end of data)"),
        ('d1,"an unclosed quote\nd2,swallowed\nd3,"closed again"\nd4,fine\n', "(line 6: ',' expected after"),
    ]:
        path.write_text(good + tail, encoding="utf-8")
        for skip_bad in (False, True):  # never a skipped row: the rows it swallowed would go uncounted
            message = error_of(path, skip_bad=skip_bad)
            assert message.startswith(f"{path}:4: a quoted field opened on this line is not closed where it should be")
            assert where in message and "unclosed quote" in message
    path.write_text(good + 'd1,"hello\nd2,x",\nd3,fine text\n', encoding="utf-8")
    assert error_of(path) == f"{path}:4: 3 fields where the header has 2 (the row runs over lines 4-5: an unclosed quote?)"


def test_csv_bad_quote_on_one_line_is_a_counted_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text('id,text\nd1,"he said "hi" here"\nd2,fine text\n', encoding="utf-8")
    assert error_of(path).startswith(f"{path}:2: not a valid row")
    skipped: Counter[str] = Counter()
    assert [doc["_id"] for doc in load_corpus(path, skip_bad=True, skipped=skipped)] == ["d2"]
    assert skipped == {"bad_row": 1}


def test_json_errors_name_the_record(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('[{"_id": "1", "text": "fine text"},\n {"_id": "2", "text": ["a list"]}]', encoding="utf-8")
    assert error_of(path) == f"{path}:2: text field 'text' is list, expected a string"
    path.write_text('[{"_id": "1", "text": "fine text"},\n {"_id": "2" "text": "x"}]', encoding="utf-8")
    assert error_of(path).startswith(f"{path}:2: not valid JSON")


def test_missing_field_lists_candidates(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "c.jsonl", [{"key": "1", "text": "some text"}])
    message = error_of(tmp_path / "c.jsonl")
    assert "missing id field (looked for _id, id, doc_id, docid, pid); record has: key, text" in message
    assert "missing id field 'ident'" in error_of(tmp_path / "c.jsonl", id_field="ident")


def test_parquet_and_dataset_errors_name_the_row(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"_id": "1", "text": "fine text"}, {"_id": "2", "text": None}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    assert error_of(tmp_path / "c.parquet").startswith(f"{tmp_path / 'c.parquet'}:2: missing text field")
    (tmp_path / "fake.parquet").write_text("not parquet", encoding="utf-8")
    assert error_of(tmp_path / "fake.parquet").startswith(f"{tmp_path / 'fake.parquet'}: not a valid Parquet file")


def test_dataset_dict_without_a_corpus_split(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    part = Dataset.from_list([{"_id": "1", "text": "some text"}])
    DatasetDict({"a": part, "b": part}).save_to_disk(str(tmp_path / "ds"))
    assert "none is 'corpus' or 'train': a, b" in error_of(tmp_path / "ds")


def test_unsupported_format(tmp_path: Path) -> None:
    (tmp_path / "notes.xlsx").write_bytes(b"PK")
    message = error_of(tmp_path / "notes.xlsx")
    assert message.startswith(f"{tmp_path / 'notes.xlsx'}: unsupported format .xlsx; supported: ")
    assert ".parquet" in message and ".jsonl" in message


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json", "empty.csv"])
def test_empty_file(name: str, tmp_path: Path) -> None:
    (tmp_path / name).write_text("", encoding="utf-8")
    assert error_of(tmp_path / name) == f"{tmp_path / name}: no documents found"


def test_missing_path_and_unknown_demo(tmp_path: Path) -> None:
    assert error_of(tmp_path / "nowhere.jsonl") == f"{tmp_path / 'nowhere.jsonl'}: no such file or folder"
    assert error_of("demo:nope") == "demo:nope: unknown demo data set; available: scifact"


def test_queries_and_qrels_errors(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "a query"}, {"_id": "q2"}])
    with pytest.raises(SpecializeError, match=r"queries\.jsonl:2: missing text field 'text'"):
        load_queries(tmp_path)
    with pytest.raises(SpecializeError, match=r"no qrels for split 'dev'; available: test, train"):
        load_qrels("demo:scifact", "dev")
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\thigh\n", encoding="utf-8")
    with pytest.raises(SpecializeError, match=r"test\.tsv:2: score 'high' is not an integer"):
        load_qrels(tmp_path, "test")


# --- skip_bad -----------------------------------------------------------------------------


def test_skip_bad_counts_each_reason(tmp_path: Path) -> None:
    lines = [
        b'{"_id": "1", "text": "first text"}',
        b'{"title": "no id", "text": "x"}',
        b'{"_id": "2"}',
        b'{"_id": "3", "text": ""}',
        b'{"_id": "1", "text": "same id again"}',
        b'{"_id": "4", "text": broken',
        b'{"_id": "5", "text": "caf\xe9"}',
        b'{"_id": "6", "text": 6}',
        b'{"_id": "7", "text": "last text"}',
    ]
    (tmp_path / "c.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    skipped: Counter[str] = Counter()
    loaded = list(load_corpus(tmp_path / "c.jsonl", skip_bad=True, skipped=skipped))
    assert [d["_id"] for d in loaded] == ["1", "3", "7"]  # an empty text is no error: prepare drops and counts it
    assert skipped == Counter(missing_id=1, missing_text=1, duplicate_id=1, bad_json=1, bad_encoding=1, bad_text=1)


def test_skip_bad_with_nothing_left(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "c.jsonl", [{"_id": "1"}])
    assert error_of(tmp_path / "c.jsonl", skip_bad=True) == f"{tmp_path / 'c.jsonl'}: no documents found"


# --- beir: downloads (never the network) ---------------------------------------------------


def test_beir_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("SPECIALIZE_CACHE", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    url = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/scifact.zip"
    assert error_of("beir:scifact") == (
        f"beir:scifact: cannot download {url} (no network); download it elsewhere and pass the folder"
    )
    assert not (tmp_path / "datasets" / "scifact").exists()
    assert list((tmp_path / "datasets").iterdir()) == []  # no temporary leftovers


class FakeResponse(io.BytesIO):
    """What urlopen returns, enough for the downloader."""

    headers: ClassVar[dict[str, str]] = {}


def test_beir_download_unzips_once_and_reuses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("tiny/corpus.jsonl", '{"_id": "d1", "title": "", "text": "a tiny corpus"}\n')
        bundle.writestr("tiny/queries.jsonl", '{"_id": "q1", "text": "tiny?"}\n')
        bundle.writestr("tiny/qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    calls: list[str] = []

    def fake_urlopen(url: str, timeout: float) -> FakeResponse:
        calls.append(url)
        return FakeResponse(archive.getvalue())

    monkeypatch.setenv("SPECIALIZE_CACHE", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    assert resolve_dataset("beir:tiny") == tmp_path / "datasets" / "tiny"
    assert [d["_id"] for d in load_corpus("beir:tiny")] == ["d1"]
    assert load_queries("beir:tiny") == {"q1": "tiny?"}
    assert relevant_test_ids("beir:tiny") == {"d1"}
    assert calls == ["https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/tiny.zip"]


# --- dedup --------------------------------------------------------------------------------


def surviving(texts: dict[str, str], min_chars: int = 10) -> tuple[list[str], Counter[str]]:
    counts: Counter[str] = Counter()
    kept = deduplicate([{"_id": i, "title": "", "text": t} for i, t in texts.items()], min_chars, counts)
    return [d["_id"] for d in kept], counts


def test_normalize_for_dedup() -> None:
    assert normalize_for_dedup("  Café DÉJÀ-vu: 12 naïve ﬁles!\n") == "cafe deja vu naive files"
    assert normalize_for_dedup("Ǆ x² ½ 東京 Ωμέγα_v2") == "dz x 東京 ωμεγα v"
    assert normalize_for_dedup("123 -- !!") == ""


def test_exact_duplicates_keep_the_first() -> None:
    kept, counts = surviving(
        {
            "a": "Café au lait, 2 cups!",
            "b": "CAFE AU LAIT -- 3 cups",
            "c": "cafe-au-lait cups.",
            "d": "Another passage entirely",
        }
    )
    assert kept == ["a", "d"]
    assert counts == Counter(duplicate=2, contained=0)


def test_prefix_and_suffix_containment() -> None:
    kept, counts = surviving(
        {
            "prefix": "The quick brown fox jumps",
            "full": "The quick brown fox jumps over the lazy dog.",
            "suffix": "over the lazy dog!",
            "near_miss": "The quick brown fox jumps over the lazy cat",
            "other": "A totally different passage",
            "chain_a": "alpha beta gamma",
            "chain_b": "alpha beta gamma delta",
            "chain_c": "Alpha, beta, gamma, delta, epsilon",
        }
    )
    assert kept == ["full", "near_miss", "other", "chain_c"]
    assert counts == Counter(contained=4)


def test_contained_in_a_later_doc_keeps_the_later_one() -> None:
    kept, _ = surviving({"short": "end of the story", "long": "This is the end of the story", "x": "end of the story"})
    assert kept == ["long"]


def test_short_and_empty_texts() -> None:
    kept, counts = surviving({"tiny": "too short", "symbols": "12345 -- 678 !!", "ok": "long enough text", "none": ""})
    assert kept == ["ok"]
    assert counts == Counter(empty=1, too_short=1, no_content=1, contained=0)
    assert surviving({"none": ""}, min_chars=0) == ([], Counter(empty=1))
    assert surviving({"tiny": "too short"}, min_chars=5)[0] == ["tiny"]


def test_dedup_on_real_docs_keeps_order(docs: Docs) -> None:
    planted = [*docs, {**docs[3], "_id": "copy"}, {**docs[5], "_id": "cut", "text": docs[5]["text"][:300]}]
    counts: Counter[str] = Counter()
    assert deduplicate(planted, counts=counts) == docs
    assert counts == Counter(duplicate=1, contained=1)


# --- sampling -----------------------------------------------------------------------------


def test_sampling_is_deterministic_and_in_corpus_order(docs: Docs) -> None:
    first = sample_passages(docs, 50, 2048, seed=1, exclude_ids=set())
    assert first == sample_passages(docs, 50, 2048, seed=1, exclude_ids=set())
    assert first != sample_passages(docs, 50, 2048, seed=2, exclude_ids=set())
    positions = {d["_id"]: i for i, d in enumerate(docs)}
    assert len(first) == 50
    assert [positions[d["_id"]] for d in first] == sorted(positions[d["_id"]] for d in first)
    assert sample_passages(docs, 1000, 10**6, seed=1, exclude_ids=set()) == docs


def test_sampling_never_picks_test_relevant_scifact_docs() -> None:
    everything = list(load_corpus("demo:scifact"))
    relevant = {doc for judged in load_qrels("demo:scifact", "test").values() for doc, s in judged.items() if s > 0}
    excluded = relevant_test_ids("demo:scifact")
    assert excluded == relevant and len(excluded) == 283
    sample = sample_passages(everything, 2000, 2048, seed=42, exclude_ids=excluded)
    assert len(sample) == 2000 and not {d["_id"] for d in sample} & relevant
    assert len(sample_passages(everything, 10**6, 2048, seed=42, exclude_ids=excluded)) == 5183 - 283


def test_truncation_at_whitespace() -> None:
    def cut(text: str, limit: int) -> str:
        return sample_passages([{"_id": "1", "title": "", "text": text}], 1, limit, 0, set())[0]["text"]

    assert cut("alpha beta gamma", 12) == "alpha beta"
    assert cut("alpha beta gamma", 10) == "alpha beta"
    assert cut("alpha beta  gamma", 11) == "alpha beta"
    assert cut("abcdefghij", 4) == "abcd"
    assert cut("short", 2048) == "short"


def test_extra_qrels_with_and_without_header(tmp_path: Path) -> None:
    (tmp_path / "a.tsv").write_text("q1\td1\t1\nq1\td2\t0\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("q2 0 d3 2\n", encoding="utf-8")
    (tmp_path / "c.tsv").write_text("query-id\tcorpus-id\tscore\nq3\td4\t1\n", encoding="utf-8")
    extra = [tmp_path / "a.tsv", tmp_path / "b.txt", tmp_path / "c.tsv"]
    assert relevant_test_ids(tmp_path, extra) == {"d1", "d3", "d4"}
    corpus_file = resolve_dataset("demo:scifact") / "corpus.jsonl.gz"
    assert relevant_test_ids(corpus_file) == relevant_test_ids("demo:scifact")


# --- prepare ------------------------------------------------------------------------------


def test_prepare_writes_both_files_and_counts_add_up(docs: Docs, tmp_path: Path) -> None:
    source = tmp_path / "src"
    rows = [*docs, {**docs[0], "_id": "dup"}, {"_id": "short", "title": "", "text": "tiny"}, {"_id": "bad"}]
    write_jsonl(source / "corpus.jsonl", rows)
    (source / "qrels").mkdir()
    (source / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q\t{d['_id']}\t1\n" for d in docs[:10]), encoding="utf-8"
    )
    (tmp_path / "extra.tsv").write_text(f"q\t{docs[10]['_id']}\t1\n", encoding="utf-8")
    work = tmp_path / "work"
    extra = [tmp_path / "extra.tsv"]
    counts = prepare(source, work, skip_bad=True, max_passages=100, max_chars=300, exclude_qrels=extra)
    assert counts == {
        "loaded": 202,
        "skipped_missing_text": 1,
        "dropped_empty": 0,
        "dropped_too_short": 1,
        "dropped_no_content": 0,
        "dropped_duplicate": 1,
        "dropped_contained": 0,
        "corpus": 200,
        "excluded_test_relevant": 11,
        "passages": 100,
    }
    assert list(read_jsonl(work / "corpus.jsonl")) == docs
    passages = list(read_jsonl(work / "passages.jsonl"))
    assert len(passages) == 100 and all(len(p["text"]) <= 300 for p in passages)
    assert not {p["_id"] for p in passages} & {d["_id"] for d in docs[:11]}


def test_prepare_drops_and_counts_empty_texts(docs: Docs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A classic collection's document with a title and no abstract is dropped and counted, not a stop."""
    write_jsonl(tmp_path / "c.jsonl", [*docs[:20], {"_id": "e1", "title": "A title alone", "text": ""}, {"_id": "e2", "text": "  "}])
    counts = prepare(tmp_path / "c.jsonl", tmp_path / "work")
    assert (counts["loaded"], counts["dropped_empty"], counts["corpus"]) == (22, 2, 20)
    assert [d["_id"] for d in read_jsonl(tmp_path / "work" / "corpus.jsonl")] == [d["_id"] for d in docs[:20]]
    assert "prepare: 2 documents with an empty text dropped" in capsys.readouterr().err


def test_prepare_without_dedup_keeps_duplicates(docs: Docs, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "c.jsonl", [*docs[:20], {**docs[0], "_id": "dup"}])
    counts = prepare(tmp_path / "c.jsonl", tmp_path / "work", dedup=False)
    assert counts["corpus"] == counts["passages"] == 21
    assert counts["dropped_duplicate"] == 0 and counts["excluded_test_relevant"] == 0


def test_dedup_reports_the_keeper_of_each_dropped_doc() -> None:
    texts = {
        "long": "Vitamin D supplements reduce fracture risk in elderly women over ten years",
        "prefix": "Vitamin D supplements reduce fracture risk",
        "dup_of_prefix": "VITAMIN D supplements, reduce fracture risk!",
        "suffix": "fracture risk in elderly women over ten years",
        "other": "Statins lower LDL cholesterol in most adults",
    }
    merged: dict[str, str] = {}
    kept = deduplicate([{"_id": i, "title": "", "text": t} for i, t in texts.items()], merged_into=merged)
    assert [d["_id"] for d in kept] == ["long", "other"]
    # A duplicate of a contained text points at the final keeper, not at a dropped doc.
    assert merged == {"prefix": "long", "dup_of_prefix": "long", "suffix": "long"}


def test_prepare_never_samples_the_keeper_of_a_test_relevant_duplicate(tmp_path: Path) -> None:
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    docs = [
        {"_id": "rel", "title": "", "text": "Aspirin lowers the risk of a second heart attack"},
        {"_id": "keeper", "title": "", "text": "Aspirin lowers the risk of a second heart attack in adults"},
        {"_id": "free", "title": "", "text": "Exercise improves sleep quality in older adults"},
    ]
    write_jsonl(folder / "corpus.jsonl", docs)
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\trel\t1\n")
    counts = prepare(folder, tmp_path / "work", max_passages=10)
    sampled = [d["_id"] for d in read_jsonl(tmp_path / "work" / "passages.jsonl")]
    assert sampled == ["free"] and counts["dropped_contained"] == 1 and counts["excluded_test_relevant"] == 1
