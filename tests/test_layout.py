"""The layout the docs describe (docs/layout.md): stages stand on the library floor and never on each other, and only
``Workdir`` names the work directory's files."""

from __future__ import annotations

import ast
from pathlib import Path

import specialize

PACKAGE = Path(specialize.__file__).parent
TOP = {"specialize", "specialize.pipeline", "specialize.cli"}
"""The orchestration above the stages (and the package, whose ``Pipeline`` is the pipeline's): the only modules that import
several stages."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """The ``specialize`` modules a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("specialize"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("specialize"))
    return found


def stage_of(module: str) -> str | None:
    """``specialize.stages.label.audit`` -> ``label``; None for the floor and the top."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "stages" else None


def graph() -> dict[str, set[str]]:
    return {module_name(path): imported(path) for path in PACKAGE.rglob("*.py")}


def test_no_stage_imports_another_stage():
    crossings = sorted(f"{module} -> {target}" for module, targets in graph().items() for target in targets
                       if stage_of(module) and stage_of(target) and stage_of(target) != stage_of(module))
    assert crossings == []


def test_the_floor_imports_no_stage_and_nothing_above_it():
    upward = sorted(f"{module} -> {target}" for module, targets in graph().items() if not stage_of(module) and module not in TOP
                    for target in targets if stage_of(target) or target in TOP - {"specialize"})  # the package root: its __version__
    assert upward == []


def test_the_graph_is_read_from_real_files():
    modules = graph()
    assert {"specialize.retrieval", "specialize.metrics", "specialize.datasets", "specialize.records", "specialize.workdir"} <= set(modules)
    assert {stage_of(m) for m in modules} - {None} == {"prepare", "generate", "mine", "label", "train", "evaluate", "report"}
    assert "specialize.retrieval" in modules["specialize.stages.mine"]  # the checker sees what a stage uses


ALLOWED = {("datasets.py", "corpus.jsonl")}
"""BEIR's own file name for a dataset's corpus, read from the source folder: not the work directory's artifact."""


def artifact_literals(path: Path, names: set[str]) -> list[str]:
    """The string constants of a file that name a work-directory artifact: a file name anywhere (docstrings aside), a
    folder name as the right side of ``<work...> / "<folder>"``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    files, folders = {name for name in names if "." in name}, {name for name in names if "." not in name}
    hits = [node for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            and node.value in files and (path.name, node.value) not in ALLOWED]
    hits += [node.right for node in ast.walk(tree) if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
             and isinstance(node.right, ast.Constant) and node.right.value in folders and "work" in ast.unparse(node.left)]
    return [f"{path.name}:{node.lineno}: {node.value!r}" for node in hits]
