"""Streaming JSONL, atomic writes, fingerprints and stage manifests."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from specialize.artifacts import atomic_path, config_hash, fingerprint, iter_jsonl, read_jsonl, write_json, write_jsonl
from specialize.config import PrepareConfig
from specialize.errors import SpecializeError
from specialize.workdir import Workdir

RECORDS = [{"_id": "1", "text": "héllo wörld"}, {"_id": "2", "text": "second"}]


@pytest.mark.parametrize("name", ["a.jsonl", "a.jsonl.gz"])
def test_jsonl_round_trip(tmp_path, name):
    path = tmp_path / name
    assert write_jsonl(path, iter(RECORDS)) == 2
    assert list(read_jsonl(path)) == RECORDS
    if name.endswith(".gz"):
        assert gzip.open(path).read().startswith(b'{"_id"')
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"a": 1}\n{"a": 2\n', "bad.jsonl:2: not valid JSON"),
        (b'{"a": 1}\n\n[1, 2]\n', "bad.jsonl:3: expected a JSON object, got list"),
        (b'{"a": 1}\n{"a": "\xff\xfe"}\n', "bad.jsonl:2: not valid UTF-8"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(SpecializeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        list(iter_jsonl(path))


def test_jsonl_skips_bad_lines_with_a_handler(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"a": 1}\nnot json\n{"a": 3}\n')
    seen = []
    assert [n for n, _ in iter_jsonl(path, on_error=seen.append)] == [1, 3]
    assert len(seen) == 1 and "mixed.jsonl:2" in str(seen[0])


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SpecializeError, match="nope.jsonl: file not found"):
        list(read_jsonl(tmp_path / "nope.jsonl"))


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"version": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("crash")
    assert json.loads(path.read_text()) == {"version": 1}
    assert list(tmp_path.iterdir()) == [path]


def test_killed_writer_leaves_previous_file_intact(tmp_path):
    """SIGKILL in the middle of write_jsonl: the old file is still whole, the new one never appears."""
    path = tmp_path / "data.jsonl"
    write_jsonl(path, RECORDS)
    before = path.read_bytes()
    script = textwrap.dedent(
        f"""
        import sys, time
        from specialize.artifacts import write_jsonl
        def records():
            for i in range(1000):
                yield {{"_id": str(i), "text": "x" * 1000}}
                if i == 500:
                    print("half", flush=True)
                    time.sleep(60)
        write_jsonl({str(path)!r}, records())
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "half"
    temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert temps and temps[0].stat().st_size > 0  # the new content was being written
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert path.read_bytes() == before


def test_fingerprint_of_files_and_folders(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("one")
    first = fingerprint(tmp_path / "d")
    (tmp_path / "d" / "a.txt").write_text("two")
    assert fingerprint(tmp_path / "d") != first
    (tmp_path / "f.txt").write_text("two")
    assert fingerprint(tmp_path / "f.txt") == fingerprint(tmp_path / "f.txt")
    assert config_hash(PrepareConfig()) != config_hash(PrepareConfig(seed=1))


class _Stage:
    """A stage body that writes one output and counts its runs."""

    def __init__(self, workdir: Workdir, source):
        self.workdir, self.source, self.calls = workdir, source, 0

    def __call__(self):
        self.calls += 1
        lines = self.source.read_text().splitlines()
        write_jsonl(self.workdir.path("out.jsonl"), ({"line": line} for line in lines))
        return {"lines": len(lines)}

    def run(self, config, force=False):
        return self.workdir.run_stage("demo", config, {"source": self.source}, ["out.jsonl"], self, force=force)


def test_stage_skips_when_unchanged_and_reruns_on_change(tmp_path):
    source = tmp_path / "source.txt"
    source.write_text("a\nb\n")
    stage = _Stage(Workdir(tmp_path / "work"), source)

    first = stage.run(PrepareConfig())
    assert not first["skipped"] and first["counts"] == {"lines": 2} and stage.calls == 1
    manifest = json.loads((tmp_path / "work" / "stages" / "demo.json").read_text())
    assert manifest["config_hash"] == config_hash(PrepareConfig())
    assert set(manifest) >= {"inputs", "outputs", "counts", "seconds", "version"}

    assert stage.run(PrepareConfig())["skipped"] and stage.calls == 1
    assert not stage.run(PrepareConfig(seed=7))["skipped"] and stage.calls == 2  # config changed
    source.write_text("a\nb\nc\n")
    assert stage.run(PrepareConfig(seed=7))["counts"] == {"lines": 3} and stage.calls == 3  # input changed
    assert not stage.run(PrepareConfig(seed=7), force=True)["skipped"] and stage.calls == 4
    (tmp_path / "work" / "out.jsonl").write_text("tampered\n")
    assert not stage.run(PrepareConfig(seed=7))["skipped"] and stage.calls == 5  # output changed


def test_failed_stage_leaves_no_manifest(tmp_path):
    workdir = Workdir(tmp_path)

    def body():
        raise SpecializeError("boom")

    with pytest.raises(SpecializeError):
        workdir.run_stage("broken", {"a": 1}, {}, [], body)
    assert workdir.manifest("broken") is None
    started = time.time()
    assert not workdir.run_stage("broken", {"a": 1}, {}, [], lambda: {})["skipped"]
    assert time.time() - started < 5
