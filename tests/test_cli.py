"""The console script as a user meets it: help, one-line errors with exit 2, real runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SCRIPT = shutil.which("specialize", path=str(Path(sys.executable).parent)) or "specialize"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, cwd=cwd, env={**os.environ, "COLUMNS": "200"})


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_lists_every_stage():
    result = cli("--help")
    assert result.returncode == 0
    for command in ("demo", "run", "prepare", "generate", "mine", "label", "train", "evaluate", "report"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("command", "fragments"),
    [
        ("generate", ("passages.jsonl: not found", "specialize prepare")),
        ("mine", ("corpus.jsonl: not found", "specialize prepare")),
        ("label", ("corpus.jsonl: not found", "specialize prepare")),
        ("train", ("corpus.jsonl: not found", "specialize prepare")),
        ("run", ("prepare: no corpus given",)),
        ("evaluate", ("no test set given",)),
    ],
)
def test_a_stage_without_its_inputs_names_the_stage_to_run(tmp_path, command, fragments):
    assert_one_line_error(cli(command, "--workdir", str(tmp_path / "work")), *fragments)


def test_prepare_writes_artifacts_and_skips_when_unchanged(tmp_path, scifact_slice):
    work = tmp_path / "work"
    first = cli("prepare", str(scifact_slice), "--workdir", str(work), "--max-passages", "20", "--seed", "3")
    assert first.returncode == 0, first.stderr
    passages = [json.loads(line) for line in (work / "passages.jsonl").read_text().splitlines()]
    assert len(passages) == 20
    resolved = yaml.safe_load((work / "config.yaml").read_text())
    assert resolved["prepare"]["max_passages"] == 20 and resolved["prepare"]["seed"] == 3
    manifest = json.loads((work / "stages" / "prepare.json").read_text())
    assert manifest["counts"]["passages"] == 20
    again = cli("prepare", str(scifact_slice), "--workdir", str(work), "--max-passages", "20", "--seed", "3")
    assert again.returncode == 0 and "skipped" in again.stdout
    forced = cli("prepare", str(scifact_slice), "--workdir", str(work), "--max-passages", "20", "--seed", "3", "--force")
    assert "done in" in forced.stdout


def test_config_file_and_set_overrides(tmp_path, scifact_slice):
    config = tmp_path / "c.yaml"
    config.write_text(f"workdir: {tmp_path / 'w'}\nprepare:\n  corpus: {scifact_slice}\n  max_passages: 7\n")
    result = cli("prepare", "--config", str(config), "--set", "prepare.max_chars=100")
    assert result.returncode == 0, result.stderr
    passages = [json.loads(line) for line in (tmp_path / "w" / "passages.jsonl").read_text().splitlines()]
    assert len(passages) == 7 and max(len(p["text"]) for p in passages) <= 100


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("prepare", "demo:scifact", "--set", "prepare.max_pasages=3"), ("unknown key 'prepare.max_pasages'", "did you mean 'max_passages'")),
        (("prepare", "/no/such/corpus.jsonl"), ("/no/such/corpus.jsonl",)),
        (("prepare",), ("no corpus given",)),
        (("prepare", "demo:nope"), ("demo:nope",)),
        (("evaluate", "-m", "bundled:minilmm", "-d", "demo:scifact"), ("bundled:minilmm", "minilm")),
        (("evaluate", "-d", "demo:scifact", "--split", "dev"), ("dev",)),
        (("evaluate", "--backend", "gpu"), ("evaluate.backend",)),
        (("prepare", "demo:scifact", "--config", "/no/config.yaml"), ("/no/config.yaml: config file not found",)),
    ],
)
def test_user_mistakes_are_one_line(tmp_path, args, fragments):
    assert_one_line_error(cli(*args, "--workdir", str(tmp_path / "w")), *fragments)


def test_bad_record_names_file_and_line(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "1", "text": "a fine first document"}\n{"_id": "2"}\n')
    assert_one_line_error(cli("prepare", str(corpus), "--workdir", str(tmp_path / "w")), "c.jsonl:2")
    assert not (tmp_path / "w" / "corpus.jsonl").exists()  # nothing half-written


def test_evaluate_prints_the_table(tmp_path, scifact_slice):
    result = cli("evaluate", "-m", "bundled:minilm", "-d", str(scifact_slice), "--workdir", str(tmp_path), "--backend", "torch")
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "eval" / f"{scifact_slice.name}.json").read_text())
    ndcg = 100 * saved["models"]["bundled:minilm"]["ndcg@10"]
    assert f"{ndcg:.2f}" in result.stdout and "nDCG@10" in result.stdout
