"""The numerics policies by name, and the default tolerances per dtype name (no torch: the server reads them).

``precision`` holds what judging under a policy needs (oracle models, error bounds); this module only
names the contracts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import torch

PolicyName = Literal["strict", "tf32", "bf16", "fp16"]
#: Default (atol, rtol) per dtype name: fp32 and wider 1e-4, half types 1e-2, integers exact.
DTYPE_TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-4, 1e-4),
    "float32": (1e-4, 1e-4),
    "float16": (1e-2, 1e-2),
    "bfloat16": (1e-2, 1e-2),
}


def tolerance_for(dtype_name: str, atol: float | None, rtol: float | None) -> tuple[float, float]:
    """The caller's tolerances, or the defaults of ``dtype_name`` (``"float32"``) where not given."""
    default = DTYPE_TOLERANCES.get(dtype_name.removeprefix("torch."), (0.0, 0.0))
    return (default[0] if atol is None else atol, default[1] if rtol is None else rtol)


class Policy(BaseModel):
    """A named numerics contract, shared by verify, profile, the guardrails and the roofline."""

    model_config = ConfigDict(frozen=True)

    name: PolicyName
    summary: str
    tf32: bool = Field(description="TF32 tensor-core math allowed (and switched on for the candidate and the baselines).")
    round_to: str | None = Field(default=None, description="Type inputs and weights may be rounded to ('bfloat16', 'float16').")
    #: reduced-precision kinds a candidate may use under this policy
    allows: frozenset[str] = frozenset()
    #: the roofline's peak-FLOP column for this policy
    peak: Literal["fp32", "tf32", "bf16", "fp16"]
    fast_math: bool = False

    @property
    def relaxed(self) -> bool:
        return self.name != "strict"

    def round_dtype(self) -> torch.dtype | None:
        import torch  # the server reads policies without torch; only workers round

        return getattr(torch, self.round_to) if self.round_to else None

    def allows_kind(self, kind: str) -> bool:
        """Whether a reduced-precision kind ('tf32', 'bf16', 'fp16', 'fp8', 'fast_math') is permitted."""
        if kind == "fast_math":
            return self.fast_math
        return kind in self.allows


POLICIES: dict[str, Policy] = {p.name: p for p in (
    Policy(name="strict", summary="the problem's dtypes; no TF32, no downcasts, no fast-math", tf32=False, peak="fp32"),
    Policy(name="tf32", summary="fp32 matmuls/convolutions may use TF32 tensor cores", tf32=True,
           allows=frozenset({"tf32"}), peak="tf32", fast_math=True),
    Policy(name="fp16", summary="inputs and weights may be rounded to float16; accumulate in fp32 or wider", tf32=True,
           round_to="float16", allows=frozenset({"tf32", "fp16"}), peak="fp16", fast_math=True),
    Policy(name="bf16", summary="inputs and weights may be rounded to bfloat16; accumulate in fp32 or wider", tf32=True,
           round_to="bfloat16", allows=frozenset({"tf32", "bf16", "fp16"}), peak="bf16", fast_math=True),
)}
STRICT = POLICIES["strict"]


def policy(name: str | Policy | None) -> Policy:
    """The policy called ``name`` (``None`` means strict).

    Raises:
        ValueError: for an unknown name.
    """
    if isinstance(name, Policy):
        return name
    if name is None:
        return STRICT
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown precision policy {name!r}; known: {', '.join(POLICIES)}") from None
