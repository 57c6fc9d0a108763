"""Stage counts per query type: counted as (outcome, type) pairs, recorded as totals plus a ``by_type`` table.

A manifest's counts hold plain totals (``"kept": 40``) and, for the stages that count per query type, one nested
table ``"by_type": {"claim": {"generated": 20, "kept": 18, ...}, ...}``: a type's name is a key, never a suffix
to parse back out of a flat key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

BY_TYPE = "by_type"


class TypeCounts:
    """Outcomes (``kept``, ``dropped_roundtrip``...) counted per query type."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()

    def add(self, outcome: str, kind: str, n: int = 1) -> None:
        self._counts[outcome, kind] += n

    def summary(self, outcomes: Sequence[str], types: Iterable[str]) -> dict[str, Any]:
        """Each outcome's total over ``types``, and the ``by_type`` table (types in first-seen order)."""
        names = list(dict.fromkeys(types))
        return {
            **{outcome: sum(self._counts[outcome, kind] for kind in names) for outcome in outcomes},
            BY_TYPE: {kind: {outcome: self._counts[outcome, kind] for outcome in outcomes} for kind in names},
        }


def by_type(counts: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """A manifest's counts per query type, ``{type: {outcome: n}}`` ({} when the stage counts none)."""
    table = counts.get(BY_TYPE)
    return {str(kind): dict(row) for kind, row in table.items()} if isinstance(table, Mapping) else {}


def totals(counts: Mapping[str, Any]) -> dict[str, Any]:
    """A manifest's plain counts: everything but the per-type table."""
    return {key: value for key, value in counts.items() if key != BY_TYPE}
