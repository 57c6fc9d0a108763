"""Datasets in: the corpus, query and qrels readers of every input format, BEIR folders and downloads, test sets.

Every loader yields documents normalized to the BEIR corpus shape ``{"_id", "title", "text"}``
(and ``load_user_queries`` a user's own queries, ``{"_id", "text", "type"}``, through the same readers).
A bad record raises an error naming its file and line (or record number), or is skipped and
counted when asked to. Cleaning, deduplication and sampling are the prepare stage's (``stages/prepare.py``).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import http.client
import json
import os
import re
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

from specialize.artifacts import iter_jsonl
from specialize.documents import DOCUMENT_SUFFIXES, BadDocument, detect_format, read_document
from specialize.errors import SpecializeError, located
from specialize.metrics import Qrels
from specialize.models import cache_dir
from specialize.progress import progress_bar, stderr

Doc = dict[str, str]
Record = tuple[Path, int | None, dict[str, Any]]
Reject = Callable[[SpecializeError, str], None]

ID_FIELDS = ("_id", "id", "doc_id", "docid", "pid")
TEXT_FIELDS = ("text", "contents", "content", "body", "passage")
TITLE_FIELDS = ("title",)
QUERY_ID_FIELDS = ("_id", "id", "qid")
QUERY_TEXT_FIELDS = ("text", "query")

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"
_DEMO_DATA = Path(__file__).parent / "data"
_BATCH_ROWS = 10_000
_PROGRESS_EVERY = 1_000
_DOWNLOAD_CHUNK = 1 << 20
_SUPPORTED = (
    "a BEIR folder (corpus.jsonl[.gz]), .jsonl, .json, .csv, .tsv (each optionally .gz), .parquet, "
    "a folder of document files (.pdf, .docx, .html, .md, .txt) or one, a Hugging Face datasets folder (save_to_disk)"
)


# --- data set specs -----------------------------------------------------------------------


def demo_sets() -> list[str]:
    """Names of the data sets bundled with the package (``demo:<name>``)."""
    return sorted(p.name for p in _DEMO_DATA.iterdir() if _beir_file(p, "corpus"))


def resolve_dataset(spec: str) -> Path:
    """The local folder or file for ``demo:<name>``, ``beir:<name>`` (downloaded once) or a path."""
    if spec.startswith("demo:"):
        name = spec.removeprefix("demo:")
        folder = _DEMO_DATA / name
        if not name or "/" in name or not _beir_file(folder, "corpus"):
            raise SpecializeError(f"{spec}: unknown demo data set; available: {', '.join(demo_sets())}")
        return folder
    if spec.startswith("beir:"):
        return _download_beir(spec.removeprefix("beir:"))
    path = Path(spec)
    if not path.exists():
        raise SpecializeError(f"{spec}: no such file or folder")
    return path


def _download_beir(name: str) -> Path:
    """Download and unzip a BEIR data set into the cache once; later calls reuse it."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise SpecializeError(f"beir:{name}: not a BEIR data set name")
    target = cache_dir() / "datasets" / name
    if target.is_dir():
        return target
    url = f"{BEIR_URL}/{name}.zip"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=target.parent) as tmp:
        archive = Path(tmp) / f"{name}.zip"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with progress_bar(f"downloading {name}.zip", total, unit="bytes", transient=True) as advance:
                    while chunk := response.read(_DOWNLOAD_CHUNK):
                        out.write(chunk)
                        advance(len(chunk))
        except urllib.error.HTTPError as exc:
            raise _download_error(name, url, f"HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            raise _download_error(name, url, str(getattr(exc, "reason", exc))) from None
        unpacked = Path(tmp) / "unpacked"
        try:
            with zipfile.ZipFile(archive) as bundle:
                bundle.extractall(unpacked)
        except zipfile.BadZipFile as exc:
            raise _download_error(name, url, f"not a zip archive: {exc}") from None
        folder = unpacked / name if (unpacked / name).is_dir() else unpacked
        with contextlib.suppress(OSError):  # another process may have finished first
            os.replace(folder, target)
    if not target.is_dir():
        raise _download_error(name, url, f"could not create {target}")
    return target


def _download_error(name: str, url: str, reason: str) -> SpecializeError:
    """The one-line error for a BEIR download that failed."""
    return SpecializeError(f"beir:{name}: cannot download {url} ({reason}); download it elsewhere and pass the folder")


def is_beir_source(spec: str) -> bool:
    """Whether a corpus spec names a BEIR data set (``demo:``, ``beir:`` or a folder with corpus.jsonl), without downloading it."""
    return spec.startswith(("demo:", "beir:")) or (Path(spec).is_dir() and _beir_file(Path(spec), "corpus") is not None)


def _beir_file(folder: Path, stem: str) -> Path | None:
    """``<folder>/<stem>.jsonl`` or ``.jsonl.gz`` when the folder has one."""
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


# --- validation ---------------------------------------------------------------------------


class _Invalid(Exception):
    """A record that cannot become a document: a short reason key and a message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class _Checker:
    """Turns raw records into documents: picks the fields (the first of each list present), checks them, rejects duplicate ids."""

    def __init__(self, id_fields: Sequence[str], title_fields: Sequence[str], text_fields: Sequence[str], empty_text: bool = False) -> None:
        """``empty_text``: a record may have an empty text (a document: prepare drops and counts it); else it is invalid."""
        self.empty_text = empty_text
        self.id_fields = id_fields
        self.text_fields = text_fields
        self.title_fields = title_fields
        self.seen: set[str] = set()

    def parse(self, record: dict[str, Any]) -> Doc:
        """The document for a record, or :class:`_Invalid`."""
        id_key = _field(record, self.id_fields, "id")
        text_key = _field(record, self.text_fields, "text")
        raw_id = record[id_key]
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
            raise _Invalid("bad_id", f"id field {id_key!r} is {type(raw_id).__name__}, expected a string or integer")
        doc_id = _string(str(raw_id), id_key, "id")
        if not doc_id:
            raise _Invalid("empty_id", f"empty id in field {id_key!r}")
        text = _string(record[text_key], text_key, "text")
        if not text and not self.empty_text:
            raise _Invalid("empty_text", f"empty text in field {text_key!r} (id {doc_id!r})")
        title_key = next((key for key in self.title_fields if record.get(key) is not None), None)
        title = _string(record[title_key], title_key, "title") if title_key else ""
        if doc_id in self.seen:
            raise _Invalid("duplicate_id", f"duplicate id {doc_id!r}")
        self.seen.add(doc_id)
        return {"_id": doc_id, "title": title, "text": text}


def _field(record: dict[str, Any], candidates: Sequence[str], kind: str) -> str:
    """The first of ``candidates`` that the record has (not null), or :class:`_Invalid`."""
    for key in candidates:
        if record.get(key) is not None:
            return key
    wanted = f"field {candidates[0]!r}" if len(candidates) == 1 else f"field (looked for {', '.join(candidates)})"
    present = ", ".join(list(map(str, record))[:10]) or "none"
    raise _Invalid(f"missing_{kind}", f"missing {kind} {wanted}; record has: {present}")


def _is_text(value: str) -> bool:
    """Whether a decoded string has neither undecodable bytes nor NULs."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def _string(value: Any, key: str, kind: str) -> str:
    """A field's value stripped, when it is a well-formed string; else :class:`_Invalid`."""
    if not isinstance(value, str):
        raise _Invalid(f"bad_{kind}", f"{kind} field {key!r} is {type(value).__name__}, expected a string")
    if not _is_text(value):
        raise _Invalid("bad_encoding", f"{kind} field {key!r} is not valid UTF-8 text (binary data?)")
    return value.strip()


# --- readers: each yields (file, line or record number, raw record) -----------------------


def _open_text(path: Path) -> IO[str]:
    """A file as text (decompressed when it ends in ``.gz``); bad bytes become lone surrogates.

    Records holding them are then rejected one by one (see :func:`_is_text`).
    """
    options: dict[str, Any] = {"encoding": "utf-8-sig", "errors": "surrogateescape", "newline": ""}
    return gzip.open(path, "rt", **options) if path.suffix == ".gz" else open(path, **options)


def _jsonl_records(path: Path, reject: Reject) -> Iterator[Record]:
    """One record per line of a .jsonl[.gz] file."""

    def on_error(error: SpecializeError) -> None:
        # iter_jsonl words its encoding errors "not valid UTF-8"; every other one is bad JSON.
        reject(error, "bad_encoding" if "UTF-8" in str(error) else "bad_json")

    for number, record in iter_jsonl(path, on_error):
        yield path, number, record


def _json_records(path: Path, reject: Reject) -> Iterator[Record]:
    """The objects of a .json file: a list, ``{"data"|"corpus": [...]}``, or an ``{id: {...}}`` mapping."""
    with _open_text(path) as handle:
        text = handle.read()
    if not text.strip():
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise located(path, exc.lineno, f"not valid JSON ({exc.msg}, column {exc.colno})") from None
    if isinstance(data, dict):
        wrapped = next((data[key] for key in ("data", "corpus") if isinstance(data.get(key), list)), None)
        if wrapped is None:
            data = [{"_id": key, **value} if isinstance(value, dict) else value for key, value in data.items()]
        else:
            data = wrapped
    if not isinstance(data, list):
        raise located(path, None, f"expected a list or an object of documents, got {type(data).__name__}")
    for number, record in enumerate(data, start=1):
        if isinstance(record, dict):
            yield path, number, record
        else:
            reject(located(path, number, f"expected a JSON object, got {type(record).__name__}"), "bad_json")


def _csv_records(path: Path, reject: Reject) -> Iterator[Record]:
    """The rows of a .csv/.tsv[.gz] file with a header row; numbers are the lines rows start on.

    Quoting is strict: a quoted field that is not closed where it should be stops the load when it runs
    over several lines, since the rows after it would be swallowed into it and lost uncounted.
    """
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    delimiter = "\t" if path.name.lower().removesuffix(".gz").endswith(".tsv") else ","
    with _open_text(path) as handle:
        reader = csv.reader(handle, delimiter=delimiter, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise located(path, 1, f"not a valid header row ({exc})") from None
        if any(not _is_text(name) for name in header):
            raise located(path, 1, "header row is not valid UTF-8 text (binary file?)")
        header = [name.strip() for name in header]
        end = reader.line_num
        while True:
            start = end + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                if reader.line_num > start:
                    raise located(
                        path, start, f"a quoted field opened on this line is not closed where it should be (line {reader.line_num}: {exc}): "
                        "an unclosed quote would swallow the rows after it",
                    ) from None
                reject(located(path, start, f"not a valid row ({exc}; a quote inside a quoted field is written twice)"), "bad_row")
                end = reader.line_num
                continue
            end = reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                spans = f" (the row runs over lines {start}-{end}: an unclosed quote?)" if end > start else ""
                reject(located(path, start, f"{len(row)} fields where the header has {len(header)}{spans}"), "bad_row")
                continue
            yield path, start, dict(zip(header, row, strict=True))


def _parquet_records(path: Path, reject: Reject) -> Iterator[Record]:
    """The rows of a Parquet file, read in record batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise located(path, None, f"not a valid Parquet file ({exc})") from None
    number = 0
    for batch in table.iter_batches(batch_size=_BATCH_ROWS):
        for record in batch.to_pylist():
            number += 1
            yield path, number, record


def _line_records(path: Path, reject: Reject) -> Iterator[Record]:
    """One record per non-blank line of a .txt[.gz] file, its id ``line-<n>`` (n: the 1-based line number)."""
    with _open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not _is_text(line):
                reject(located(path, number, "not valid UTF-8 text (binary file?)"), "bad_encoding")
            elif line.strip():
                yield path, number, {"_id": f"line-{number}", "text": line}


def _is_hf_dataset(folder: Path) -> bool:
    """Whether a folder holds a Hugging Face dataset written by ``save_to_disk``."""
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "dataset_info.json").is_file() and (folder / "state.json").is_file()
    )


def _hf_records(folder: Path, reject: Reject) -> Iterator[Record]:
    """The rows of a saved dataset; of a DatasetDict, split 'corpus', else 'train', else the only one."""
    from datasets import DatasetDict, load_from_disk

    data = load_from_disk(str(folder))
    if isinstance(data, DatasetDict):
        splits = list(data)
        split = next((name for name in ("corpus", "train") if name in data), splits[0] if len(splits) == 1 else None)
        if split is None:
            raise located(folder, None, f"several splits and none is 'corpus' or 'train': {', '.join(splits)}")
        data = data[split]
    number = 0
    for table in data.with_format("arrow").iter(batch_size=_BATCH_ROWS):
        for record in table.to_pylist():
            number += 1
            yield folder, number, record


def document_files(path: Path) -> list[Path] | None:
    """The document files a corpus path stands for (a folder of them, or one), or None when it is not such a source.

    A folder's files are its PDF, Word, HTML, Markdown and text files, hidden ones aside, in path order.
    """
    if path.is_dir():
        if _beir_file(path, "corpus") is not None or _is_hf_dataset(path):
            return None
        return sorted(
            file for file in path.rglob("*")
            if file.suffix.lower() in DOCUMENT_SUFFIXES and file.is_file() and not any(part.startswith(".") for part in file.relative_to(path).parts)
        )
    return [path] if path.suffix.lower() in DOCUMENT_SUFFIXES else None


def _document_records(root: Path, files: list[Path], reject: Reject) -> Iterator[Record]:
    """One record per document file: id = its path under ``root`` without the suffix, ``source`` = with it, and its ``format``."""
    for file in files:
        relative = file.relative_to(root)
        try:
            kind = detect_format(file)
            if kind in ("pdf", "docx", "html"):
                document = read_document(file, kind)
                title, text = document.title, document.text
            else:
                raw = file.read_bytes()
                try:
                    content = raw.decode("utf-8-sig")
                except UnicodeDecodeError as exc:
                    line = raw.count(b"\n", 0, exc.start) + 1
                    reject(located(file, line, f"not valid UTF-8 ({exc.reason} at byte {exc.start})"), "bad_encoding")
                    continue
                title, text = _split_heading(content, file.stem)
        except BadDocument as bad:
            reject(located(file, None, bad.message), bad.reason)
            continue
        yield file, None, {"_id": relative.with_suffix("").as_posix(), "title": title, "text": text, "source": relative.as_posix(), "format": kind}


def _split_heading(content: str, stem: str) -> tuple[str, str]:
    """(title, text): a leading markdown '# ' heading is the title, else the file stem is."""
    first, _, rest = content.lstrip().partition("\n")
    if first.startswith("# "):
        return first[2:], rest
    return stem, content


Reader = Callable[[Path, Reject], Iterator[Record]]
_FILE_READERS: dict[str, Reader] = {
    ".jsonl": _jsonl_records,
    ".ndjson": _jsonl_records,
    ".json": _json_records,
    ".csv": _csv_records,
    ".tsv": _csv_records,
    ".parquet": _parquet_records,
}
_QUERY_READERS: dict[str, Reader] = {**_FILE_READERS, ".txt": _line_records}
_QUERY_SUPPORTED = ".jsonl, .csv, .tsv (id and text fields), .txt (one query per line), each optionally .gz; .json, .parquet"


def _file_reader(path: Path, readers: Mapping[str, Reader], supported: str) -> Reader:
    """The reader of ``readers`` that a file's suffix (``.gz`` aside) calls for; an unsupported one is an error."""
    name = path.name.lower()
    suffix = Path(name.removesuffix(".gz")).suffix
    reader = readers.get(suffix)
    if reader is None or (name.endswith(".gz") and suffix == ".parquet"):
        raise SpecializeError(f"{path}: unsupported format {suffix or '(no suffix)'}; supported: {supported}")
    return reader


def _records(path: Path, reject: Reject) -> Iterator[Record]:
    """The raw records of a corpus, read by the reader its path calls for."""
    files = document_files(path)
    if files is not None:
        return _document_records(path if path.is_dir() else path.parent, files, reject)
    if path.is_dir():
        corpus = _beir_file(path, "corpus")
        return _jsonl_records(corpus, reject) if corpus is not None else _hf_records(path, reject)
    return _file_reader(path, _FILE_READERS, _SUPPORTED)(path, reject)


# --- loading ------------------------------------------------------------------------------


def load_corpus(
    source: str | Path,
    *,
    id_field: str | None = None,
    title_field: str | None = None,
    text_field: str | None = None,
    skip_bad: bool = False,
    skipped: Counter[str] | None = None,
) -> Iterator[Doc]:
    """Stream the normalized documents of a corpus in any supported format (see module doc).

    Fields are detected when not given: id from ``ID_FIELDS``, text from ``TEXT_FIELDS``,
    title from ``TITLE_FIELDS`` (else empty). A bad record raises an error naming the file
    and the line (JSONL, CSV/TSV) or 1-based record number (JSON, Parquet, datasets); with
    ``skip_bad`` it is skipped and counted in ``skipped`` under a short reason key instead.
    The source is resolved and its format checked at once; records are read lazily.
    """
    path = resolve_dataset(str(source))
    counts = Counter() if skipped is None else skipped

    def reject(error: SpecializeError, reason: str) -> None:
        if not skip_bad:
            raise error
        counts[reason] += 1

    checker = _Checker(
        (id_field,) if id_field else ID_FIELDS, (title_field,) if title_field else TITLE_FIELDS, (text_field,) if text_field else TEXT_FIELDS,
        empty_text=True,
    )
    if document_files(path) is None:
        return _docs(path, _records(path, reject), checker.parse, reject)
    return _docs(path, _records(path, reject), lambda record: {**checker.parse(record), "source": record["source"], "format": record["format"]}, reject)


def _docs(path: Path, records: Iterator[Record], parse: Callable[[dict[str, Any]], Doc], reject: Reject, noun: str = "documents") -> Iterator[Doc]:
    """Check each raw record with ``parse``, showing progress; a file without any (``noun``) is an error."""
    count = 0
    with progress_bar(f"loading {path.name}", unit=noun, transient=True) as advance:
        try:
            for file, number, record in records:
                try:
                    doc = parse(record)
                except _Invalid as bad:
                    reject(located(file, number, bad.message), bad.reason)
                    continue
                count += 1
                if count % _PROGRESS_EVERY == 0:
                    advance(_PROGRESS_EVERY)
                yield doc
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise SpecializeError(f"{path}: not a valid gzip file ({exc})") from None
    if count == 0:
        raise SpecializeError(f"{path}: no {noun} found")


def _stop(error: SpecializeError, reason: str) -> NoReturn:
    """A reject that stops at the first bad record, whatever its reason."""
    raise error


def load_user_queries(source: str | Path) -> Iterator[Doc]:
    """Stream a user's queries file as ``{"_id", "text", "type"}`` records; type is "" when the record has none.

    JSONL, CSV/TSV with a header (and JSON, Parquet) records need an id (``QUERY_ID_FIELDS``: ``_id``, ``id``,
    ``qid``) and a text (``QUERY_TEXT_FIELDS``: ``text``, ``query``) and may have a string ``type``. A .txt file holds
    one query per line, its id ``line-<n>``: n is the 1-based line number, so each id points at its line. The
    format is found by suffix (each optionally .gz). A missing file, an empty one, a record without text, a
    duplicate id or bytes that are not UTF-8 stop with an error naming the file and line.
    """
    path = Path(source)
    if not path.is_file():
        raise SpecializeError(f"{path}: queries file not found")
    checker = _Checker(QUERY_ID_FIELDS, (), QUERY_TEXT_FIELDS)

    def parse(record: dict[str, Any]) -> Doc:
        query = checker.parse(record)
        kind = _string(record["type"], "type", "type") if record.get("type") is not None else ""
        return {"_id": query["_id"], "text": query["text"], "type": kind}

    return _docs(path, _file_reader(path, _QUERY_READERS, _QUERY_SUPPORTED)(path, _stop), parse, _stop, "queries")


def load_queries(folder: str | Path) -> dict[str, str]:
    """``{qid: text}`` from a BEIR folder's queries.jsonl[.gz] (``{"_id", "text"}`` per line)."""
    folder = resolve_dataset(str(folder))
    path = _beir_file(folder, "queries")
    if path is None:
        raise SpecializeError(f"{folder}: no queries.jsonl or queries.jsonl.gz")
    checker = _Checker(("_id",), TITLE_FIELDS, ("text",))
    queries: dict[str, str] = {}
    for number, record in iter_jsonl(path):
        try:
            query = checker.parse(record)
        except _Invalid as bad:
            raise located(path, number, bad.message) from None
        queries[query["_id"]] = query["text"]
    return queries


def load_qrels(folder: str | Path, split: str) -> dict[str, dict[str, int]]:
    """``{qid: {doc_id: score}}`` from a BEIR folder's qrels/<split>.tsv."""
    folder = resolve_dataset(str(folder))
    path = folder / "qrels" / f"{split}.tsv"
    if not path.is_file():
        available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        raise SpecializeError(f"{folder}: no qrels for split {split!r}; available: {', '.join(available) or 'none'}")
    qrels: dict[str, dict[str, int]] = {}
    for qid, doc_id, score in _qrels_rows(path):
        qrels.setdefault(qid, {})[doc_id] = score
    return qrels


def _qrels_rows(path: Path) -> Iterator[tuple[str, str, int]]:
    """(query id, doc id, score) per row of a qrels file: BEIR TSV or TREC, header optional."""
    if not path.is_file():
        raise SpecializeError(f"{path}: file not found")
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                raise located(path, number, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
            if not line:
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            if len(fields) == 4:  # TREC: query-id iteration corpus-id score
                fields = [fields[0], fields[2], fields[3]]
            if len(fields) != 3:
                raise located(path, number, f"expected 3 columns (query-id, corpus-id, score), got {len(fields)}")
            try:
                score = int(fields[2])
            except ValueError:
                if number == 1:
                    continue  # header
                raise located(path, number, f"score {fields[2]!r} is not an integer") from None
            yield fields[0].strip(), fields[1].strip(), score


def relevant_test_ids(source: str | Path, extra_qrels: Sequence[str | Path] = ()) -> set[str]:
    """Doc ids with score > 0 in the BEIR source's qrels/test.tsv and in ``extra_qrels``.

    The source is a BEIR folder, or the corpus.jsonl[.gz] file inside one.
    """
    path = resolve_dataset(str(source))
    folder = path.parent if path.name in ("corpus.jsonl", "corpus.jsonl.gz") else path
    files = [folder / "qrels" / "test.tsv"] if (folder / "qrels" / "test.tsv").is_file() else []
    files += [Path(extra) for extra in extra_qrels]
    return {doc_id for file in files for _, doc_id, score in _qrels_rows(file) if score > 0}



@dataclass
class Dataset:
    """A test set held in memory: corpus, the split's judged queries and their qrels."""

    name: str
    doc_ids: list[str]
    doc_texts: list[str]
    queries: dict[str, str]
    qrels: Qrels


def load_dataset(spec: str, split: str = "test") -> Dataset:
    """Load a BEIR folder, ``demo:<name>`` or ``beir:<name>``, keeping the queries judged in ``split``."""
    folder = resolve_dataset(spec)
    qrels = load_qrels(folder, split)
    all_queries = load_queries(folder)
    missing = [qid for qid in qrels if qid not in all_queries]
    if missing:
        raise SpecializeError(f"{folder}: qrels/{split}.tsv names {len(missing)} queries not in queries.jsonl, e.g. {missing[0]!r}")
    doc_ids, doc_texts = [], []
    for doc in load_corpus(folder):
        doc_ids.append(doc["_id"])
        doc_texts.append(f"{doc['title']} {doc['text']}".strip())
    known = set(doc_ids)
    absent = {doc for judged in qrels.values() for doc, score in judged.items() if score > 0 and doc not in known}
    if absent:
        stderr.print(f"{folder}: qrels/{split}.tsv judges {len(absent):,} relevant documents that are not in the corpus "
                     f"(e.g. {sorted(absent)[0]!r}): no model can retrieve them, so Recall@100 stays below 100", highlight=False, soft_wrap=True)
    return Dataset(dataset_name(spec), doc_ids, doc_texts, {qid: all_queries[qid] for qid in qrels}, qrels)


def dataset_name(spec: str) -> str:
    """The name a dataset's results go by: ``scifact`` for ``demo:scifact`` or ``beir:scifact``, else the folder's name."""
    return spec.split(":", 1)[1] if spec.startswith(("demo:", "beir:")) else Path(spec).name


AUDIT_SPLITS = ("dev", "train", "test")


def judged_queries(source: str | None, splits: Sequence[str] = AUDIT_SPLITS) -> tuple[str, dict[str, str], Qrels] | None:
    """(split, queries, qrels) of the corpus source's first split among ``splits`` with qrels, or None."""
    if not source:
        return None
    folder = resolve_dataset(source)
    split = next((s for s in splits if (folder / "qrels" / f"{s}.tsv").is_file()), None) if folder.is_dir() else None
    if split is None:
        return None
    return split, load_queries(folder), load_qrels(folder, split)


JUDGED_SPLITS = ("dev", "train")
"""Judged queries a choice may read: never the test split."""
