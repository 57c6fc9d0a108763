"""Paired comparisons over queries: the mean difference of two systems' per-query scores and its bootstrap interval."""

from __future__ import annotations

import numpy as np

RESAMPLES = 10_000


def paired_interval(deltas: np.ndarray, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of paired differences (a point when they are all equal)."""
    from scipy.stats import bootstrap

    if np.ptp(deltas) == 0:
        return float(deltas[0]), float(deltas[0])
    result = bootstrap((deltas,), np.mean, confidence_level=confidence, n_resamples=RESAMPLES, method="percentile", rng=seed)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)
