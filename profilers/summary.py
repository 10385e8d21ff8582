"""Summary statistics of timed samples (no torch: the server summarises what workers measured)."""

from __future__ import annotations

import statistics

from kfoundry.schema import Timing


def summarize(samples: list[float]) -> Timing:
    """Median, inter-quartile range, min, mean and coefficient of variation of ms samples.

    Raises:
        ValueError: when ``samples`` is empty.
    """
    if not samples:
        raise ValueError("summarize needs at least one sample")
    mean = statistics.fmean(samples)
    if len(samples) >= 2:
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
        stdev = statistics.stdev(samples)
    else:
        q1 = q3 = samples[0]
        stdev = 0.0
    return Timing(
        median_ms=statistics.median(samples),
        iqr_ms=q3 - q1,
        min_ms=min(samples),
        mean_ms=mean,
        cov=stdev / mean if mean > 0 else 0.0,
        n=len(samples),
    )
