"""Files written safely: streaming JSONL, atomic writes, resumable partial files and fingerprints.

Files appear only complete (written to a temporary sibling, then renamed); a long write appends to a partial file
that a killed run resumes. Where each file of a work directory lives, and the stage manifests, are
:mod:`specialize.workdir`'s.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from specialize.errors import SpecializeError, located
from specialize.progress import stderr

_UMASK = os.umask(0)
os.umask(_UMASK)

_HASH_CHUNK = 1 << 20


def iter_jsonl(
    path: str | Path, on_error: Callable[[SpecializeError], None] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for each JSON object in a .jsonl or .jsonl.gz file.

    A line that is not UTF-8, not JSON or not an object raises an error naming the file and
    line, or is passed to ``on_error`` and skipped when a handler is given. Blank lines are
    ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecializeError(f"{path}: file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                _report(located(path, number, f"not valid UTF-8 ({exc.reason} at byte {exc.start})"), on_error)
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                _report(located(path, number, f"not valid JSON ({exc.msg}, column {exc.colno})"), on_error)
                continue
            if not isinstance(record, dict):
                _report(located(path, number, f"expected a JSON object, got {type(record).__name__}"), on_error)
                continue
            yield number, record


def _report(error: SpecializeError, on_error: Callable[[SpecializeError], None] | None) -> None:
    if on_error is None:
        raise error
    on_error(error)


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the records of a JSONL file (see :func:`iter_jsonl`)."""
    for _, record in iter_jsonl(path):
        yield record


def orphan_temporaries(path: Path) -> list[Path]:
    """The temporary files ``atomic_path`` left next to ``path`` when a kill stopped the process writing them; a live
    process's (another torchrun rank writing the same file) is not an orphan."""
    return sorted(tmp for tmp in path.parent.glob(f".{path.name}.*.tmp") if not _alive(tmp.name.removeprefix(f".{path.name}.").split(".")[0]))


def _alive(pid: str) -> bool:
    """Whether the process ``pid`` (the writer a temporary's name records) is running on this machine."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    A crash or kill before the block ends leaves ``path`` as it was (or absent), and the next write of
    ``path`` removes the temporary it left; an OS error that names no file (a full disk) is raised
    again naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for orphan in orphan_temporaries(path):  # what a killed earlier write of this file left
        orphan.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # as any other file the user writes, not mkstemp's 0600
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None:  # a write that failed (a full disk) names no file: name the one being written
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any]]) -> int:
    """Write records atomically to a .jsonl (or .jsonl.gz) file; return how many were written."""
    path = Path(path)
    count = 0
    with atomic_path(path) as tmp:
        # The temporary file has a .tmp suffix, so pick the codec from the final name.
        raw = gzip.open(tmp, "wb") if path.suffix == ".gz" else open(tmp, "wb")
        with io.TextIOWrapper(raw, encoding="utf-8", newline="\n") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
            handle.flush()
            if path.suffix != ".gz":
                os.fsync(handle.fileno())
    return count


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    """Write a JSON file atomically, indented for people to read."""
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


# --- keyed partial files: append-as-you-go outputs that a killed run resumes ------------------


def partial_path(final: Path, key: str) -> Path:
    """Where ``final`` grows while it is written: ``.<name>.<key>.partial`` beside it."""
    return final.with_name(f".{final.name}.{key}.partial")


def key_name(final: str) -> str:
    """The name of the file beside ``final`` that holds the key its content was made with."""
    return f".{Path(final).stem}.key"


def _key_path(final: Path) -> Path:
    return final.with_name(key_name(final.name))


def resume_partial(final: Path, key: str, field: str) -> tuple[Path, set[str]]:
    """The partial file of ``final`` for ``key`` and the ``field`` values of the records already in it.

    Partial files of other keys are deleted (their inputs changed) and a torn last line, cut
    off by a kill, is removed, so appending can go on where it stopped.
    """
    partial = partial_path(final, key)
    for stale in final.parent.glob(f".{final.name}.*.partial"):
        if stale != partial:
            stale.unlink()
    if not partial.is_file():
        return partial, set()
    data = partial.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(partial, "r+b") as handle:
            handle.truncate(end)
    return partial, {record[field] for _, record in iter_jsonl(partial)}


def finish_partial(final: Path, key: str) -> None:
    """Rename the finished partial file onto ``final`` and remember the key it was made with and its content's sha256."""
    key_file = _key_path(final)
    key_file.unlink(missing_ok=True)
    os.replace(partial_path(final, key), final)
    key_file.write_text(f"{key}\n{fingerprint(final)}\n")


def finished_with_key(final: Path, key: str) -> bool:
    """Whether ``final`` exists, was finished with ``key`` and is as it was finished (so it can be reused as is).

    A file truncated or edited since is not reused (it is made again), and a line says so.
    """
    key_file = _key_path(final)
    if not (final.is_file() and key_file.is_file()):
        return False
    lines = key_file.read_text().split()
    if not lines or lines[0] != key:
        return False
    if lines[1:2] != [fingerprint(final)]:
        stderr.print(f"{final}: changed since it was written (truncated or edited?): made again", highlight=False, soft_wrap=True)
        return False
    return True


def fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes, or of every file's relative path and bytes under a folder."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
                digest.update(chunk)
    return digest.hexdigest()


def config_hash(config: BaseModel | Mapping[str, Any]) -> str:
    """A stable sha256 of a config's resolved values."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
