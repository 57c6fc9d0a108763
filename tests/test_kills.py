"""Fault injection: every stage killed (SIGKILL) at a few points, then run again, ends where an uninterrupted run ends.

One small pipeline runs once without a kill, the work directory copied before each stage. Each case copies the
directory as it was before its stage, runs the stage in a child process that ``kill_at.py`` kills on the n-th call of
a function (a file renamed into place, a block of LLM prompts or teacher scores, a manifest, the trainer's save of a
checkpoint's state), runs the stage again (``train`` with ``--resume``), and compares every output with the
uninterrupted run's, byte for byte (weights tensor for tensor; JSON without its clocks). Every run is a fresh child
process with the same settings: a process that ran other models first may round a float's last bit apart.
No temporary or partial file may be left.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_pipeline import _overrides
from test_train import CHILD_ENV, same_weights, weights

from specialize.config import load_config
from specialize.pipeline import PLANS, STAGES
from specialize.workdir import Workdir

pytestmark = pytest.mark.slow  # about four minutes of child processes: `make test-slow`, which CI runs after `make test`

HELPER = Path(__file__).with_name("kill_at.py")
SMALL = {"prepare.max_passages": 6, "label.query_block": 2, "train.max_steps": 3, "train.keep_worse": True}
RENAME = "os:replace"
"""Every file a stage writes whole is renamed into place (and so is its manifest): the n-th rename of the stage."""

CASES = [
    ("prepare", f"{RENAME}:1"),  # corpus.jsonl written, not yet in place
    ("prepare", f"{RENAME}:3"),  # both outputs in place, not the manifest
    ("generate", "specialize.stages.generate.stage:sample_until:2"),  # the first block's replies appended, the second asked
    ("generate", f"{RENAME}:1"),  # every reply written, the partial file not yet renamed
    ("generate", f"{RENAME}:2"),  # generations.jsonl in place, queries.jsonl not
    ("mine", f"{RENAME}:1"),
    ("label", "specialize.stages.label.stage:score_many:2"),  # one block of teacher scores appended
    ("label", f"{RENAME}:2"),  # labels.jsonl in place, the splits not
    ("train", "transformers.trainer_callback:TrainerState.save_to_json:2"),  # checkpoint-2's weights saved, not its state
    ("train", "transformers.trainer:Trainer.training_step:3"),  # between two checkpoints
    ("evaluate", f"{RENAME}:1"),
]


def _config(work: Path, corpus: Path, **more):
    return {**_overrides(work, corpus), **SMALL, "workdir": str(work), **more}


def _child(stage: str, spec: str, config: dict) -> subprocess.CompletedProcess:
    """The stage run in a fresh process, killed as ``spec`` says (``-``: not killed)."""
    return subprocess.run([sys.executable, str(HELPER), stage, spec, json.dumps(config)], capture_output=True, text=True, env=CHILD_ENV)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, scifact_slice):
    """The work directory after an uninterrupted run, and copies of it as each stage found it."""
    root = tmp_path_factory.mktemp("kills")
    work = root / "whole"
    work.mkdir()
    for stage in STAGES:
        shutil.copytree(work, root / f"before-{stage}")
        done = _child(stage, "-", _config(work, scifact_slice))
        assert done.returncode == 0, done.stderr[-2000:]
    return root, scifact_slice


def _outputs(work: Path, stage: str, corpus: Path) -> list[str]:
    return PLANS[stage](load_config(None, _config(work, corpus)), Workdir(work)).outputs


def _same(stage: str, whole: Path, resumed: Path, name: str) -> None:
    """The output ``name`` of two runs: bytes, except what holds a clock (seconds, dates) or the run's own path (a run
    file is named after the evaluated model's path)."""
    a, b = whole / name, resumed / name
    if a.is_dir():
        files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "README.md")
        assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != "README.md"), name
        for file in files:
            if file.suffix == ".safetensors":
                assert same_weights(weights(a / file.parent), weights(b / file.parent)), file
            else:
                assert (a / file).read_bytes() == (b / file).read_bytes(), file
    elif name.endswith(".json") and stage in ("train", "evaluate"):
        assert _timeless(json.loads(a.read_text()), whole) == _timeless(json.loads(b.read_text()), resumed), name
    else:
        assert a.read_bytes() == b.read_bytes(), name


def _timeless(value, work: Path):
    if isinstance(value, dict):
        return {_timeless(k, work): _timeless(v, work) for k, v in value.items()
                if not any(word in k for word in ("second", "time", "_at", "rate", "run_file"))}
    if isinstance(value, list):
        return [_timeless(v, work) for v in value]
    return value.replace(str(work), "WORK") if isinstance(value, str) else value


@pytest.mark.parametrize(("stage", "spec"), CASES, ids=[f"{stage}-{spec.rsplit(':', 2)[-2]}-{spec[-1]}" for stage, spec in CASES])
def test_a_stage_killed_then_run_again_ends_as_an_uninterrupted_run(uninterrupted, tmp_path, stage, spec):
    root, corpus = uninterrupted
    work = tmp_path / "work"
    shutil.copytree(root / f"before-{stage}", work)
    config = _config(work, corpus)
    killed = _child(stage, spec, config)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]  # the kill point was reached
    assert not (work / "stages" / f"{stage}.json").exists()
    again = _child(stage, "-", {**config, "train.resume": stage == "train"})
    assert again.returncode == 0, again.stderr[-2000:]
    whole = root / "whole"
    for name in _outputs(work, stage, corpus):
        _same(stage, whole, work, name)
    manifest, expected = (json.loads((folder / "stages" / f"{stage}.json").read_text()) for folder in (work, whole))
    if stage not in ("train", "evaluate"):  # their outputs hold clocks
        assert manifest["outputs"] == expected["outputs"]
    assert not [p.name for p in work.rglob("*") if p.name.endswith((".tmp", ".partial")) or p.name.startswith(".") and p.name.endswith(".old")]
