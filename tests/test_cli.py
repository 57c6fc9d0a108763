"""The console script as a user meets it: help, one-line errors with exit 2, real runs."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from rich.text import Text
from typer.testing import CliRunner

from specialize import cli as specialize_cli
from specialize.config import QUERY_TYPES, Config, config_field, field_default

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


# --- one schema: flags, their help and their defaults come from the config fields ------------------------------

WORKDIR_COMMANDS = ("prepare", "evaluate", "generate", "mine", "label", "train", "run", "report", "demo")
FLAGS: list[tuple[str, list[str], str, Any]] = [  # (command, its arguments, the config key they set, the value they set it to)
    ("prepare", ["c.jsonl"], "prepare.corpus", "c.jsonl"),
    ("prepare", ["--max-passages", "7"], "prepare.max_passages", 7),
    ("prepare", ["--max-chars", "99"], "prepare.max_chars", 99),
    ("prepare", ["--seed", "3"], "prepare.seed", 3),
    ("prepare", ["--skip-bad"], "prepare.skip_bad", True),
    ("prepare", ["--id-field", "key"], "prepare.id_field", "key"),
    ("prepare", ["--title-field", "heading"], "prepare.title_field", "heading"),
    ("prepare", ["--text-field", "body"], "prepare.text_field", "body"),
    ("evaluate", ["-m", "a", "--model", "b"], "evaluate.models", ["a", "b"]),
    ("evaluate", ["--dataset", "demo:scifact"], "evaluate.datasets", ["demo:scifact"]),
    ("evaluate", ["--split", "dev"], "evaluate.split", "dev"),
    ("evaluate", ["--backend", "torch"], "evaluate.backend", "torch"),
    ("evaluate", ["--batch-size", "8"], "evaluate.batch_size", 8),
    ("generate", ["--model", "m"], "generate.model", "m"),
    ("generate", ["--backend", "openai"], "generate.llm.backend", "openai"),
    ("generate", ["--types", "question, claim"], "generate.types", ["question", "claim"]),
    ("generate", ["--base-url", "http://gpu:8000/v1"], "generate.llm.base_url", "http://gpu:8000/v1"),
    ("generate", ["--queries", "q.tsv"], "generate.queries", "q.tsv"),
    ("mine", ["-r", "bm25"], "mine.retrievers", ["bm25"]),
    ("mine", ["--top-k", "5"], "mine.top_k", 5),
    ("label", ["--teacher", "bm25"], "label.teacher", "bm25"),
    ("label", ["--audit"], "label.audit", "always"),
    ("label", ["--no-audit"], "label.audit", "never"),
    ("train", ["--student", "s"], "train.student", "s"),
    ("train", ["--loss", "infonce"], "train.loss", "infonce"),
    ("train", ["--epochs", "2"], "train.epochs", 2.0),
    ("train", ["--batch-size", "4"], "train.batch_size", 4),
    ("train", ["--keep-worse"], "train.keep_worse", True),
    ("train", ["--force-train"], "train.force_train", True),
    ("train", ["--resume"], "train.resume", True),
    ("run", ["--queries", "q.tsv"], "generate.queries", "q.tsv"),
    ("run", ["--force-train"], "train.force_train", True),
    *((command, ["--workdir", "elsewhere"], "workdir", Path("elsewhere")) for command in WORKDIR_COMMANDS),
]
CLI_ONLY = {"--config", "--set", "--force", "--from", "--to", "--ablate-types", "--help"}
"""The flags that set no config key: their help is the CLI's own."""


class Resolved(Exception):
    """Raised in place of running a command, with the config it resolved."""

    def __init__(self, config: Config) -> None:
        self.config = config


def resolve(monkeypatch: pytest.MonkeyPatch, *args: str) -> Config:
    """The config a command resolves from ``args``, in-process, without running it (nor reading a remembered config)."""
    real = specialize_cli._config

    def stop(*given: Any, **flags: Any) -> Config:
        raise Resolved(real(*given, **flags))

    monkeypatch.setattr(specialize_cli, "_config", stop)
    result = CliRunner().invoke(specialize_cli.app, list(args))
    assert isinstance(result.exception, Resolved), result.output
    return result.exception.config


def rendered_help(command: str) -> str:
    """``specialize <command> --help`` as the user reads it, panel borders dropped and line breaks joined."""
    result = CliRunner().invoke(specialize_cli.app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.replace("│", " ").split())


@pytest.mark.parametrize(("command", "args", "key", "value"), FLAGS, ids=[f"{row[0]} {' '.join(row[1])}" for row in FLAGS])
def test_a_flag_sets_the_config_key_it_takes_its_help_from(tmp_path, monkeypatch, command, args, key, value):
    monkeypatch.chdir(tmp_path)
    assert functools.reduce(getattr, key.split("."), resolve(monkeypatch, command, *args)) == value


@pytest.mark.parametrize("command", sorted({row[0] for row in FLAGS}))
def test_help_shows_each_flags_field_description_and_default(command):
    text = rendered_help(command)
    for _, _, key, _ in (row for row in FLAGS if row[0] == command):
        description = config_field(key).description
        assert description and " ".join(description.split()) in text, key
        default = field_default(key)
        if command != "demo" and default not in (None, "", True, False) and not isinstance(default, list):
            assert re.search(re.escape(description) + r"[^\[]*\[default: " + re.escape(str(default)) + r"\]", text), key


def test_the_types_flag_shows_the_bundled_types_as_its_default():
    assert f"[default: {', '.join(QUERY_TYPES)}]" in rendered_help("generate")


def test_every_flag_sets_a_config_key_or_is_the_clis_own():
    group = typer.main.get_command(specialize_cli.app)
    assert isinstance(group, typer.core.TyperGroup)
    tested = {(command, arg) for command, args, _, _ in FLAGS for arg in args if arg.startswith("-")}
    for name, command in group.commands.items():
        for param in command.params:
            if param.param_type_name == "option" and not set(param.opts) & CLI_ONLY:
                assert {(name, opt) for opt in (*param.opts, *param.secondary_opts)} & tested, f"{name} {param.opts}: no config key tested"


def test_a_flags_help_and_shown_default_follow_the_field(monkeypatch):
    field = config_field("prepare.max_passages")
    monkeypatch.setattr(field, "description", "Changed in the [field].")
    monkeypatch.setattr(field, "default", 7)
    assert Text.from_markup(specialize_cli._help("prepare.max_passages")).plain == "Changed in the [field]. [default: 7]"
    assert Text.from_markup(specialize_cli._help("prepare.max_passages", "A note.", show_default=False)).plain == "Changed in the [field]. A note."


def test_the_demo_and_the_remembered_config_live_under_the_fields_workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    remembered = tmp_path / field_default("workdir") / "config.yaml"
    remembered.parent.mkdir()
    remembered.write_text("prepare:\n  max_passages: 5\n")
    assert resolve(monkeypatch, "prepare").prepare.max_passages == 5  # no --workdir: the field's default work directory
    assert resolve(monkeypatch, "demo").workdir == Path(field_default("workdir")) / "demo"


def test_run_takes_its_config_as_a_flag_or_positionally(tmp_path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text(f"workdir: {tmp_path / 'w'}\nprepare:\n  max_passages: 7\n")
    runs: list[tuple[Config, str]] = []
    monkeypatch.setattr(specialize_cli, "_run_pipeline", lambda cfg, start, stop, force, rerun, ablate: runs.append((cfg, rerun)))
    for args in (["run", str(config)], ["run", "--config", str(config)], ["run", str(config), "-c", str(config)]):
        result = CliRunner().invoke(specialize_cli.app, args)
        assert result.exit_code == 0, result.output
    assert runs[0] == runs[1] == runs[2] and runs[0][0].prepare.max_passages == 7
    assert runs[0][1] == f"specialize run --config {config} --workdir {tmp_path / 'w'}"  # the hint to rerun it uses the flag


def test_report_takes_its_workdir_as_a_flag_or_positionally(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reported: list[Path] = []

    def report(workdir: Path) -> tuple[Path, Path]:
        reported.append(workdir)
        return workdir / "report.md", workdir / "report.html"

    monkeypatch.setattr("specialize.stages.report.report", report)
    work = tmp_path / "w"
    config = tmp_path / "c.yaml"
    config.write_text(f"workdir: {work}\n")
    for args in ([str(work)], ["--workdir", str(work)], ["-w", str(work), str(work)], ["--config", str(config)], []):
        result = CliRunner().invoke(specialize_cli.app, ["report", *args])
        assert result.exit_code == 0, result.output
    assert reported == [work] * 4 + [Path(field_default("workdir"))]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("run", "a.yaml", "--config", "b.yaml"), ("--config b.yaml and the positional a.yaml differ",)),
        (("report", "a", "--workdir", "b"), ("--workdir b and the positional a differ",)),
    ],
)
def test_a_path_given_both_ways_must_agree(args, fragments):
    assert_one_line_error(cli(*args), *fragments)
