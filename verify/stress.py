"""Stress input families: the problem's own inputs, pushed where kernels tend to break.

Each family rescales or re-signs the floating-point tensors ``get_inputs`` returned, so
shapes, integer arguments and any structure the problem builds (triangular, symmetric,
sorted) stay as the problem made them. Scales are powers of two: exact in every float
type, so the reference and the candidate see bit-identical stressed inputs.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

Family = Literal["signed", "large", "tiny"]
FAMILIES: tuple[Family, ...] = ("signed", "large", "tiny")
STANDARD = "standard"

#: power-of-two exponents per family, for fp32/fp64 and for the 16-bit types (narrower range)
_EXPONENT: dict[str, tuple[int, int]] = {"large": (16, 6), "tiny": (-20, -6)}


def _narrow(dtype: torch.dtype) -> bool:
    return dtype in (torch.float16, torch.bfloat16)


def _transform(t: torch.Tensor, family: str, generator: torch.Generator) -> torch.Tensor:
    if not t.is_floating_point():
        return t
    if family == "signed":
        # Random signs on every element: all-positive inputs (torch.rand) become signed too.
        signs = torch.randint(0, 2, t.shape, generator=generator, device="cpu").to(t.device, t.dtype) * 2 - 1
        return t * signs
    wide, narrow = _EXPONENT[family]
    return t * (2.0 ** (narrow if _narrow(t.dtype) else wide))


def stressed(values: list[Any], family: str, seed: int) -> list[Any]:
    """``values`` under ``family`` (``standard`` returns them unchanged).

    Raises:
        ValueError: for an unknown family.
    """
    if family == STANDARD:
        return values
    if family not in FAMILIES:
        raise ValueError(f"unknown stress family {family!r}; known: {', '.join(FAMILIES)}")
    generator = torch.Generator().manual_seed(seed)
    return [_transform(v, family, generator) if isinstance(v, torch.Tensor) else v for v in values]
