"""Per-op (CPU) or per-kernel (CUDA) self-time breakdown from torch.profiler."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

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
    allowed: Callable[[str], bool] | None = None,
) -> list[KernelShare]:
    """Self time per op (CPU) or per kernel (CUDA) for one call of ``fn``, largest first.

    ``fn`` runs once untimed (first calls pay for lazy init, oneDNN primitive creation,
    autotuning) and then ``calls`` times under the profiler; times are per call. Rows past
    ``top`` are folded into ``other`` entries. On CUDA, kernels launched under a CPU op for
    which ``allowed`` is true (e.g. ``aten::mm`` when the user allows library GEMMs) are
    marked ``allowed``.
    """
    # torch here, not at import: the server turns profiler rows into shares without loading torch.
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

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
    events = prof.events() if cuda else []
    own_kernels = _kernels_under_ranges(events, is_own) if cuda else set()
    allowed_kernels = _kernels_under_ranges(events, allowed) if cuda and allowed is not None else set()

    def owned(name: str) -> bool:
        return is_own(name) or name in own_kernels

    return shares(rows, calls=calls, is_own=owned, top=top, is_allowed=lambda name: name in allowed_kernels)


def shares(
    rows: Iterable[tuple[str, float, int]],
    *,
    calls: int,
    is_own: Callable[[str], bool],
    top: int = 12,
    is_allowed: Callable[[str], bool] = lambda name: False,
) -> list[KernelShare]:
    """Turn ``(name, total self µs, event count)`` rows into sorted per-call shares.

    Rows past ``top`` fold into ``other`` (library), ``other (own)`` and ``other (allowed)``
    entries, so the own and allowed shares stay exact.
    """
    ordered = sorted(rows, key=lambda r: r[1], reverse=True)
    total = sum(r[1] for r in ordered)
    if total <= 0:
        return []
    per_call = max(calls, 1)

    def entry(name: str, us: float, count: int, own: bool, allowed: bool = False) -> KernelShare:
        return KernelShare(
            name=name if len(name) <= _NAME_LIMIT else name[: _NAME_LIMIT - 3] + "...",
            time_ms=us / 1e3 / per_call,
            share=us / total,
            calls=max(1, round(count / per_call)),
            own=own,
            allowed=allowed and not own,
        )

    kept = [entry(name, us, count, is_own(name), is_allowed(name)) for name, us, count in ordered[:top]]
    groups: dict[tuple[str, bool, bool], list[tuple[str, float, int]]] = {}
    for row in ordered[top:]:
        own = is_own(row[0])
        allowed = not own and is_allowed(row[0])
        label = "other (own)" if own else "other (allowed)" if allowed else "other"
        groups.setdefault((label, own, allowed), []).append(row)
    for (label, own, allowed), rows_ in groups.items():
        kept.append(entry(label, sum(r[1] for r in rows_), sum(r[2] for r in rows_), own, allowed))
    return kept


def _kernels_under_ranges(events: Iterable[Any], matches: Callable[[str], bool]) -> set[str]:
    """Names of kernels launched inside a CPU range whose name ``matches``.

    A Triton or inline-CUDA kernel's symbol may not say whose it is; the ``triton::…``
    or ``cuda::…`` range the backend wraps around the launch does. Likewise a cuBLAS
    kernel's name does not say which aten op launched it; its ``aten::mm`` range does.
    """
    from torch.autograd import DeviceType

    found: set[str] = set()
    stack = [evt for evt in events if evt.device_type == DeviceType.CPU and matches(evt.name)]
    while stack:
        evt = stack.pop()
        found.update(k.name for k in getattr(evt, "kernels", ()))
        stack.extend(getattr(evt, "cpu_children", ()) or ())
    return found
