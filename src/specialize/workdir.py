"""The work directory: every path in it (``Workdir``), and running a stage there at most once per config and inputs."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from specialize import __version__
from specialize.artifacts import config_hash, fingerprint, key_name, orphan_temporaries
from specialize.errors import SpecializeError
from specialize.records import Manifest


def slug(name: str) -> str:
    """A file-name-safe form of a model or dataset name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


class Workdir:
    """One run's directory and every path in it: artifacts at the top, manifests under ``stages/``.

    The names below are the artifact contract (docs/artifacts.md): a stage, the report, the card and the CLI reach a file
    only through this class, and each JSON artifact's schema is its record in :mod:`specialize.records`.
    """

    CORPUS = "corpus.jsonl"
    PASSAGES = "passages.jsonl"
    GENERATIONS = "generations.jsonl"
    QUERIES = "queries.jsonl"
    CANDIDATES = "candidates.jsonl"
    LABELS = "labels.jsonl"
    TRAIN = "train.jsonl"
    DEV = "dev.jsonl"
    SELECTION = "teacher.json"
    AUDIT = "audit.json"
    SUMMARY = "train.json"
    TRAIN_LOG = "train_log.json"
    CONFIG = "config.yaml"
    REPORT = "report.md"
    REPORT_HTML = "report.html"
    PLOTS = "report"
    CHECKPOINTS = "checkpoints"
    CHECKPOINT_KEY = "run.json"
    """Inside ``checkpoints/``: the key of the settings and data the checkpoints come from."""
    EVAL = "eval"
    VARIANTS = "variants"
    STAGES = "stages"
    LABELED = (CORPUS, QUERIES, CANDIDATES, LABELS, key_name(LABELS), TRAIN, DEV, SELECTION)
    """The labeled data a variant trains on, with the key and the selection that name its teacher."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        """The path of an artifact inside the work directory."""
        return self.root / name

    @property
    def corpus(self) -> Path:
        return self.root / self.CORPUS

    @property
    def passages(self) -> Path:
        return self.root / self.PASSAGES

    @property
    def generations(self) -> Path:
        return self.root / self.GENERATIONS

    @property
    def queries(self) -> Path:
        return self.root / self.QUERIES

    @property
    def candidates(self) -> Path:
        return self.root / self.CANDIDATES

    @property
    def labels(self) -> Path:
        return self.root / self.LABELS

    @property
    def train(self) -> Path:
        return self.root / self.TRAIN

    @property
    def dev(self) -> Path:
        return self.root / self.DEV

    @property
    def selection(self) -> Path:
        return self.root / self.SELECTION

    @property
    def audit(self) -> Path:
        return self.root / self.AUDIT

    @property
    def summary(self) -> Path:
        return self.root / self.SUMMARY

    @property
    def train_log(self) -> Path:
        return self.root / self.TRAIN_LOG

    @property
    def config(self) -> Path:
        return self.root / self.CONFIG

    @property
    def report(self) -> Path:
        return self.root / self.REPORT

    @property
    def report_html(self) -> Path:
        return self.root / self.REPORT_HTML

    @property
    def plots(self) -> Path:
        return self.root / self.PLOTS

    @property
    def checkpoints(self) -> Path:
        return self.root / self.CHECKPOINTS

    def eval_file(self, dataset: str) -> Path:
        """The evaluation of every model on one dataset (by :func:`~specialize.datasets.dataset_name`)."""
        return self.root / self.EVAL / f"{slug(dataset)}.json"

    def eval_files(self) -> list[Path]:
        """Every dataset's evaluation, by name."""
        return sorted((self.root / self.EVAL).glob("*.json"))

    def run_file(self, dataset: str, model: str) -> Path:
        """One model's TREC run on one dataset."""
        return self.root / self.EVAL / "runs" / slug(dataset) / f"{slug(model)}.trec"

    def model(self, output: str) -> Path:
        """A published model folder (``train.output``)."""
        return self.root / output

    def variant(self, name: str) -> Workdir:
        """A variant's own work directory, ``variants/<name>/``."""
        return Workdir(self.root / self.VARIANTS / name)

    @property
    def variants(self) -> Path:
        return self.root / self.VARIANTS

    def variant_models(self, output: str) -> list[str]:
        """The published models of the variants trained here (``variants/*/<output>``), by name."""
        return [str(path) for path in sorted(self.variants.glob(f"*/{output}")) if path.is_dir()]

    def manifest_path(self, stage: str) -> Path:
        return self.root / self.STAGES / f"{stage}.json"

    def manifest_paths(self) -> list[Path]:
        """Every stage manifest written so far."""
        return sorted((self.root / self.STAGES).glob("*.json"))

    def manifest(self, stage: str) -> dict[str, Any] | None:
        """The stage's last manifest, or None when it never finished (or its file is not a manifest)."""
        path = self.manifest_path(stage)
        try:
            return Manifest.read(path).model_dump() if path.is_file() else None
        except SpecializeError:
            return None

    def inputs_key(self, head: str) -> str:
        """A key of ``head`` and the label stage's three input files (corpus, queries, candidates)."""
        digest = hashlib.sha256(head.encode())
        for path in (self.corpus, self.queries, self.candidates):
            digest.update(fingerprint(path).encode())
        return digest.hexdigest()[:16]

    def labels_key(self, teacher: str) -> str:
        """What ``labels.jsonl`` depends on: the teacher (its spec) and the three input files."""
        return self.inputs_key(teacher)

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
        manifest = Manifest(
            stage=stage, version=__version__, config_hash=wanted_hash, inputs=wanted_inputs,
            outputs={name: fingerprint(self.path(name)) for name in outputs}, counts=counts,
            seconds=round(time.perf_counter() - started, 3), finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        manifest.write(self.manifest_path(stage))
        return {**manifest.model_dump(), "skipped": False}

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
