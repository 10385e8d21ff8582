"""Numerics policies: what precision a candidate may compute in, and how its error is judged.

One place names every policy. ``strict`` keeps the problem's dtypes (no TF32, no
downcasts) and the dtype tolerances of ``compare``; a relaxed policy lets the candidate
round inputs and weights to a narrower type (accumulating in at least fp32) and judges it
against a float64 oracle, relative to the error an honest implementation at that
precision makes: the reference itself, run with the policy's flags on operands (inputs,
parameters, buffers) converted to the policy's type, accumulating in fp32.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch

from kfoundry.verify.policies import POLICIES as POLICIES
from kfoundry.verify.policies import STRICT as STRICT
from kfoundry.verify.policies import Policy as Policy
from kfoundry.verify.policies import PolicyName as PolicyName
from kfoundry.verify.policies import policy as policy

#: A candidate passes when its RMS error against the float64 oracle is at most this many
#: times the honest error at its precision (as ``torch._dynamo.utils.same``'s RMSE gate).
ERROR_FACTOR = 2.0

#: explicit mantissa bits per floating type, and of the next narrower format a shortcut would use
#: (fp64 -> fp32, fp32 -> TF32, the 16-bit types -> fp8 e4m3)
_MANTISSA: dict[torch.dtype, int] = {torch.float64: 52, torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}
_NARROWER: dict[torch.dtype, int] = {torch.float64: 23, torch.float32: 10, torch.float16: 3, torch.bfloat16: 3}


_FLAG_PATHS = (
    (torch.backends.cuda.matmul, "allow_tf32"),
    (torch.backends.cudnn, "allow_tf32"),
)


def apply_flags(p: Policy) -> None:
    """Set the process's TF32 flags for ``p`` (a worker does this before any candidate code loads)."""
    for obj, attr in _FLAG_PATHS:
        setattr(obj, attr, p.tf32)


@contextlib.contextmanager
def numerics(p: Policy) -> Iterator[None]:
    """Run a block with ``p``'s TF32 flags, restoring the previous ones afterwards."""
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr in _FLAG_PATHS]
    apply_flags(p)
    try:
        yield
    finally:
        for obj, attr, value in saved:
            setattr(obj, attr, value)


def _truncate_tf32(t: torch.Tensor) -> torch.Tensor:
    """fp32 values with the 13 mantissa bits TF32 lacks cleared: what a tensor core reads from raw fp32."""
    bits = t.float().contiguous().view(torch.int32) & ~((1 << 13) - 1)
    return bits.view(torch.float32).to(t.dtype)


def _round(t: torch.Tensor, p: Policy) -> torch.Tensor:
    if not (t.is_floating_point() and t.dtype in (torch.float32, torch.float64)):
        return t
    dtype = p.round_dtype()
    if dtype is not None:
        return t.to(dtype).to(t.dtype)
    # TF32 operands are truncated, as tensor cores treat raw fp32 (Triton's default); cuBLAS
    # rounds to nearest, which errs less and so passes the same bound.
    return _truncate_tf32(t) if p.tf32 else t


def rounded_inputs(values: list[Any], p: Policy) -> list[Any]:
    """Floating inputs converted to the policy's operand type and back (what an honest kernel reads)."""
    if not p.relaxed:
        return list(values)
    return [_round(v, p) if isinstance(v, torch.Tensor) else v for v in values]


def rounded_model(model: torch.nn.Module, p: Policy) -> torch.nn.Module:
    """A copy of ``model`` whose floating parameters and buffers went through the policy's operand type."""
    if not p.relaxed:
        return model
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for tensor in [*twin.parameters(), *twin.buffers()]:
            tensor.copy_(_round(tensor, p))
    return twin


def _as_double(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.double()
    return value


def oracle_model(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of ``model`` (the oracle the errors are measured against)."""
    return copy.deepcopy(model).double()


def oracle_inputs(values: list[Any]) -> list[Any]:
    return [_as_double(v) for v in values]


def rms_error(value: torch.Tensor, oracle: torch.Tensor) -> float:
    """Root-mean-square difference over the entries where both are finite."""
    a, b = value.double().reshape(-1), oracle.double().reshape(-1)
    finite = torch.isfinite(a) & torch.isfinite(b)
    if not bool(finite.any()):
        return 0.0
    return float(((a[finite] - b[finite]) ** 2).mean().sqrt())


def rms(value: torch.Tensor) -> float:
    v = value.double().reshape(-1)
    v = v[torch.isfinite(v)]
    return float((v**2).mean().sqrt()) if v.numel() else 0.0


def _to_tf32(t: torch.Tensor) -> torch.Tensor:
    """Round-to-nearest onto TF32's 10 explicit mantissa bits (fp32 with the low 13 bits cleared)."""
    bits = t.float().contiguous().view(torch.int32)
    rounded = (bits + (1 << 12)) & ~((1 << 13) - 1)
    return rounded.view(torch.float32)


def rounding_error(oracle: torch.Tensor, p: Policy) -> float:
    """RMS error of rounding the oracle's values once to the policy's narrowest type."""
    dtype = p.round_dtype()
    rounded = oracle.to(dtype) if dtype is not None else _to_tf32(oracle) if p.tf32 else oracle.float()
    return rms_error(rounded.double(), oracle)


def error_bound(honest_error: float, oracle: torch.Tensor, p: Policy) -> float:
    """The most error a candidate may make: ``ERROR_FACTOR`` times the honest error.

    The honest error is floored at one rounding of the oracle's values to the policy's
    type, so an output that an honest run happens to get exactly right (a max, a copy)
    still leaves room for storing results at the precision the policy allows.
    """
    return ERROR_FACTOR * max(honest_error, rounding_error(oracle, p))


def strict_bound(honest_error: float, oracle: torch.Tensor, dtype: torch.dtype, fine: bool = True) -> tuple[float, float]:
    """(bound, coarse): the most RMS error a strict candidate may make in ``dtype``, and the reduced-precision yardstick.

    A candidate that keeps the problem's precision may still sum in another order than the
    reference (a plain loop against a blocked BLAS: a few to tens of times the reference's
    error on long reductions), while one that rounds its operands to a narrower format
    (TF32, bf16, fp8 for 16-bit problems) lands near one rounding of the outputs to that
    format: hundreds to thousands of times more. The bound is the geometric midpoint of
    the two, ``sqrt(floor * coarse)``, at least ``ERROR_FACTOR * floor``: a candidate must
    be closer, on a log scale, to the honest error at the problem's precision than to the
    narrower format's. ``floor`` is the honest error, at least one rounding of the oracle to
    ``dtype`` and half an ulp of the oracle's RMS magnitude (so an exact reference leaves
    room for a last-bit difference); ``coarse`` is the expected RMS error of rounding values of
    the oracle's RMS magnitude to the narrower format's mantissa once. Magnitudes come from this output's oracle, so an output
    of values far below ``atol`` (softmax rows) is judged at its own scale.

    ``fine=False`` (inputs of a stress family) accepts up to ``coarse`` itself: those inputs change
    the problem's conditioning, and an honest plain-loop fp32 softmax on ``wide`` rows (one logit
    dominating, thousands of terms below half an ulp of the running sum) errs about 500 ulps,
    one fifth of ``coarse`` and three times the midpoint. The midpoint's finer line is drawn on the
    problem's own inputs; on a family's, a candidate must still err less than one rounding to the
    narrower format.
    """
    bits = _MANTISSA.get(dtype, 23)
    values = oracle.double().reshape(-1)
    values = values[torch.isfinite(values)]
    if values.numel() == 0:
        return 0.0, 0.0
    magnitude = float(values.pow(2).mean().sqrt())
    half_ulp = magnitude * 2.0 ** -(bits + 1)
    floor = max(honest_error, rms_error(values.to(dtype), values), half_ulp)
    # The expected RMS of one rounding (uniform error within half an ulp), not the realised one:
    # a scalar output may happen to sit on the narrower grid and would leave no room at all.
    coarse = magnitude * 2.0 ** -(_NARROWER.get(dtype, 10) + 1) / 3**0.5
    line = (floor * coarse) ** 0.5 if fine else coarse
    return max(ERROR_FACTOR * floor, line), coarse
