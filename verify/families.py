"""Input families by name, and which ones a verify runs (no torch: the server plans trials with them)."""

from __future__ import annotations

from typing import Literal

Family = Literal["signed", "large", "tiny", "wide", "special"]
FAMILIES: tuple[Family, ...] = ("signed", "large", "tiny", "wide", "special")
#: run by every verify, one trial each, after the problem's own trials
DEFAULT_FAMILIES: tuple[Family, ...] = ("wide",)
#: families whose inputs hold NaN and infinities on purpose: non-finite reference outputs are what they check, not a reason to drop them
NONFINITE_BY_DESIGN: frozenset[str] = frozenset({"special"})
STANDARD = "standard"


def default_plan(requested: list[str] | None) -> list[str]:
    """The families a verify runs: ``DEFAULT_FAMILIES`` first, then the caller's, each once."""
    return list(dict.fromkeys([*DEFAULT_FAMILIES, *(requested or [])]))
