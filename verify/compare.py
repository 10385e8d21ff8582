"""Trusted comparison of candidate outputs against the reference's (runs in the server)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kfoundry.schema import Finding, MismatchDetail, Sample, State

#: Default (atol, rtol) per dtype: fp32 and wider 1e-4, half types 1e-2, integers exact.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-4, 1e-4),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (1e-2, 1e-2),
}
MAX_SAMPLES = 5


def tolerance(dtype: torch.dtype, atol: float | None, rtol: float | None) -> tuple[float, float]:
    default = TOLERANCES.get(dtype, (0.0, 0.0))
    return (default[0] if atol is None else atol, default[1] if rtol is None else rtol)


def _index(flat: int, shape: torch.Size) -> list[int]:
    index: list[int] = []
    for dim in reversed(shape):
        index.append(flat % dim if dim else 0)
        flat = flat // dim if dim else 0
    return list(reversed(index))


def _value(t: torch.Tensor) -> float | str:
    v = t.item()
    if isinstance(v, bool):
        return float(v)
    f = float(v)
    return f if f == f and abs(f) != float("inf") else str(f)


def compare_tensor(expected: torch.Tensor, got: torch.Tensor, atol: float | None, rtol: float | None) -> MismatchDetail | None:
    """None when ``got`` matches; otherwise what differs, with numbers an agent can act on."""
    base = {"expected_shape": list(expected.shape), "got_shape": list(got.shape), "expected_dtype": str(expected.dtype).removeprefix("torch."), "got_dtype": str(got.dtype).removeprefix("torch.")}
    if expected.shape != got.shape:
        return MismatchDetail(reason="shape", message=f"shape {list(got.shape)} but the reference returns {list(expected.shape)}", **base)
    if expected.dtype != got.dtype:
        return MismatchDetail(reason="dtype", message=f"dtype {base['got_dtype']} but the reference returns {base['expected_dtype']}", **base)
    a, r = tolerance(expected.dtype, atol, rtol)
    if expected.numel() == 0:
        return None
    if not expected.is_floating_point() and not expected.is_complex():
        bad = expected != got
        e64, g64 = expected.double(), got.double()
    else:
        e64, g64 = expected.double(), got.double()
        e_nan, g_nan = torch.isnan(e64), torch.isnan(g64)
        e_inf, g_inf = torch.isinf(e64), torch.isinf(g64)
        nonfinite_bad = (e_nan != g_nan) | (e_inf != g_inf) | (e_inf & g_inf & (e64 != g64))
        finite = ~(e_nan | e_inf) & ~(g_nan | g_inf)
        close = (e64 - g64).abs() <= a + r * e64.abs()
        bad = nonfinite_bad | (finite & ~close)
    count = int(bad.sum())
    if count == 0:
        return None
    finite_pair = torch.isfinite(e64) & torch.isfinite(g64)
    diff = torch.where(finite_pair, (e64 - g64).abs(), torch.zeros_like(e64))
    rel = diff / e64.abs().clamp_min(1e-12)
    flat_bad = bad.reshape(-1).nonzero().reshape(-1)
    first = int(flat_bad[0])
    samples = [
        Sample(index=_index(int(i), expected.shape), expected=_value(expected.reshape(-1)[i]), got=_value(got.reshape(-1)[i]))
        for i in flat_bad[:MAX_SAMPLES]
    ]
    nonfinite_only = bool((bad & ~finite_pair).sum() == count)
    reason = "nonfinite" if nonfinite_only else "values"
    fraction = count / expected.numel()
    message = (
        f"{count} of {expected.numel()} values ({fraction:.2%}) differ beyond atol={a:g}, rtol={r:g}; "
        f"max abs error {float(diff.max()):.3g}"
    )
    if nonfinite_only:
        message = f"{count} values have NaN/inf where the reference does not (or the reverse)"
    return MismatchDetail(
        reason=reason, message=message, max_abs_error=float(diff.max()), max_rel_error=float(rel[finite_pair].max()) if bool(finite_pair.any()) else None,
        bad_fraction=fraction, first_bad_index=_index(first, expected.shape), samples=samples, atol=a, rtol=r, **base,
    )


@dataclass
class Verdict:
    state: State
    trials_passed: int
    mismatch: MismatchDetail | None = None
    findings: list[Finding] = field(default_factory=list)


def judge(expected: list[list[torch.Tensor | None]], got: list[list[tuple[torch.Tensor | None, bool, str]]], atol: float | None, rtol: float | None) -> Verdict:
    """Compare per trial; the first failing trial decides the verdict.

    ``got`` holds (tensor, is_plain_tensor, type_name) per output.
    """
    passed = 0
    for trial, (want, have) in enumerate(zip(expected, got, strict=True)):
        if len(want) != len(have):
            detail = MismatchDetail(trial=trial, reason="count", message=f"{len(have)} outputs but the reference returns {len(want)}")
            return Verdict(State.mismatch, passed, detail)
        for i, (e, (g, plain, type_name)) in enumerate(zip(want, have, strict=True)):
            if g is None or not plain:
                finding = Finding(code="output_type", message=f"output {i} is a {type_name}, not a plain torch.Tensor")
                return Verdict(State.rejected, passed, MismatchDetail(trial=trial, output_index=i, reason="type", message=finding.message), [finding])
            if e is None:
                detail = MismatchDetail(trial=trial, output_index=i, reason="type", message=f"the reference returns a non-tensor as output {i}")
                return Verdict(State.mismatch, passed, detail)
            detail = compare_tensor(e, g, atol, rtol)
            if detail is not None:
                detail.trial, detail.output_index = trial, i
                return Verdict(State.mismatch, passed, detail)
        passed += 1
    return Verdict(State.correct, passed)
