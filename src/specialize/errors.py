"""The one exception type for user mistakes: the CLI prints it as a single line and exits 2."""

from __future__ import annotations

from pathlib import Path


class SpecializeError(Exception):
    """A problem the user can fix (bad input, missing model, offline download); never a bug."""


def located(path: str | Path, line: int | None, message: str) -> SpecializeError:
    """An error that names the file and, when known, the 1-based line it comes from."""
    where = f"{path}:{line}" if line is not None else str(path)
    return SpecializeError(f"{where}: {message}")
