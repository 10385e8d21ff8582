"""The timing phase of a candidate job: candidate, eager and torch.compile, interleaved."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from kfoundry.profilers.breakdown import op_breakdown
from kfoundry.profilers.timing import bench, cache_flusher, input_sets
from kfoundry.schema import State

if TYPE_CHECKING:
    from kfoundry.verify.harness import Harness


def _forward(model: Any) -> Any:
    def call(args: Any) -> Any:
        return model(*args)

    return call


def _graphed(fn: Any, static_args: Any) -> Any:
    """Capture ``fn(static_args)`` once; the returned callable replays it (arguments are ignored)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(stream):
        for _ in range(2):
            fn(static_args)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        fn(static_args)
    torch.cuda.synchronize()

    def replay(args: Any) -> None:
        graph.replay()

    return replay


def profile_job(harness: Harness, problem: ModuleType, reference: torch.nn.Module, candidate: torch.nn.Module, request: dict[str, Any]) -> None:
    from kfoundry.verify.harness import JobFailed, error_detail

    warmup = int(request.get("warmup", 3))
    reps = int(request.get("reps", 20))
    baselines = list(request.get("baselines", ["eager", "compile"]))
    seeds = iter(int(s) for s in request["seeds"])
    warnings: list[str] = []

    contenders: dict[str, Any] = {"candidate": _forward(candidate)}
    if "eager" in baselines:
        contenders["eager"] = _forward(reference)
    sets = input_sets(lambda: harness.make_inputs(problem, next(seeds)), count=len(request["seeds"]))
    if "compile" in baselines:
        harness.stage("timing", "compiling the torch.compile baseline")
        try:
            compiled = torch.compile(reference)
            with torch.no_grad():
                compiled(*sets[0])
            contenders["compile"] = _forward(compiled)
        except Exception as exc:  # noqa: BLE001 - a missing inductor toolchain only drops this baseline
            warnings.append(f"torch.compile baseline unavailable: {type(exc).__name__}: {str(exc)[:300]}")

    if request.get("cuda_graph") and harness.device.startswith("cuda"):
        harness.stage("timing", "capturing CUDA graphs")
        try:
            contenders = {name: _graphed(fn, sets[0]) for name, fn in contenders.items()}
            warnings.append("CUDA-graph replay: each contender replays one captured call on static input buffers (L2 is still flushed before every call).")
        except Exception as exc:  # noqa: BLE001 - capture fails for host syncs or dynamic shapes; time eagerly instead
            warnings.append(f"CUDA-graph capture failed, timed without graphs: {type(exc).__name__}: {str(exc)[:300]}")

    harness.stage("timing", f"{reps} interleaved repetitions of {', '.join(contenders)}")
    try:
        with torch.no_grad():
            samples = bench(contenders, sets, warmup=warmup, reps=reps, flush=cache_flusher(harness.device), device=harness.device)
    except BaseException as exc:  # noqa: BLE001
        raise JobFailed(State.runtime_error, error_detail(exc, "timing")) from exc

    breakdown: list[dict[str, Any]] = []
    baseline_breakdown: list[dict[str, Any]] = []
    if request.get("breakdown", True):
        harness.stage("profiling", "per-op breakdown")
        backend = harness.backend
        is_own = backend.is_own_kernel if backend is not None else (lambda name: False)
        try:
            with torch.no_grad():
                if backend is not None:
                    with backend.instrument():
                        shares = op_breakdown(lambda: candidate(*sets[0]), is_own=is_own, device=harness.device)
                else:
                    shares = op_breakdown(lambda: candidate(*sets[0]), is_own=is_own, device=harness.device)
                breakdown = [s.model_dump() for s in shares]
                baseline_breakdown = [
                    s.model_dump() for s in op_breakdown(lambda: reference(*sets[0]), is_own=lambda name: False, device=harness.device)
                ]
        except Exception as exc:  # noqa: BLE001 - a failed breakdown leaves the timings valid
            warnings.append(f"per-op breakdown failed: {type(exc).__name__}: {str(exc)[:300]}")

    harness.channel.send(
        {"op": "timing", "samples": samples, "breakdown": breakdown, "baseline_breakdown": baseline_breakdown, "warnings": warnings}
    )
