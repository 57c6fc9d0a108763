"""`make install` as a fresh machine runs it: a new virtual environment and an empty pip cache, so every package is
fetched again and llama-cpp-python (no Linux wheel on PyPI) is compiled from source.

Two measurements, each with a Makefile given by a git revision (``--before``, default the parent of the commit
that changed the build) and the working tree's Makefile (after):

- ``build``: only the llama-cpp-python wheel, built the way each Makefile builds it (its ``CMAKE_ARGS`` and
  ``CMAKE_BUILD_PARALLEL_LEVEL``), the part that dominates the install;
- ``install``: the whole ``make install`` (with ``--install``; minutes more each).

Writes ``results/install.json``; earlier runs' rows are kept.

    python benchmarks/install.py [--before REV] [--install]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, print_table, save  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LLAMA = re.search(r'"(llama-cpp-python==[^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)


def makefile_at(revision: str | None, folder: Path) -> Path:
    """The Makefile of ``revision`` (None: the working tree's), copied into ``folder``."""
    path = folder / f"Makefile.{revision or 'worktree'}"
    text = (REPO / "Makefile").read_text() if revision is None else subprocess.run(
        ["git", "show", f"{revision}:Makefile"], cwd=REPO, check=True, capture_output=True, text=True).stdout
    path.write_text(text)
    return path


BUILD_VARIABLES = ("CMAKE_ARGS", "CMAKE_BUILD_PARALLEL_LEVEL")


def build_environment(makefile: Path) -> dict[str, str]:
    """The build variables the Makefile exports to its recipes (pip's build of llama-cpp-python sees them)."""
    probe = 'probe-build-env: ; @echo "' + "|".join(f"$${name}" for name in BUILD_VARIABLES) + '"'
    clean = {key: value for key, value in os.environ.items() if key not in BUILD_VARIABLES}
    printed = subprocess.run(["make", "-s", "-f", str(makefile), "--eval", probe, "probe-build-env"], cwd=REPO, env=clean,
                             check=True, capture_output=True, text=True).stdout.strip()
    return {name: value for name, value in zip(BUILD_VARIABLES, printed.split("|"), strict=True) if value}


def timed(command: list[str], env: dict[str, str], log: Path) -> float:
    started = time.perf_counter()
    with open(log, "w") as out:
        subprocess.run(command, cwd=REPO, check=True, stdout=out, stderr=subprocess.STDOUT, env=env)
    return round(time.perf_counter() - started, 1)


def measure(label: str, makefile: Path, whole: bool, scratch: Path) -> dict:
    """Seconds to build the llama-cpp-python wheel (and, with ``whole``, of ``make install``) with an empty pip cache."""
    exported = build_environment(makefile)
    clean = {key: value for key, value in os.environ.items() if key not in BUILD_VARIABLES}
    env = {**clean, "PIP_CACHE_DIR": str(scratch / f"cache-{label}-build"), **exported}
    row = {"makefile": label, "build_env": " ".join(f"{k}={v}" for k, v in exported.items()) or "(none)"}
    wheels = scratch / f"wheels-{label}"
    row["llama_wheel_s"] = timed([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), LLAMA], env, scratch / f"build-{label}.log")
    if whole:
        env = {**clean, "PIP_CACHE_DIR": str(scratch / f"cache-{label}-install")}
        row["make_install_s"] = timed(["make", "-f", str(makefile), "install", f"VENV={scratch / f'venv-{label}'}"], env, scratch / f"install-{label}.log")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="HEAD", help="git revision of the Makefile before the change")
    parser.add_argument("--install", action="store_true", help="also time the whole make install, before and after")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="install-bench-") as folder:
        scratch = Path(folder)
        rows = [measure(label, makefile_at(revision, scratch), args.install, scratch)
                for label, revision in (("before", args.before), ("after", None))]
    for row in rows:
        row["cores"] = os.cpu_count()
    ratio = round(rows[0]["llama_wheel_s"] / rows[1]["llama_wheel_s"], 2)
    print_table(f"{LLAMA}: building its wheel with an empty pip cache (before / after = {ratio}x)", rows)
    previous = json.loads((RESULTS / "install.json").read_text()).get("history", []) if (RESULTS / "install.json").is_file() else []
    save("install", {"package": LLAMA, "rows": rows, "build_speedup": ratio, "history": previous + [rows]})


if __name__ == "__main__":
    main()
