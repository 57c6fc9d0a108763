"""The train stage, with the real bundled MiniLM on tiny lists of real SciFact text: the published folder and its
card, each loss, gradient caching, resuming, the safety check, DDP over two CPU processes, and one-line errors."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from unittest.mock import patch

import pytest
import torch
from safetensors.torch import load_file
from test_cli import SCRIPT
from transformers import TrainerCallback

from specialize.config import TrainConfig
from specialize.encoder import cached_corpus, encode_corpus, load_encoder
from specialize.errors import SpecializeError
from specialize.losses import CachedLoss, InfoNCELoss, ListMarginMSELoss, ListwiseDistillationLoss
from specialize.models import document_fingerprint, model_fingerprint, resolve_model
from specialize.records import read_corpus
from specialize.stages.train.data import read_lists, training_subset
from specialize.stages.train.recipe import build_loss, default_learning_rate, warmup_steps
from specialize.stages.train.stage import train

torch.set_num_threads(1)  # two busy cores: more threads only contend

# Two optimizer steps of two queries with three passages each, short texts, a dev check after every step.
TINY = {
    "mode": "full", "passages_per_query": 3, "batch_size": 2, "max_steps": 2, "eval_steps": 1, "logging_steps": 1,
    "query_max_length": 16, "passage_max_length": 48, "warmup_epochs": 0, "report_to": "none",
}
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def tiny(**changes) -> TrainConfig:
    return TrainConfig(**{**TINY, **changes})


def tiny_flags(**changes) -> list[str]:
    return [f"--set=train.{key}={value}" for key, value in {**TINY, **changes}.items()]


@pytest.fixture(scope="module")
def lists_dir(tmp_path_factory, scifact_slice):
    """corpus.jsonl and 8 train / 4 dev lists: each claim's relevant abstract first, then three others, teacher-scored."""
    from specialize.datasets import load_corpus, load_qrels, load_queries

    folder = tmp_path_factory.mktemp("lists")
    docs = list(load_corpus(scifact_slice))
    (folder / "corpus.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    claims = load_queries(scifact_slice)
    relevant = {doc for rels in load_qrels(scifact_slice, "test").values() for doc in rels}
    others = [doc["_id"] for doc in docs if doc["_id"] not in relevant]
    rows = []
    for i, (qid, rels) in enumerate(list(load_qrels(scifact_slice, "test").items())[:12]):
        doc_ids = [next(iter(rels)), *(others[(3 * i + k) % len(others)] for k in range(3))]
        kind = "claim" if i % 3 else "question"
        rows.append({"qid": qid, "query": claims[qid], "type": kind, "doc_ids": doc_ids, "scores": [1.0, 0.5, 0.2, 0.0]})
    (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows[:8]))
    (folder / "dev.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows[8:]))
    return folder


def workdir_with(lists_dir, path):
    path.mkdir(parents=True, exist_ok=True)
    for name in ("corpus.jsonl", "train.jsonl", "dev.jsonl"):
        shutil.copy(lists_dir / name, path / name)
    return path


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, lists_dir):
    """`specialize train` on the tiny lists, with an evaluation file already in the work directory."""
    work = workdir_with(lists_dir, tmp_path_factory.mktemp("cli") / "w")
    from specialize.records import Evaluation, ModelScores
    from specialize.workdir import Workdir

    scores = ModelScores(**{"ndcg@10": 0.645, "recall@100": 0.925, "mrr@10": 0.605}, seconds=1.0, backend="torch", max_seq_length=256,
                         run_file="eval/runs/scifact/bundled_minilm.trec")
    Evaluation(dataset="scifact", split="test", queries=300, docs=5183, models={"bundled:minilm": scores}).write(Workdir(work).eval_file("scifact"))
    return work, run_cli("train", "--workdir", str(work), *tiny_flags())


def run_cli(*args: str) -> tuple[int, str, str]:
    """The console entry point in this process (importing sentence-transformers again costs ~10 s): code, stdout, stderr."""
    from specialize.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), patch.object(sys, "argv", ["specialize", *args]):
        try:
            main()
        except SystemExit as exc:
            return int(exc.code or 0), out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def minilm():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_model("bundled:minilm"))


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


# --- the published model ----------------------------------------------------------------------


def test_cli_publishes_a_loadable_model_with_a_card_of_facts(cli_run):
    from sentence_transformers import SentenceTransformer

    work, (code, out, err) = cli_run
    assert code == 0, err
    model = SentenceTransformer(str(work / "models" / "student"))
    assert model.encode(["a claim about cells"]).shape == (1, 384)
    summary = json.loads((work / "train.json").read_text())
    assert summary["steps"] == 2 and summary["published"] in {"trained", "base"}
    assert summary["train_types"] == {"claim": 5, "question": 3} and summary["dev_types"] == {"claim": 3, "question": 1}
    assert summary["gate"]["queries"] == 4 and summary["hyperparameters"]["learning_rate"] == 5e-5
    assert summary["gate"]["decision"] == "base" and summary["published"] == "base"  # 4 held-out queries: it cannot tell
    card = (work / "models" / "student" / "README.md").read_text()
    for fact in ("Specialized with `specialize`", "`bundled:minilm`", "`listwise`", "teacher_temperature=0.05", "Teacher",
                 "| claim | 5 | 3 |", "| question | 3 | 1 |", "### Publish gate", "query 16, passage 48 tokens",
                 "| scifact (test) | bundled:minilm | 64.50 | 92.50 | 60.50 |", summary["verdict"]):
        assert fact in card, fact
    assert card[card.index("\n## ") + 1 :].startswith("## Specialized with")  # ours first, after the title
    manifest = json.loads((work / "stages" / "train.json").read_text())
    assert manifest["counts"]["by_type"]["claim"]["train"] == 5 and manifest["counts"]["published"] == summary["published"]
    assert f"gate_base {round(summary['gate']['base'], 4)}" in out and summary["verdict"][:40] in err


def test_losses_are_logged_by_step(cli_run):
    work, _ = cli_run
    log = json.loads((work / "train_log.json").read_text())
    assert [entry["step"] for entry in log if "loss" in entry] == [1, 2]
    assert [entry["step"] for entry in log if "eval_loss" in entry] == [1, 2]


def test_an_unchanged_rerun_is_skipped(cli_run):
    work, _ = cli_run
    code, out, _ = run_cli("train", "--workdir", str(work), *tiny_flags())
    assert code == 0 and "skipped" in out


# --- losses, learning rate, gradient caching ----------------------------------------------------


def test_each_loss_is_selectable_and_configured_from_the_train_section(minilm):
    cases = {
        "listwise": (ListwiseDistillationLoss, {"teacher_temperature": 0.05, "student_temperature": 0.05, "infonce_weight": 0.1,
                                                "infonce_temperature": 0.01, "false_negative_ratio": 0.6}),
        "infonce": (InfoNCELoss, {"temperature": 0.05, "denoise_ratio": 0.6}),
        "marginmse": (ListMarginMSELoss, {"scale": pytest.approx(1.0)}),
    }
    for name, (kind, settings) in cases.items():
        loss, for_trainer = build_loss(tiny(loss=name), minilm)
        assert type(loss) is kind and loss.get_config_dict() == settings and for_trainer is loss
    loss, cached = build_loss(tiny(mini_batch_size=1), minilm)
    assert isinstance(cached, CachedLoss) and cached.loss is loss and cached.mini_batch_size == 1
    _, uncached = build_loss(tiny(mini_batch_size=2), minilm)  # not smaller than the batch: nothing to cache
    assert not isinstance(uncached, CachedLoss)


def test_warmup_never_takes_more_than_a_quarter_of_a_run():
    assert warmup_steps(tiny(max_steps=None, epochs=1, warmup_epochs=0.5, batch_size=8), 24, 1) == 0  # 3 steps: none at a rate of 0
    assert warmup_steps(tiny(max_steps=None, epochs=1, warmup_epochs=0.5, batch_size=8), 64, 1) == 2  # 8 steps: a quarter, not half
    assert warmup_steps(tiny(max_steps=None, epochs=3, warmup_epochs=0.5, batch_size=8), 800, 1) == 50  # 300 steps: half an epoch
    assert warmup_steps(tiny(max_steps=3, warmup_epochs=0.5, batch_size=8), 800, 1) == 0


def test_learning_rate_by_parameter_count():
    assert default_learning_rate(22_700_000) == 5e-5  # MiniLM
    assert default_learning_rate(110_000_000) == 2e-5  # base
    assert default_learning_rate(335_000_000) == 1e-5  # large
    assert default_learning_rate(7_000_000_000) == 5e-6


@pytest.mark.parametrize("loss", ["infonce", "marginmse"])
def test_baseline_losses_train_with_gradient_caching(tmp_path, lists_dir, loss):
    work = workdir_with(lists_dir, tmp_path / "w")
    counts = train(work, tiny(loss=loss, max_steps=1, mini_batch_size=1))
    summary = json.loads((work / "train.json").read_text())
    assert counts["steps"] == 1 and summary["loss"] == loss and summary["hyperparameters"]["mini_batch_size"] == 1
    card = (work / "models" / "student" / "README.md").read_text()
    assert f"`{loss}`" in card and "gradient caching in mini-batches of 1" in card


# --- resume -----------------------------------------------------------------------------------


class StopAfterFirstStep(TrainerCallback):
    """Ends training after step 1, as a kill after the first checkpoint would."""

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = True


def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path, lists_dir, cli_run):
    work = workdir_with(lists_dir, tmp_path / "w")
    train(work, tiny(), callbacks=[StopAfterFirstStep()])
    assert sorted(p.name for p in (work / "checkpoints").glob("checkpoint-*")) == ["checkpoint-1"]
    # Killed while saving the next checkpoint: its weights written, not yet its state (the trainer writes it last).
    first, killed = work / "checkpoints" / "checkpoint-1", work / "checkpoints" / "checkpoint-2"
    killed.mkdir()
    for name in ("model.safetensors", "config.json", "modules.json"):
        shutil.copy(first / name, killed / name)
    shutil.copytree(first, work / "checkpoints" / "checkpoint-3")  # ...or while writing that state
    (work / "checkpoints" / "checkpoint-3" / "trainer_state.json").write_text('{"best_metric": null, "global_st')
    counts = train(work, tiny(resume=True))
    assert not (work / "checkpoints" / "checkpoint-3").exists()
    assert counts["steps"] == 2
    uninterrupted = cli_run[0] / "checkpoints" / "checkpoint-2"
    resumed = work / "checkpoints" / "checkpoint-2"
    for folder in (uninterrupted, resumed):
        assert json.loads((folder / "trainer_state.json").read_text())["global_step"] == 2
        optimizer = torch.load(folder / "optimizer.pt", weights_only=False)
        assert {int(state["step"]) for state in optimizer["state"].values()} == {2}
    assert same_weights(weights(resumed), weights(uninterrupted))


def test_resume_refuses_missing_or_foreign_checkpoints(tmp_path, lists_dir):
    work = workdir_with(lists_dir, tmp_path / "w")
    with pytest.raises(SpecializeError, match="no checkpoint to resume from"):
        train(work, tiny(resume=True))
    (work / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    (work / "checkpoints" / "run.json").write_text('{"key": "another run"}')
    with pytest.raises(SpecializeError, match="another train config or other data"):
        train(work, tiny(resume=True))


# --- safe by default ----------------------------------------------------------------------------


def test_a_worse_model_is_not_published_unless_keep_worse(tmp_path, lists_dir, minilm):
    from sentence_transformers import SentenceTransformer

    def published_is_base() -> bool:
        return same_weights(SentenceTransformer(str(work / "models" / "student")).state_dict(), minilm.state_dict())

    work = workdir_with(lists_dir, tmp_path / "w")
    counts = train(work, tiny(learning_rate=1.0, gate_min_queries=4))  # wrecks the model in two steps
    summary = json.loads((work / "train.json").read_text())
    assert counts["published"] == "base" and summary["gate"]["trained"] < summary["gate"]["base"]
    assert summary["gate"]["ci_low"] <= 0 and summary["verdict"].startswith("Publish gate: kept the base: -")
    assert published_is_base()
    assert summary["verdict"] in (work / "models" / "student" / "README.md").read_text()
    # The base published is never embedded again: its corpus embeddings are the base's cache entry...
    published = str(work / "models" / "student")
    ids, texts = read_corpus(work / "corpus.jsonl")
    encode_corpus(load_encoder("bundled:minilm"), ids, texts, 16)
    assert document_fingerprint(published) == model_fingerprint("bundled:minilm") and cached_corpus(load_encoder(published), ids, texts)
    pooling = work / "models" / "student" / "1_Pooling" / "config.json"
    original = pooling.read_text()
    assert '"mean"' in original
    pooling.write_text(original.replace('"mean"', '"cls"'))
    assert document_fingerprint(published) != model_fingerprint("bundled:minilm")  # ...until its files change
    pooling.write_text(original)

    counts = train(work, tiny(learning_rate=1.0, gate_min_queries=4, keep_worse=True))
    assert counts["published"] == "trained"
    assert not published_is_base() and document_fingerprint(published) != model_fingerprint("bundled:minilm")


# --- DDP ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_over_two_cpu_processes(tmp_path, lists_dir):
    work = workdir_with(lists_dir, tmp_path / "w")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               SCRIPT, "train", "--workdir", str(work), *tiny_flags(batch_size=1)]
    result = subprocess.run(command, capture_output=True, text=True, env=CHILD_ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((work / "train.json").read_text())
    assert summary["hyperparameters"]["devices"] == 2 and summary["steps"] == 2
    assert result.stdout.count("train: done") == 1  # one process reports


# --- the query-type ablation and other variants ------------------------------------------------


def test_training_subset_keeps_the_types_then_a_seeded_sample(lists_dir):
    rows = read_lists(lists_dir / "train.jsonl", 3)
    questions = training_subset(rows, ["question"], None, 42)
    assert [row.type for row in questions] == ["question"] * 3
    sample = training_subset(rows, None, 4, 42)
    assert len(sample) == 4 and sample == training_subset(rows, None, 4, 42) and sample != training_subset(rows, None, 4, 7)
    assert [row.line for row in sample] == sorted(row.line for row in sample)
    assert training_subset(rows, ["claim"], 99, 42) == [row for row in rows if row.type == "claim"]
    with pytest.raises(SpecializeError, match=r"train.types \['title'\]: .*'claim': 5"):
        training_subset(rows, ["title"], None, 42)


@pytest.mark.slow  # four trainings (~40 s of the 10-minute `make test`); `make test-slow` runs it
def test_run_ablate_types_trains_one_variant_per_type_and_a_same_size_mixture(tmp_path, lists_dir):
    from specialize.config import load_config
    from specialize.stages.evaluate import targets
    from specialize.workdir import Workdir

    work = workdir_with(lists_dir, tmp_path / "w")
    flags = [*tiny_flags(max_steps=1), "--set=evaluate.datasets=[demo:scifact]"]
    code, out, err = run_cli("run", "--workdir", str(work), "--from", "train", "--to", "train", "--ablate-types", *flags)
    assert code == 0, err
    variants = work / "variants"
    assert sorted(path.name for path in variants.iterdir()) == ["mixture-4", "type-claim", "type-question"]
    expected = {"mixture-4": 4, "type-claim": 5, "type-question": 3}
    for name, queries in expected.items():
        summary = json.loads((variants / name / "train.json").read_text())
        assert summary["train_queries"] == queries and summary["dev_queries"] == 4, name
        assert summary["published"] == "trained"  # a variant is kept whatever the dev check says, to be compared
        assert (variants / name / "train.jsonl").is_symlink() and (variants / name / "models" / "student" / "model.safetensors").is_file()
        assert f"train:{name}" in out
    assert json.loads((variants / "type-claim" / "train.json").read_text())["train_types"] == {"claim": 5}
    cfg = load_config(None, {"workdir": str(work), "evaluate.datasets": ["demo:scifact"]})
    models, _ = targets(Workdir(work), cfg)
    assert models == ["bundled:minilm", str(work / "models" / "student"), *(str(variants / name / "models" / "student") for name in sorted(expected))]
    code, out, err = run_cli("run", "--workdir", str(work), "--from", "train", "--to", "train", "--ablate-types", *flags)
    assert code == 0 and out.count("skipped") == 4, out


# --- user mistakes ------------------------------------------------------------------------------


def test_missing_lists_say_run_label_first(tmp_path, lists_dir):
    work = tmp_path / "w"
    work.mkdir()
    shutil.copy(lists_dir / "corpus.jsonl", work)
    code, _, err = run_cli("train", "--workdir", str(work))
    assert_one_line_error(code, err, "train.jsonl", "run `specialize label` first")


@pytest.mark.parametrize(
    ("train_text", "fragments"),
    [
        ("", ("no training queries",)),
        ('{"qid": "a", "query": "q", "type": "claim", "doc_ids": ["x", "y"], "scores": [1, 0]}\n{"qid": "b"}\n', ("train.jsonl:2", "query")),
    ],
)
def test_bad_training_data_is_one_line(tmp_path, lists_dir, train_text, fragments):
    work = workdir_with(lists_dir, tmp_path / "w")
    (work / "train.jsonl").write_text(train_text)
    code, _, err = run_cli("train", "--workdir", str(work), *tiny_flags(passages_per_query=2))
    assert_one_line_error(code, err, *fragments)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"doc_ids": ["a", "b"], "scores": [1.0]}, "one score in [0, 1] in 'scores' per doc id"),
        ({"doc_ids": ["a", "b"], "scores": [1.0, float("nan")]}, "one score in [0, 1]"),
        ({"doc_ids": ["a", "b"], "scores": [3.5, 0.5]}, "one score in [0, 1]"),
        ({"doc_ids": ["a"], "scores": [1.0]}, "1 passages, fewer than train.passages_per_query (2)"),
        ({"doc_ids": "a b", "scores": [1.0]}, "list of string 'doc_ids'"),
        ({"query": " "}, "'query'"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, row, message):
    path = tmp_path / "train.jsonl"
    good = {"qid": "q1", "query": "a claim", "type": "claim", "doc_ids": ["a", "b"], "scores": [1.0, 0.5]}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "qid": "q2", **row}) + "\n")
    with pytest.raises(SpecializeError, match=rf"train\.jsonl:2: .*{re.escape(message)}"):
        read_lists(path, 2)


def test_lists_are_read_best_first(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"qid": "q", "query": "a claim", "type": "claim", "doc_ids": ["a", "b", "c"], "scores": [0.2, 0.9, 0.5]}) + "\n")
    (row,) = read_lists(path, 2)
    assert (row.doc_ids, row.scores, row.line) == (["b", "c", "a"], [0.9, 0.5, 0.2], 1)


def test_unknown_passages_and_duplicate_qids_name_the_line(tmp_path, lists_dir):
    work = workdir_with(lists_dir, tmp_path / "w")
    rows = (work / "dev.jsonl").read_text().splitlines()
    broken = json.loads(rows[1]) | {"doc_ids": ["no-such-doc", *json.loads(rows[1])["doc_ids"][1:]]}
    (work / "dev.jsonl").write_text("\n".join([rows[0], json.dumps(broken), *rows[2:]]) + "\n")
    with pytest.raises(SpecializeError, match=r"dev\.jsonl:2: doc 'no-such-doc' is not in corpus\.jsonl"):
        train(work, tiny())
    (work / "dev.jsonl").write_text(rows[0] + "\n" + rows[0] + "\n")
    with pytest.raises(SpecializeError, match=r"dev\.jsonl:2: duplicate qid"):
        train(work, tiny())


def test_the_card_names_the_teacher_only_if_it_scored_the_labels(tmp_path, lists_dir):
    from specialize.artifacts import finish_partial, partial_path
    from specialize.stages.train.stage import labels_teacher
    from specialize.teachers import parse_teacher
    from specialize.workdir import Workdir

    work = workdir_with(lists_dir, tmp_path / "w")
    assert labels_teacher(work, "bm25") is None  # no labels at all
    for name in ("queries.jsonl", "candidates.jsonl"):
        (work / name).write_text("{}\n")
    key = Workdir(work).labels_key(str(parse_teacher("bm25")))
    partial_path(work / "labels.jsonl", key).write_text("{}\n")
    finish_partial(work / "labels.jsonl", key)
    assert labels_teacher(work, "bm25") == "bm25"
    assert labels_teacher(work, ["bm25", "bi-encoder:bundled:minilm"]) is None  # another teacher


def test_the_logged_train_loss_is_the_whole_runs_after_a_resume():
    from specialize.stages.train.stage import whole_run_loss

    # Steps 1..3 logged as two means (step 1; steps 2-3), then the trainer's closing entry with its own average.
    history = [{"loss": 1.0, "step": 1}, {"eval_loss": 5.0, "step": 1}, {"loss": 3.0, "step": 3}, {"train_loss": 9.0, "step": 3}]
    assert whole_run_loss(history)[-1] == {"train_loss": (1.0 * 1 + 3.0 * 2) / 3, "step": 3}
    assert whole_run_loss(history)[:3] == history[:3]
