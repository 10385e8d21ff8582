"""Trusted comparison of candidate outputs against the reference's (runs in the server)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kfoundry.schema import Finding, MismatchDetail, PrecisionCheck, Sample, State
from kfoundry.verify import precision as numerics
from kfoundry.verify.policies import DTYPE_TOLERANCES
from kfoundry.verify.verdict import worst_checks

#: Default (atol, rtol) per dtype: fp32 and wider 1e-4, half types 1e-2, integers exact.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {getattr(torch, name): pair for name, pair in DTYPE_TOLERANCES.items()}
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


#: elements compared at once: bounds the float64 temporaries of a multi-GB output to ~1 GB
CHUNK = 1 << 24


def compare_tensor(expected: torch.Tensor, got: torch.Tensor, atol: float | None, rtol: float | None) -> MismatchDetail | None:
    """None when ``got`` matches; otherwise what differs, with numbers an agent can act on.

    Works chunk by chunk on the tensors' device, so a multi-GB output is compared in place.
    """
    base = {"expected_shape": list(expected.shape), "got_shape": list(got.shape), "expected_dtype": str(expected.dtype).removeprefix("torch."), "got_dtype": str(got.dtype).removeprefix("torch.")}
    if expected.shape != got.shape:
        return MismatchDetail(reason="shape", message=f"shape {list(got.shape)} but the reference returns {list(expected.shape)}", **base)
    if expected.dtype != got.dtype:
        return MismatchDetail(reason="dtype", message=f"dtype {base['got_dtype']} but the reference returns {base['expected_dtype']}", **base)
    a, r = tolerance(expected.dtype, atol, rtol)
    if expected.numel() == 0:
        return None
    if got.device != expected.device:
        got = got.to(expected.device)
    flat_e, flat_g = expected.reshape(-1), got.reshape(-1)
    count = nonfinite_count = 0
    max_abs, max_rel, bad_at = 0.0, None, []
    for start in range(0, flat_e.numel(), CHUNK):
        e64, g64 = flat_e[start:start + CHUNK].double(), flat_g[start:start + CHUNK].double()
        finite_pair = torch.isfinite(e64) & torch.isfinite(g64)
        if not expected.is_floating_point() and not expected.is_complex():
            bad = e64 != g64
        else:
            e_nan, g_nan = torch.isnan(e64), torch.isnan(g64)
            e_inf, g_inf = torch.isinf(e64), torch.isinf(g64)
            nonfinite_bad = (e_nan != g_nan) | (e_inf != g_inf) | (e_inf & g_inf & (e64 != g64))
            close = (e64 - g64).abs() <= a + r * e64.abs()
            bad = nonfinite_bad | (finite_pair & ~close)
        diff = torch.where(finite_pair, (e64 - g64).abs(), torch.zeros_like(e64))
        max_abs = max(max_abs, float(diff.max()))
        if bool(finite_pair.any()):
            rel = float((diff / e64.abs().clamp_min(1e-12))[finite_pair].max())
            max_rel = rel if max_rel is None else max(max_rel, rel)
        chunk_bad = int(bad.sum())
        if chunk_bad:
            count += chunk_bad
            nonfinite_count += int((bad & ~finite_pair).sum())
            if len(bad_at) < MAX_SAMPLES:
                bad_at += [start + int(i) for i in bad.nonzero().reshape(-1)[: MAX_SAMPLES - len(bad_at)]]
    if count == 0:
        return None
    samples = [
        Sample(index=_index(i, expected.shape), expected=_value(flat_e[i]), got=_value(flat_g[i]))
        for i in bad_at
    ]
    nonfinite_only = nonfinite_count == count
    reason = "nonfinite" if nonfinite_only else "values"
    fraction = count / expected.numel()
    message = (
        f"{count} of {expected.numel()} values ({fraction:.2%}) differ beyond atol={a:g}, rtol={r:g}; "
        f"max abs error {max_abs:.3g}"
    )
    if nonfinite_only:
        message = f"{count} values have NaN/inf where the reference does not (or the reverse)"
    return MismatchDetail(
        reason=reason, message=message, max_abs_error=max_abs, max_rel_error=max_rel,
        bad_fraction=fraction, first_bad_index=_index(bad_at[0], expected.shape), samples=samples, atol=a, rtol=r, **base,
    )


def all_finite(t: torch.Tensor) -> bool:
    """No NaN or inf anywhere (chunk by chunk: no full-size temporary)."""
    if not (t.is_floating_point() or t.is_complex()):
        return True
    flat = t.reshape(-1)
    return all(bool(torch.isfinite(flat[i:i + CHUNK]).all()) for i in range(0, flat.numel(), CHUNK))


def is_constant(t: torch.Tensor) -> bool:
    """Every element equal to the first (or all NaN), for tensors of two or more elements."""
    if t.numel() < 2:
        return False
    flat = t.reshape(-1)
    first = flat[0]
    if t.is_floating_point() and bool(torch.isnan(first)):
        return all(bool(torch.isnan(flat[i:i + CHUNK]).all()) for i in range(0, flat.numel(), CHUNK))
    return all(bool((flat[i:i + CHUNK] == first).all()) for i in range(0, flat.numel(), CHUNK))


def fingerprint(t: torch.Tensor) -> str:
    """A hash of a tensor's bytes, computed on its device chunk by chunk (replays and late writes show as equal or changed)."""
    flat = t.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return f"{t.dtype}:{tuple(t.shape)}:empty"
    raw = flat.view(torch.uint8)
    words = raw.view(torch.int32) if raw.numel() % 4 == 0 else raw
    plain = weighted = 0
    weights = torch.arange(min(CHUNK, words.numel()), device=words.device, dtype=torch.int64) % 65521 + 1
    for start in range(0, words.numel(), CHUNK):
        chunk = words[start:start + CHUNK].to(torch.int64)
        plain += int(chunk.sum())
        weighted += int((chunk * weights[: chunk.numel()]).sum())
    return f"{t.dtype}:{tuple(t.shape)}:{plain & (2**64 - 1):x}:{weighted & (2**64 - 1):x}"


def compare_to_oracle(
    expected: torch.Tensor, got: torch.Tensor, oracle: torch.Tensor, honest: torch.Tensor, policy: numerics.Policy,
) -> tuple[MismatchDetail | None, PrecisionCheck]:
    """Judge ``got`` under a relaxed policy: RMS error against the float64 oracle within the honest bound."""
    base = {"expected_shape": list(expected.shape), "got_shape": list(got.shape), "expected_dtype": str(expected.dtype).removeprefix("torch."), "got_dtype": str(got.dtype).removeprefix("torch.")}
    error = numerics.rms_error(got, oracle) if got.shape == oracle.shape else float("inf")
    honest_error = numerics.rms_error(honest, oracle) if honest.shape == oracle.shape else 0.0
    bound = numerics.error_bound(honest_error, oracle, policy)
    check = PrecisionCheck(output_index=0, trial=0, candidate_error=error, honest_error=honest_error, bound=bound, passed=False)
    if expected.shape != got.shape or expected.dtype != got.dtype:
        return compare_tensor(expected, got, 0.0, 0.0), check
    # NaN/inf where an honest run at this precision stays finite is wrong whatever the error budget.
    nonfinite = ~torch.isfinite(got.double()) & torch.isfinite(honest.double()) & torch.isfinite(oracle.double())
    if bool(nonfinite.any()):
        count = int(nonfinite.sum())
        return MismatchDetail(reason="nonfinite", message=f"{count} values are NaN/inf where the float64 oracle and an honest {policy.name} run are finite", bad_fraction=count / max(got.numel(), 1), **base), check
    check.passed = error <= bound
    if check.passed:
        return None, check
    message = (
        f"RMS error against the float64 oracle is {error:.3g}, more than {numerics.ERROR_FACTOR:g}x the error of an honest "
        f"{policy.name} computation ({honest_error:.3g}; bound {bound:.3g}): the candidate computes in lower precision than "
        f"'{policy.name}' allows, or is wrong"
    )
    return MismatchDetail(reason="precision", message=message, max_abs_error=float((got.double() - oracle).abs().nan_to_num(0.0).max()), **base), check


#: the narrower format a strict candidate's error is measured against, per output dtype
_NARROWER_NAME = {torch.float64: "fp32", torch.float32: "TF32", torch.float16: "fp8", torch.bfloat16: "fp8"}
#: fewest subnormal reference outputs for a flush-to-zero verdict, and the share that must come back as zero
_MIN_SUBNORMALS = 4
_FLUSHED_SHARE = 0.9


def ieee_semantics(expected: torch.Tensor, got: torch.Tensor, oracle: torch.Tensor | None = None) -> str | None:
    """What IEEE behaviour the candidate drops where the reference and the oracle both define it, or None.

    Fast-math breaks more than rounding: ``-fno-signed-zeros`` folds ``x * 0`` to ``+0``, and
    flush-to-zero (``-ffast-math``'s startup code, DAZ/FTZ bits, ``.ftz`` instructions) turns
    subnormal results into zeros. Both are invisible to an error norm (the values are tiny),
    so they are checked where they occur: a ``-0.0`` the reference and the oracle both
    produce must come back negative, and when the reference returns subnormal values the
    oracle agrees are nonzero, nearly all of them coming back as exact zeros is a flush.
    NaN and infinity positions are ``compare_tensor``'s. Without an oracle for the trial the
    reference's outputs alone define what is expected.
    """
    oracle = expected if oracle is None else oracle
    if not expected.is_floating_point() or expected.shape != got.shape or expected.shape != oracle.shape or got.dtype != expected.dtype:
        return None
    e_all, g_all, o_all = expected.reshape(-1), got.reshape(-1), oracle.reshape(-1)
    if o_all.device != e_all.device:
        o_all = o_all.to(e_all.device)
    if g_all.device != e_all.device:
        g_all = g_all.to(e_all.device)
    tiny = torch.finfo(expected.dtype).tiny
    negative_zeros = lost = subnormals = flushed = 0
    # Chunk by chunk, as compare_tensor: a multi-GB output gets masks of CHUNK elements, not of its size.
    for start in range(0, e_all.numel(), CHUNK):
        e, g, o = e_all[start:start + CHUNK], g_all[start:start + CHUNK], o_all[start:start + CHUNK]
        negative_zero = (e == 0) & torch.signbit(e) & (o == 0) & torch.signbit(o)
        negative_zeros += int(negative_zero.sum())
        lost += int((negative_zero & ~torch.signbit(g)).sum())
        subnormal = (e != 0) & (e.abs() < tiny) & (o != 0)
        subnormals += int(subnormal.sum())
        flushed += int((subnormal & (g == 0)).sum())
    if lost:
        return (f"{lost} of the {negative_zeros} outputs that are -0.0 in the reference (and the float64 oracle, where there is one) "
                "come back as +0.0: signed zeros are not kept (fast-math's -fno-signed-zeros, or x*0 folded to 0)")
    if subnormals >= _MIN_SUBNORMALS and flushed >= _FLUSHED_SHARE * subnormals:
        return (f"{flushed} of the {subnormals} subnormal outputs of the reference come back as exact zeros: the candidate flushes "
                "denormals to zero (fast-math, FTZ/DAZ flags or .ftz instructions)")
    return None


def compare_strict(
    expected: torch.Tensor, got: torch.Tensor, oracle: torch.Tensor, atol: float | None, rtol: float | None,
    honest: torch.Tensor | None = None, fine: bool = True,
) -> tuple[MismatchDetail | None, PrecisionCheck | None]:
    """Judge ``got`` under the strict policy: the dtype tolerances, then the error against the float64 oracle.

    ``honest`` is an honest run at the problem's precision; the reference's own output
    (``expected``) is one, so it stands in when none is given. The tolerances alone cannot
    tell precision apart on outputs far below ``atol`` (softmax rows of 8192 values, each
    about 1e-4, pass atol=1e-4 whatever is computed), so a candidate inside them must also
    keep its RMS error against the oracle within ``precision.strict_bound``. Compensated
    reduced-precision internals (3xTF32, bf16x3 split GEMMs) reach fp32's error and pass; bf16
    or TF32 operands do not. IEEE behaviour the reference defines is checked too (``ieee_semantics``).
    """
    detail = compare_tensor(expected, got, atol, rtol)
    floating = expected.is_floating_point() and got.dtype == expected.dtype and got.shape == expected.shape == oracle.shape
    if not floating:
        return detail, None
    honest = expected if honest is None or honest.shape != oracle.shape else honest
    error, honest_error = numerics.rms_error(got, oracle), numerics.rms_error(honest, oracle)
    bound, coarse = numerics.strict_bound(honest_error, oracle, expected.dtype, fine)
    check = PrecisionCheck(output_index=0, trial=0, candidate_error=error, honest_error=honest_error, bound=bound, passed=False)
    if detail is not None:
        return detail, check
    base = {"expected_shape": list(expected.shape), "got_shape": list(got.shape), "expected_dtype": str(expected.dtype).removeprefix("torch."), "got_dtype": str(got.dtype).removeprefix("torch.")}
    semantics = ieee_semantics(expected, got, oracle)
    if semantics is not None:
        return MismatchDetail(reason="values", message=semantics, **base), check
    check.passed = error <= bound
    if check.passed:
        return None, check
    dtype = base["expected_dtype"]
    message = (
        f"RMS error against the float64 oracle is {error:.3g}: inside atol/rtol, but outside {dtype} behaviour. The reference's own "
        f"{dtype} error is {honest_error:.3g}; one rounding of the outputs to {_NARROWER_NAME.get(expected.dtype, 'a narrower format')} "
        f"errs {coarse:.3g}; strict accepts up to {bound:.3g} ({'their geometric midpoint' if fine else 'that rounding, on stress inputs'}). The candidate computes below the problem's "
        f"precision (narrower operands or accumulator, approximate math), or is wrong. Compensated schemes (3xTF32, bf16x3) that reach "
        f"{dtype}'s error pass; otherwise compute in {dtype}, or pass a relaxed precision policy if the problem allows it"
    )
    worst = float((got.double() - oracle.double()).abs().nan_to_num(0.0).max())
    return MismatchDetail(reason="precision", message=message, max_abs_error=worst, **base), check


@dataclass
class Verdict:
    state: State
    trials_passed: int
    mismatch: MismatchDetail | None = None
    findings: list[Finding] = field(default_factory=list)
    checks: list[PrecisionCheck] = field(default_factory=list)


@dataclass
class Oracle:
    """Per trial, the float64 oracle's outputs and an honest run's at the policy (absent trials: none computed).

    Under strict the reference's own outputs are the honest run at the problem's precision,
    so ``honest`` may stay empty: the oracle alone lets a trial be judged by the numbers.
    """

    policy: numerics.Policy = numerics.STRICT
    #: strict's line between the problem's precision and a narrower one: the geometric midpoint on the
    #: problem's own inputs; one rounding to the narrower format on a stress family's (``strict_bound``)
    fine: bool = True
    oracle: dict[int, list[torch.Tensor | None]] = field(default_factory=dict)
    honest: dict[int, list[torch.Tensor | None]] = field(default_factory=dict)

    def judges(self, trial: int) -> bool:
        if not self.policy.relaxed:
            return trial in self.oracle
        return trial in self.oracle and trial in self.honest


def _item(values: list[torch.Tensor | None], i: int) -> torch.Tensor | None:
    return values[i] if i < len(values) else None


def judge(
    expected: list[list[torch.Tensor | None]], got: list[list[tuple[torch.Tensor | None, bool, str]]],
    atol: float | None, rtol: float | None, oracle: Oracle | None = None,
) -> Verdict:
    """Compare per trial; the first failing trial decides the verdict.

    ``got`` holds (tensor, is_plain_tensor, type_name) per output. Trials with oracle outputs
    are judged by the numbers: under a relaxed policy against the honest run at its precision
    (``compare_to_oracle``); under strict by the dtype tolerances and the error against the
    oracle relative to the reference's own (``compare_strict``). Trials without an oracle fall
    back to the tolerances.
    """
    oracle = oracle or Oracle()
    checks: list[PrecisionCheck] = []
    verdict = _judge(expected, got, atol, rtol, oracle, checks)
    verdict.checks = worst_checks(checks)
    return verdict


def _judge(expected: list[list[torch.Tensor | None]], got: list[list[tuple[torch.Tensor | None, bool, str]]],
           atol: float | None, rtol: float | None, oracle: Oracle, checks: list[PrecisionCheck]) -> Verdict:
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
            o, h = _item(oracle.oracle.get(trial, []), i), _item(oracle.honest.get(trial, []), i)
            if oracle.judges(trial) and o is not None and h is not None and oracle.policy.relaxed:
                detail, check = compare_to_oracle(e, g, o, h, oracle.policy)
                checks.append(check.model_copy(update={"output_index": i, "trial": trial}))
            elif oracle.judges(trial) and o is not None and not oracle.policy.relaxed:
                detail, strict_check = compare_strict(e, g, o, atol, rtol, h, oracle.fine)
                if strict_check is not None:
                    checks.append(strict_check.model_copy(update={"output_index": i, "trial": trial}))
            else:
                if oracle.policy.relaxed:
                    # No oracle (an op without float64 kernels): the 16-bit tolerances stand in.
                    atol, rtol = (1e-2 if atol is None else atol), (1e-2 if rtol is None else rtol)
                detail = compare_tensor(e, g, atol, rtol)
                if detail is None and not oracle.policy.fast_math:
                    semantics = ieee_semantics(e, g)
                    if semantics is not None:
                        detail = MismatchDetail(reason="values", message=semantics)
                if o is not None and g.shape == o.shape and e.shape == o.shape:
                    checks.append(PrecisionCheck(
                        output_index=i, trial=trial, candidate_error=numerics.rms_error(g, o),
                        honest_error=numerics.rms_error(e, o), passed=detail is None,
                    ))
            if detail is not None:
                detail.trial, detail.output_index = trial, i
                return Verdict(State.mismatch, passed, detail)
        passed += 1
    return Verdict(State.correct, passed)
