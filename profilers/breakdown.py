"""Per-op (CPU) or per-kernel (CUDA) self-time breakdown from torch.profiler."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from kfoundry.schema import KernelShare

# Rows the profiler adds about itself, not work the model did.
_BOOKKEEPING = ("ProfilerStep", "[memory]")
# Templated CUDA kernel names run to hundreds of characters; the head identifies them.
_NAME_LIMIT = 240


def op_breakdown(
    fn: Callable[[], Any],
    *,
    is_own: Callable[[str], bool],
    calls: int = 3,
    device: str = "cpu",
    top: int = 12,
) -> list[KernelShare]:
    """Self time per op (CPU) or per kernel (CUDA) for one call of ``fn``, largest first.

    ``fn`` runs once untimed (first calls pay for lazy init, oneDNN primitive creation,
    autotuning) and then ``calls`` times under the profiler; times are per call. Rows past
    ``top`` are folded into one ``other`` entry.
    """
    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    fn()
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        if cuda:
            torch.cuda.synchronize()

    averages = prof.key_averages()
    if cuda:
        # Kernel rows only: a CPU op's "self device time" repeats the kernels it launched.
        rows = [
            (evt.key, float(evt.self_device_time_total), evt.count)
            for evt in averages
            if evt.device_type == DeviceType.CUDA and not getattr(evt, "is_user_annotation", False)
        ]
    else:
        rows = [(evt.key, float(evt.self_cpu_time_total), evt.count) for evt in averages]
    rows = [r for r in rows if r[1] > 0 and not r[0].startswith(_BOOKKEEPING)]
    own_kernels = _kernels_under_own_ranges(prof.events(), is_own) if cuda else set()

    def owned(name: str) -> bool:
        return is_own(name) or name in own_kernels

    return shares(rows, calls=calls, is_own=owned, top=top)


def shares(
    rows: Iterable[tuple[str, float, int]],
    *,
    calls: int,
    is_own: Callable[[str], bool],
    top: int = 12,
) -> list[KernelShare]:
    """Turn ``(name, total self µs, event count)`` rows into sorted per-call shares."""
    ordered = sorted(rows, key=lambda r: r[1], reverse=True)
    total = sum(r[1] for r in ordered)
    if total <= 0:
        return []
    per_call = max(calls, 1)

    def entry(name: str, us: float, count: int, own: bool) -> KernelShare:
        return KernelShare(
            name=name if len(name) <= _NAME_LIMIT else name[: _NAME_LIMIT - 3] + "...",
            time_ms=us / 1e3 / per_call,
            share=us / total,
            calls=max(1, round(count / per_call)),
            own=own,
        )

    kept = [entry(name, us, count, is_own(name)) for name, us, count in ordered[:top]]
    rest = ordered[top:]
    if rest:
        kept.append(entry("other", sum(r[1] for r in rest), sum(r[2] for r in rest), False))
    return kept


def _kernels_under_own_ranges(events: Iterable[Any], is_own: Callable[[str], bool]) -> set[str]:
    """Names of kernels launched inside a CPU range the backend marks as its own.

    A Triton or inline-CUDA kernel's symbol may not say whose it is; the ``triton::…``
    or ``cuda::…`` range the backend wraps around the launch does.
    """
    found: set[str] = set()
    stack = [evt for evt in events if evt.device_type == DeviceType.CPU and is_own(evt.name)]
    while stack:
        evt = stack.pop()
        found.update(k.name for k in getattr(evt, "kernels", ()))
        stack.extend(getattr(evt, "cpu_children", ()) or ())
    return found
