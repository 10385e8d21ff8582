"""Errors raised to callers (not candidate outcomes, which are states in results).

    KfoundryError
    ├── BadRequest          arguments are wrong; the message says what to send instead
    └── Unavailable         the backend or device is not usable on this host
"""

from __future__ import annotations


class KfoundryError(Exception):
    pass


class BadRequest(KfoundryError, ValueError):
    pass


class Unavailable(KfoundryError):
    pass
