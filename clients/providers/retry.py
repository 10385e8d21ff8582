"""The retry policy the HTTP providers share: which answers to retry and how long to wait."""

from __future__ import annotations

import random

import httpx2

#: Request timeout, lock timeout, rate limit; every 5xx (529 = overloaded) is retried too.
RETRY_STATUS = frozenset({408, 409, 429})
MAX_WAIT_S = 120.0


def retryable_status(status: int) -> bool:
    return status in RETRY_STATUS or status >= 500


def retry_delay(attempt: int, headers: httpx2.Headers | None) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): the server's retry-after, else jittered exponential."""
    if headers is not None:
        for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
            raw = headers.get(name)
            try:
                if raw is not None:
                    return min(max(float(raw) * scale, 0.0), MAX_WAIT_S)
            except ValueError:
                pass  # an HTTP date: fall back to our own schedule
    return min(0.5 * 2**attempt, 60.0) * (1 - 0.25 * random.random())
