"""do_bench-shaped measurement, run inside a sandboxed worker process.

The rules, from DESIGN.md: fixed warm-up and repetition counts (never adaptive to the
candidate's first calls), caches flushed before every timed call, fresh input buffers per
call, a device-wide synchronize so work on side streams cannot leave the timed window
early, and contenders interleaved so drift (thermal, frequency, neighbours) hits all of
them alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

# Bound at import: candidate code imported later may monkeypatch ``time`` to fake speed.
_clock = time.perf_counter
# Likewise the CUDA event API: a candidate replacing Event.elapsed_time cannot reach these.
_Event = torch.cuda.Event
_elapsed = torch.cuda.Event.elapsed_time
_record = torch.cuda.Event.record
_synchronize = torch.cuda.synchronize

_CACHE_SYSFS = Path("/sys/devices/system/cpu/cpu0/cache")
_FALLBACK_LLC_BYTES = 32 << 20
# A 2x-LLC buffer on a server part (hundreds of MiB of L3 shared by the whole host, of which a
# small VM gets a slice) would cost tens of ms per flush, more than the calls being timed;
# 128 MiB evicts the working sets of CPU-sized problems at a few ms per flush.
_MAX_CPU_FLUSH_BYTES = 128 << 20
#: ~0.2 ms of device clock cycles before a queued turn
_HEAD_START_CYCLES = 400_000

Contender = Callable[[Sequence[Any]], Any]
#: ``fresh[name](r)`` gives contender ``name`` the inputs of its timed call ``r`` (made outside the timed window)
Fresh = Callable[[int], Sequence[Any]]
#: ``keep(name, r, output)`` sees each timed call's output after its timing has ended
Keep = Callable[[str, int, Any], None]


def bench(
    contenders: dict[str, Contender],
    input_sets: list[Sequence[Any]],
    *,
    warmup: int = 3,
    reps: int = 20,
    flush: Callable[[], None] | None = None,
    device: str = "cpu",
    fresh: dict[str, Fresh] | None = None,
    keep: Keep | None = None,
) -> dict[str, list[float]]:
    """Time every contender ``reps`` times, interleaved, and return the samples in ms.

    Repetition ``r`` runs all contenders once, starting at contender ``r % n``; call ``k``
    of repetition ``r`` gets ``input_sets[(r * n + k) % len(input_sets)]``, so consecutive
    calls never reuse the buffers the previous call just pulled into cache. A contender in
    ``fresh`` gets new inputs for every timed call instead, so nothing it remembers from an
    earlier call (by address, identity or content) can stand in for the work.

    Raises:
        ValueError: when there are no contenders or no input sets.
    """
    if not contenders or not input_sets:
        raise ValueError("bench needs at least one contender and one input set")
    names = list(contenders)
    n = len(names)
    cuda = device.startswith("cuda")
    for name in names:
        for w in range(warmup):
            contenders[name](input_sets[w % len(input_sets)])
    if cuda:
        torch.cuda.synchronize()

    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for k in range(n):
            name = names[(r + k) % n]
            provider = (fresh or {}).get(name)
            inputs = provider(r) if provider is not None else input_sets[(r * n + k) % len(input_sets)]
            if cuda:
                ms, out = _time_cuda(contenders[name], inputs, flush)
            else:
                if flush is not None:
                    flush()
                ms, out = _time_host(contenders[name], inputs)
            samples[name].append(ms)
            if keep is not None:
                keep(name, r, out)
            del out
    return samples


def run_queued(
    fn: Callable[[int], Any],
    count: int,
    flush: CacheFlusher | None,
    device: str,
    *,
    before: Callable[[int], None] | None = None,
    after: Callable[[int, Any], None] | None = None,
) -> list[float]:
    """Time ``fn(0) .. fn(count - 1)`` as ``triton.testing.do_bench`` does and return the ms of each call.

    On a GPU the calls are queued back to back, each between its own pair of events with the
    cache flush queued before it, and the host waits once, at the end: the host runs ahead of
    the device, so launch latency is hidden exactly as in do_bench, and an event waits for the
    device rather than for Python. Work a call leaves on the streams it created is joined before
    its end event (billed to it); the device-wide synchronize at the end means nothing can still
    be running when the events are read. ``before(k)`` runs before call ``k``'s flush and
    ``after(k, output)`` right after its end event, both outside the timed window; on a GPU
    whatever they queue runs between the calls, so they must not wait for the device.

    On the CPU each call is flushed and then timed by the host clock.
    """
    samples: list[float] = []
    if not device.startswith("cuda"):
        for k in range(count):
            if before is not None:
                before(k)
            if flush is not None:
                flush()
            start = _clock()
            out = fn(k)
            samples.append((_clock() - start) * 1e3)
            if after is not None:
                after(k, out)
            del out
        return samples
    _synchronize()
    if flush is not None:
        # Persisting L2 lines survive the overwrite; the reset may wait for the device, so once per turn.
        flush.reset()
    current = torch.cuda.current_stream()
    events = [(_Event(enable_timing=True), _Event(enable_timing=True)) for _ in range(count)]
    # The device starts idle: a short spin gives the host a head start, so the first call's start
    # event waits for the device like every later one, not for the host's launch.
    torch.cuda._sleep(_HEAD_START_CYCLES)
    for k in range(count):
        if before is not None:
            before(k)
        if flush is not None:
            flush.queue()
        for stream in _side_streams():
            stream.wait_stream(current)
        _record(events[k][0])
        out = fn(k)
        for stream in _side_streams():
            current.wait_stream(stream)
        _record(events[k][1])
        if after is not None:
            after(k, out)
        del out
    _synchronize()
    return [float(_elapsed(start, end)) for start, end in events]


def _time_host(fn: Contender, inputs: Sequence[Any]) -> tuple[float, Any]:
    start = _clock()
    out = fn(inputs)
    return (_clock() - start) * 1e3, out


def _time_cuda(fn: Contender, inputs: Sequence[Any], flush: Callable[[], None] | None) -> tuple[float, Any]:
    # Device-wide: anything a previous call left on any stream is finished before this one.
    _synchronize()
    start = _Event(enable_timing=True)
    end = _Event(enable_timing=True)
    if flush is not None:
        # Enqueued, not waited for: the GPU stays busy flushing while the host launches the
        # call, so the events measure GPU time rather than Python launch latency.
        flush()
    current = torch.cuda.current_stream()
    side = _side_streams()
    for stream in side:
        # Side streams start after the flush too, as the current stream does.
        stream.wait_stream(current)
    _record(start)
    out = fn(inputs)
    for stream in _side_streams():
        # Work the call left on streams it created ends before the end event: billed to it.
        current.wait_stream(stream)
    _record(end)
    _synchronize()
    return float(_elapsed(start, end)), out


_streams: list[Any] = []


def _side_streams() -> list[Any]:
    if not _streams:
        return []
    current = torch.cuda.current_stream()
    return [s for s in _streams if isinstance(s, torch.cuda.Stream) and s != current]


def track_streams() -> None:
    """Remember every CUDA stream created from Python from now on (call before candidate code loads).

    Streams made in native code are invisible here; the CUPTI cross-check catches their work.
    """
    for cls in (torch.cuda.Stream, torch.cuda.ExternalStream):
        original = cls.__new__
        if getattr(original, "_kfoundry", False):
            continue

        def tracked(klass: type, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
            stream = __original(klass, *args, **kwargs)
            if isinstance(stream, torch.cuda.Stream):
                _streams.append(stream)
            return stream

        tracked._kfoundry = True  # type: ignore[attr-defined]
        cls.__new__ = tracked  # type: ignore[method-assign]


def llc_bytes() -> int:
    """Size of the largest CPU cache level this host reports (a fallback when sysfs is absent)."""
    sizes = []
    for entry in _CACHE_SYSFS.glob("index*/size"):
        try:
            sizes.append(_parse_size(entry.read_text()))
        except (OSError, ValueError):
            continue
    return max(sizes, default=_FALLBACK_LLC_BYTES)


def _parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text[:-1] if text[-1:] in "KMG" else text
    return int(digits) * scale


class CacheFlusher:
    """Evicts the problem's data from the caches when called; ``buffer`` is what it overwrites."""

    def __init__(self, buffer: torch.Tensor, *, cuda: bool) -> None:
        self.buffer = buffer
        self._cuda = cuda
        # Persisting L2 lines (cudaAccessPolicyWindow) survive a plain overwrite; only some
        # torch builds expose the reset.
        self._reset_l2 = (
            getattr(torch.cuda, "reset_persisting_l2_cache", None)
            or getattr(torch._C, "_cuda_resetPersistingL2Cache", None)
            if cuda
            else None
        )

    def __call__(self) -> None:
        self.queue()
        self.reset()

    def queue(self) -> None:
        """Overwrite the buffer (on a GPU: queued, not waited for)."""
        if self._cuda:
            self.buffer.zero_()
        else:
            # A read-modify-write, so dirty lines of the problem's data are evicted as well.
            self.buffer.add_(1)

    def reset(self) -> None:
        """Drop persisting L2 lines (a GPU's access-policy window), which an overwrite leaves in place."""
        if self._reset_l2 is not None:
            self._reset_l2()


def cache_flusher(device: str = "cpu") -> CacheFlusher:
    """A callable that evicts the problem's data from the caches before a timed call.

    CPU: a float32 buffer twice the last-level cache, written per call. CUDA: a buffer at
    least twice the L2 (256 MiB floor, as ``triton.testing.do_bench``), zeroed per call.
    """
    if device.startswith("cuda"):
        dev = torch.device(device)
        l2 = int(getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 0))
        nbytes = max(2 * l2, 256 << 20)
        return CacheFlusher(torch.empty(nbytes // 4, dtype=torch.float32, device=dev), cuda=True)
    nbytes = min(2 * llc_bytes(), _MAX_CPU_FLUSH_BYTES)
    return CacheFlusher(torch.zeros(nbytes // 4, dtype=torch.float32), cuda=False)


def input_sets(make: Callable[[], Sequence[Any]], count: int, budget_bytes: int = 256 << 20) -> list[Sequence[Any]]:
    """Up to ``count`` distinct input sets from ``make()``, within ``budget_bytes``.

    Never fewer than two, whatever the budget: rotation between at least two sets is
    what keeps a call from finding its inputs still in cache from the previous call.
    """
    first = make()
    per_set = max(_nbytes(first), 1)
    want = max(2, min(count, budget_bytes // per_set))
    return [first, *(make() for _ in range(want - 1))]


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0


def time_call(fn: Contender, inputs: Sequence[Any], flush: Callable[[], None] | None, device: str) -> tuple[float, Any]:
    """One call timed the way ``bench`` times each repetition: (ms, output)."""
    if device.startswith("cuda"):
        return _time_cuda(fn, inputs, flush)
    if flush is not None:
        flush()
    return _time_host(fn, inputs)


def graphed(fn: Contender, static_args: Sequence[Any]) -> Contender:
    """Capture ``fn(static_args)`` once as a CUDA graph; the returned callable replays it and returns the captured outputs.

    Callers write each call's values into ``static_args`` before replaying.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(stream):
        for _ in range(2):
            fn(static_args)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_out = fn(static_args)
    torch.cuda.synchronize()

    def replay(args: Sequence[Any]) -> Any:
        graph.replay()
        return static_out

    return replay
