"""The timing phase of a candidate job: candidate, eager and torch.compile, interleaved."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from kfoundry.profilers.breakdown import op_breakdown
from kfoundry.profilers.timing import bench, cache_flusher, input_sets
from kfoundry.schema import State
from kfoundry.verify import precision as numerics
from kfoundry.runner.wire import encode_tensors

if TYPE_CHECKING:
    from kfoundry.verify.harness import Harness


def _forward(model: Any) -> Any:
    def call(args: Any) -> Any:
        return model(*args)

    return call


def _under(policy: numerics.Policy, fn: Any, device: str) -> Any:
    """``fn`` run with ``policy``'s flags, and under autocast to its type when it rounds."""
    dtype = policy.round_dtype()

    def call(args: Any) -> Any:
        with numerics.numerics(policy):
            if dtype is None:
                return fn(args)
            with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dtype):
                return fn(args)

    return call


def _outputs(value: Any) -> list[Any]:
    values = list(value) if isinstance(value, (tuple, list)) else [value]
    return [v.detach().clone() if isinstance(v, torch.Tensor) else v for v in values]


def _copy_into(static: Any, fresh: Any) -> Any:
    for dst, src in zip(static, fresh, strict=False):
        if isinstance(dst, torch.Tensor) and isinstance(src, torch.Tensor):
            dst.copy_(src)
    return static


def _graphed(fn: Any, static_args: Any) -> Any:
    """Capture ``fn(static_args)`` once; the returned callable replays it and returns the captured outputs."""
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

    def replay(args: Any) -> Any:
        graph.replay()
        return static_out

    return replay


def profile_job(harness: Harness, problem: ModuleType, reference: torch.nn.Module, candidate: torch.nn.Module, request: dict[str, Any]) -> None:
    from kfoundry.verify.harness import JobFailed, error_detail

    warmup = int(request.get("warmup", 3))
    reps = int(request.get("reps", 20))
    baselines = list(request.get("baselines", ["eager", "compile"]))
    seeds = iter(int(s) for s in request["seeds"])
    call_seeds = [int(s) for s in request.get("call_seeds", [])]
    sampled = {int(r) for r in request.get("sample", [])}
    policy = harness.policy
    warnings: list[str] = []

    # Baselines run under the candidate's policy and, when that is relaxed, strict as well.
    policies = [policy] + ([numerics.STRICT] if policy.relaxed else [])
    contenders: dict[str, Any] = {"candidate": _forward(candidate)}
    if "eager" in baselines:
        for p in policies:
            contenders[_label("eager", p, policy)] = _under(p, _forward(reference), harness.device)
    sets = input_sets(lambda: harness.make_inputs(problem, next(seeds)), count=len(request["seeds"]))
    if "compile" in baselines:
        harness.stage("timing", "compiling the torch.compile baseline")
        try:
            for p in policies:
                compiled = _under(p, _forward(torch.compile(reference)), harness.device)
                with torch.no_grad():
                    compiled(sets[0])
                contenders[_label("compile", p, policy)] = compiled
        except Exception as exc:  # noqa: BLE001 - a missing inductor toolchain only drops this baseline
            warnings.append(f"torch.compile baseline unavailable: {type(exc).__name__}: {str(exc)[:300]}")

    # Every timed call of the candidate reads inputs it has never seen (made from the server's
    # seeds outside the timed window); the last few stay alive so addresses rotate too.
    recent: list[Any] = []

    def fresh_inputs(rep: int) -> Any:
        inputs = harness.make_inputs(problem, call_seeds[rep])
        recent.append(inputs)
        del recent[:-3]
        return inputs

    fresh = {"candidate": fresh_inputs} if len(call_seeds) >= reps else {}
    if request.get("cuda_graph") and harness.device.startswith("cuda"):
        harness.stage("timing", "capturing CUDA graphs")
        try:
            contenders = {name: _graphed(fn, sets[0]) for name, fn in contenders.items()}
            if fresh:
                fresh = {"candidate": lambda rep: _copy_into(sets[0], fresh_inputs(rep))}
            warnings.append("CUDA-graph replay: each contender replays one captured call on static input buffers (L2 is still flushed before every call).")
        except Exception as exc:  # noqa: BLE001 - capture fails for host syncs or dynamic shapes; time eagerly instead
            warnings.append(f"CUDA-graph capture failed, timed without graphs: {type(exc).__name__}: {str(exc)[:300]}")

    kept: dict[int, list[Any]] = {}

    def keep(name: str, rep: int, out: Any) -> None:
        if name == "candidate" and rep in sampled:
            kept[rep] = _outputs(out)

    harness.stage("timing", f"{reps} interleaved repetitions of {', '.join(contenders)}")
    try:
        with torch.no_grad():
            samples = bench(contenders, sets, warmup=warmup, reps=reps, flush=cache_flusher(harness.device), device=harness.device,
                            fresh=fresh, keep=keep)
    except BaseException as exc:  # noqa: BLE001
        raise JobFailed(State.runtime_error, error_detail(exc, "timing")) from exc
    recent.clear()
    for rep in sorted(kept):
        entries, blob = encode_tensors(kept.pop(rep))
        harness.channel.send({"op": "timed_output", "rep": rep, "seed": call_seeds[rep], "outputs": entries}, blob)

    breakdown: list[dict[str, Any]] = []
    baseline_breakdown: list[dict[str, Any]] = []
    if request.get("breakdown", True):
        harness.stage("profiling", "per-op breakdown")
        backend = harness.backend
        is_own = backend.is_own_kernel if backend is not None else (lambda name: False)
        allowed_ops = {f"aten::{op}" for op in request.get("allow_ops", [])}
        try:
            with torch.no_grad():
                if backend is not None:
                    with backend.instrument():
                        shares = op_breakdown(lambda: candidate(*sets[0]), is_own=is_own, device=harness.device, allowed=allowed_ops.__contains__)
                else:
                    shares = op_breakdown(lambda: candidate(*sets[0]), is_own=is_own, device=harness.device, allowed=allowed_ops.__contains__)
                breakdown = [s.model_dump() for s in shares]
                baseline_breakdown = [
                    s.model_dump() for s in op_breakdown(lambda: reference(*sets[0]), is_own=lambda name: False, device=harness.device)
                ]
        except Exception as exc:  # noqa: BLE001 - a failed breakdown leaves the timings valid
            warnings.append(f"per-op breakdown failed: {type(exc).__name__}: {str(exc)[:300]}")

    harness.channel.send(
        {"op": "timing", "samples": samples, "breakdown": breakdown, "baseline_breakdown": baseline_breakdown, "warnings": warnings}
    )


def _label(baseline: str, p: numerics.Policy, declared: numerics.Policy) -> str:
    """``eager``/``compile`` under the declared policy; ``eager_strict``/``compile_strict`` beside a relaxed one."""
    return baseline if p == declared else f"{baseline}_{p.name}"
