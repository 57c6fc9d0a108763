"""The work directory: streaming JSONL, atomic writes, fingerprints and stage manifests.

Every stage reads and writes files in one work directory. Files appear only complete
(written to a temporary sibling, then renamed), and each stage leaves a manifest in
``stages/<stage>.json`` so that a rerun with the same config and inputs is skipped.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from specialize import __version__
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
    """The temporary files ``atomic_path`` left next to ``path`` when a kill stopped it."""
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


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
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def _key_path(final: Path) -> Path:
    return final.with_name(f".{final.stem}.key")


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


class Workdir:
    """One run's directory: artifacts at the top, manifests under ``stages/``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        """The path of an artifact inside the work directory."""
        return self.root / name

    def manifest_path(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"

    def manifest(self, stage: str) -> dict[str, Any] | None:
        """The stage's last manifest, or None when it never finished."""
        path = self.manifest_path(stage)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return None

    def run_stage(
        self,
        stage: str,
        config: BaseModel | Mapping[str, Any],
        inputs: Mapping[str, str | Path],
        outputs: Iterable[str],
        body: Callable[[], Mapping[str, Any]],
        force: bool = False,
    ) -> dict[str, Any]:
        """Run ``body`` unless the stage already ran with the same config, inputs and outputs.

        ``inputs`` maps a name to a file or folder (fingerprinted), or to a plain string
        (compared as is, for sources such as ``demo:scifact``). ``body`` writes the
        ``outputs`` (names relative to the work directory) and returns the counts to record.
        The returned manifest has ``"skipped": True`` when the stage did not run.
        """
        outputs = list(outputs)
        wanted_hash = config_hash(config)
        wanted_inputs = {name: _input_fingerprint(value) for name, value in inputs.items()}
        previous = self.manifest(stage)
        if not force and previous is not None and self._is_current(previous, wanted_hash, wanted_inputs):
            return {**previous, "skipped": True}
        self.root.mkdir(parents=True, exist_ok=True)
        for output in outputs:  # what a killed earlier run left half-written, outputs the stage may reuse unwritten too
            for orphan in orphan_temporaries(self.path(output)):
                orphan.unlink(missing_ok=True)
        started = time.perf_counter()
        counts = dict(body())
        manifest = {
            "stage": stage,
            "version": __version__,
            "config_hash": wanted_hash,
            "inputs": wanted_inputs,
            "outputs": {name: fingerprint(self.path(name)) for name in outputs},
            "counts": counts,
            "seconds": round(time.perf_counter() - started, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json(self.manifest_path(stage), manifest)
        return {**manifest, "skipped": False}

    def _is_current(self, previous: Mapping[str, Any], wanted_hash: str, wanted_inputs: Mapping[str, str]) -> bool:
        if previous.get("config_hash") != wanted_hash or previous.get("inputs") != wanted_inputs:
            return False
        for name, digest in previous.get("outputs", {}).items():
            output = self.path(name)
            if not output.exists() or fingerprint(output) != digest:
                return False
        return True


def _input_fingerprint(value: str | Path) -> str:
    path = Path(value)
    return fingerprint(path) if path.exists() else str(value)
