"""Stress input families: the problem's own inputs, pushed where kernels tend to break.

Each family transforms the floating-point tensors ``get_inputs`` returned, so shapes,
integer arguments and any structure the problem builds (triangular, symmetric, sorted)
keep their layout. Scales are powers of two: exact in every float type, so the reference
and the candidate see bit-identical stressed inputs.

``DEFAULT_FAMILIES`` run on every verify beside the problem's own trials: an approximation
that only holds on the problem's distribution (``torch.rand`` never goes negative or past
1) must not pass. A family on which the reference itself goes non-finite or raises is
dropped with a finding, never held against the candidate.
"""

from __future__ import annotations

from typing import Any

import torch

from kfoundry.verify.families import DEFAULT_FAMILIES as DEFAULT_FAMILIES
from kfoundry.verify.families import FAMILIES, STANDARD
from kfoundry.verify.families import NONFINITE_BY_DESIGN as NONFINITE_BY_DESIGN
from kfoundry.verify.families import Family as Family
from kfoundry.verify.families import default_plan as default_plan

#: power-of-two exponents per family, for fp32/fp64 and for the 16-bit types (narrower range)
_EXPONENT: dict[str, tuple[int, int]] = {"large": (16, 6), "tiny": (-20, -6)}
#: ``wide``: each element's exponent moves by up to this much either way, and each input as a whole by 0..this
_SPREAD = 2
#: ``special``: positions per input that get each IEEE special value
_SPECIAL_EACH = 4


def _narrow(dtype: torch.dtype) -> bool:
    return dtype in (torch.float16, torch.bfloat16)


def _signs(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Drawn where the tensor lives, in a small type: a 6 GB GPU input must not round-trip through the host.
    return torch.randint(0, 2, t.shape, generator=generator, device=t.device, dtype=torch.int8).to(t.dtype) * 2 - 1


def _wide(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Signed, spread over a few octaves per element, and shifted by a scale of its own per input.

    Kernels that assume [0, 1) (a relu skipped on ``torch.rand``, a polynomial fitted to the
    unit interval, an unsigned trick) meet values of both signs up to 2^(2 * _SPREAD) times
    larger and 2^_SPREAD times smaller than the problem's, and two inputs no longer share a
    scale (a shortcut that relies on ``a`` and ``b`` being alike breaks too).
    """
    shift = int(torch.randint(0, _SPREAD + 1, (1,), generator=generator, device=t.device))
    octaves = torch.randint(-_SPREAD, _SPREAD + 1, t.shape, generator=generator, device=t.device, dtype=torch.int8) + shift
    # Powers of two up to 2^(2 * _SPREAD) are exact in every floating type.
    return t * _signs(t, generator) * torch.exp2(octaves.to(t.dtype))


def _special(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A few positions set to NaN, +inf, -inf, -0.0 and signed subnormals: the IEEE semantics fast-math drops.

    The reference's outputs say what each must become; ``compare`` checks NaN/inf
    positions, kept negative zeros and unflushed subnormals where the reference defines them.
    """
    specials = [float("nan"), float("inf"), float("-inf"), -0.0]
    tiny = torch.finfo(t.dtype).tiny
    specials += [tiny / 4, -tiny / 8]
    out = t.clone()
    flat = out.view(-1)
    count = min(flat.numel(), _SPECIAL_EACH * len(specials))
    if count == 0:
        return out
    positions = torch.randint(0, flat.numel(), (count,), generator=generator, device=t.device).tolist()
    for k, position in enumerate(positions):
        flat[position] = specials[k % len(specials)]
    return out


def _transform(t: torch.Tensor, family: str, generator: torch.Generator) -> torch.Tensor:
    if not t.is_floating_point():
        return t
    if family == "signed":
        # Random signs on every element: all-positive inputs (torch.rand) become signed too.
        return t * _signs(t, generator)
    if family == "wide":
        return _wide(t, generator)
    if family == "special":
        return _special(t.contiguous(), generator)
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
    generators: dict[torch.device, torch.Generator] = {}

    def on(device: torch.device) -> torch.Generator:
        if device not in generators:
            generators[device] = torch.Generator(device=device).manual_seed(seed + len(generators))
        return generators[device]

    return [_transform(v, family, on(v.device)) if isinstance(v, torch.Tensor) else v for v in values]
