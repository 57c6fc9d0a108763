"""A user's mistakes and damaged files, one case a row: each ends in one line on stderr and exit code 2, or is noticed
and made again. (Kills and resumes: test_kills, and with each stage; a damaged labels file in test_label, a
checkpoint killed while saving in test_train.)"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_cli import SCRIPT, assert_one_line_error, cli

from specialize.config import load_config
from specialize.datasets import load_dataset, load_qrels
from specialize.encoder import corpus_key, encode_corpus, load_encoder
from specialize.models import cache_dir
from specialize.pipeline import run_stage


def _empty(folder: Path) -> None:
    folder.mkdir()


def _not_a_model(folder: Path) -> None:
    folder.mkdir()
    (folder / "notes.txt").write_text("not a model")


@pytest.mark.parametrize("make", [_empty, _not_a_model])
def test_a_folder_that_is_not_a_model(tmp_path, make):
    folder = tmp_path / "model"
    make(folder)
    result = cli("evaluate", "-m", str(folder), "-d", "demo:scifact", "-w", str(tmp_path / "work"))
    assert_one_line_error(result, f"{folder}: cannot load a sentence-transformers model (")


@pytest.mark.parametrize(("args", "fragments"), [
    (("--set", "mine.retrievers=[bm25"), ("--set 'mine.retrievers=[bm25': the value is not valid YAML", "expected ',' or ']'")),
    (("--set", "prepare.seed=\t1: ["), ("the value is not valid YAML", "column 1 of the value")),
    (("--set", "train.epochs=.inf"), ("train.epochs: Input should be a finite number",)),
    (("--workdir", "{file}"), ("{file}: File exists",)),
    (("--workdir", "{file}/below"), ("{file}/below: Not a directory",)),
    (("--max-passages", "abc"), ("specialize prepare: Invalid value for '--max-passages'", "(see specialize prepare --help)")),
    (("--set", "prepare.corpus.x=5"), ("config: prepare.corpus: Input should be a valid string",)),
])
def test_a_mistake_on_the_command_line_is_one_line(tmp_path, args, fragments):
    file = tmp_path / "a-file"
    file.write_text("not a folder")
    result = cli("prepare", "demo:scifact", *(arg.format(file=file) for arg in args))
    assert_one_line_error(result, *(fragment.format(file=file) for fragment in fragments))
    assert not list(tmp_path.glob("**/checkpoints"))


def test_a_truncated_cached_embedding_is_computed_again(scifact_slice, capsys):
    from specialize.datasets import load_corpus

    docs = list(load_corpus(scifact_slice))[:40]
    ids, texts = [doc["_id"] for doc in docs], [doc["text"] for doc in docs]
    encoder = load_encoder("bundled:minilm", "torch")
    first = encode_corpus(encoder, ids, texts, 16)
    cached = cache_dir() / "embeddings" / corpus_key(encoder, ids, texts) / "embeddings.npy"
    cached.write_bytes(cached.read_bytes()[:1000])
    again = encode_corpus(encoder, ids, texts, 16)
    assert np.allclose(again, first, atol=1e-6) and np.load(cached).shape == first.shape
    assert "a damaged cache entry (truncated?): deleted, computed again" in capsys.readouterr().err


def test_an_unknown_hub_model_without_a_network_is_one_line(tmp_path, scifact_slice):
    """No HF_HUB_OFFLINE to say so: without a network the hub is probed once, not retried for minutes."""
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy")}
    args = ["evaluate", "-m", "specialize-tests/no-such-model", "-d", str(scifact_slice), "-w", str(tmp_path)]
    result = subprocess.run([SCRIPT, *args], capture_output=True, text=True, env=env)
    assert_one_line_error(result, "specialize-tests/no-such-model: ")
    assert "retry" not in result.stderr.lower()


@pytest.mark.parametrize("texts", [["tiny", "short", "small"], ["12345 678", "-- 99 --", "1, 2, 3 ... 4"]])
def test_a_corpus_with_nothing_left_is_one_line_and_writes_nothing(tmp_path, texts):
    source = tmp_path / "c.jsonl"
    source.write_text("".join(json.dumps({"_id": str(i), "text": text}) + "\n" for i, text in enumerate(texts)))
    work = tmp_path / "work"
    assert_one_line_error(cli("prepare", str(source), "-w", str(work)), f"{source}: no document left to prepare: 3 loaded, all dropped")
    assert not (work / "corpus.jsonl").exists() and not (work / "passages.jsonl").exists()


def test_a_killed_stage_leaves_no_temporary_file_after_its_rerun_and_files_follow_the_umask(tmp_path, scifact_slice):
    work = tmp_path / "work"
    work.mkdir()
    orphan = work / ".corpus.jsonl.k1ll3d.tmp"  # what a kill in the middle of writing corpus.jsonl leaves
    orphan.write_text("half a corpus")
    run_stage(load_config(None, {"workdir": str(work), "prepare.corpus": str(scifact_slice)}), "prepare")
    assert not orphan.exists() and not list(work.glob(".*.tmp"))
    umask = os.umask(0)
    os.umask(umask)
    for name in ("corpus.jsonl", "passages.jsonl", "stages/prepare.json"):
        assert (work / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_qrels_judging_documents_not_in_the_corpus_are_said(tmp_path, scifact_slice, capsys):
    shutil.copytree(scifact_slice, tmp_path / "set")
    with open(tmp_path / "set" / "qrels" / "test.tsv", "a") as qrels:
        qrels.write(f"{next(iter(load_qrels(scifact_slice, 'test')))}\tno-such-doc\t1\n")
    load_dataset(str(tmp_path / "set"))
    assert "judges 1 relevant documents that are not in the corpus (e.g. 'no-such-doc')" in capsys.readouterr().err


def test_a_work_directory_that_cannot_be_written_is_one_line(tmp_path):
    # As root no mode bit stops a write; /sys refuses new files to anyone, root included.
    assert_one_line_error(cli("prepare", "demo:scifact", "-w", "/sys/kernel/specialize-work"), "/sys/kernel/specialize-work: ")


def test_a_full_disk_is_one_line_and_keeps_the_earlier_artifacts(tmp_path):
    work = tmp_path / "work"
    assert cli("prepare", "demo:scifact", "-w", str(work), "--max-passages", "20").returncode == 0
    before = {name: (work / name).read_bytes() for name in ("corpus.jsonl", "passages.jsonl", "stages/prepare.json")}

    def small_files() -> None:  # no file may grow past 1 MB: a write past it fails as on a full disk (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    result = subprocess.run(
        [SCRIPT, "prepare", "demo:scifact", "-w", str(work), "--max-passages", "20", "--force"],
        capture_output=True, text=True, preexec_fn=small_files, env={**os.environ, "COLUMNS": "200"},
    )
    assert_one_line_error(result, f"{work / 'corpus.jsonl'}: File too large")
    assert {name: (work / name).read_bytes() for name in before} == before
    assert not list(work.glob(".*.tmp"))


def test_a_failing_command_leaves_the_config_and_a_stage_alone_keeps_the_others(tmp_path, scifact_slice):
    work = tmp_path / "work"
    assert cli("prepare", str(scifact_slice), "-w", str(work), "--max-passages", "20", "--seed", "3").returncode == 0
    queries = tmp_path / "mine.txt"
    queries.write_text("what do statins do to the liver\nhow is malaria spread\n")
    assert cli("generate", "-w", str(work), "--queries", str(queries)).returncode == 0
    resolved = yaml.safe_load((work / "config.yaml").read_text())
    assert resolved["prepare"]["max_passages"] == 20 and resolved["prepare"]["seed"] == 3  # told to prepare, kept
    assert resolved["generate"]["queries"] == str(queries)
    remembered = (work / "config.yaml").read_bytes()
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    assert_one_line_error(cli("mine", "-w", str(work), "-r", str(not_a_model)), str(not_a_model))
    assert (work / "config.yaml").read_bytes() == remembered  # not the model that failed
    other = tmp_path / "other.yaml"
    other.write_text(f"workdir: {work}\nprepare:\n  corpus: {scifact_slice}\n")
    assert cli("prepare", "-c", str(other)).returncode == 0  # a config given is the config used
    assert yaml.safe_load((work / "config.yaml").read_text())["prepare"]["max_passages"] != 20
