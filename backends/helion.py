"""Helion backend: PyTorch-with-tiles kernels (``@helion.kernel`` over ``hl.tile`` loops), generated into Triton.

Helion writes one Triton kernel per ``@helion.kernel`` function and specialisation, and Triton
compiles it when it first runs: on a CUDA device for real, on CPU-only hosts in Triton's
interpreter (the same ``TRITON_INTERPRET=1`` the Triton backend uses). Nothing here imports helion
or triton at module level: the server probes with ``find_spec``; only workers import them.

Autotuning is Helion's default and takes minutes per kernel, longer than a tool call should.
Workers set ``HELION_AUTOTUNE_EFFORT=none``: a kernel without a config runs Helion's default
config, one with ``config=`` runs that, and one with a short ``configs=[...]`` list is timed over
that list only. The generated Triton kernels are named ``_helion_<function>``; the Triton
backend's launch hook records and wraps each launch, so traces, kernel stats and attribution see
them, and only them, as own (torch ops in a kernel's host code stay library work).
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from kfoundry.backends import triton as triton_backend
from kfoundry.backends.base import KIND_NAMES, BuildRequest, BuildUnsupported, CompileOnlyOutcome, Resolve, Severity, SourceHit
from kfoundry.schema import Bottleneck, KernelStats, ToolchainInfo

#: the prefix Helion gives the Triton kernel it generates for a function
GENERATED_PREFIX = "_helion_"
#: torch calls (dotted, aliases expanded) that a Helion kernel lowers to ``tl.dot``
_MATMULS = frozenset({
    "torch.matmul", "torch.mm", "torch.bmm", "torch.addmm", "torch.baddbmm", "helion.language.dot",
})
_called: dict[str, Any] = {}
_patched: list[tuple[type, Any]] = []


def _is_kernel(node: ast.expr, resolve: Resolve) -> bool:
    parts = resolve(node)
    return len(parts) >= 2 and parts[0] == "helion" and parts[-1] == "kernel"


def _kernels(tree: ast.Module, resolve: Resolve) -> Iterator[tuple[ast.FunctionDef | ast.AsyncFunctionDef | None, ast.expr, str]]:
    """Every Helion kernel: (its function where known, the expression holding its settings, its name).

    Both spellings count: ``@helion.kernel`` / ``@helion.kernel(...)`` on a function, and a call
    ``helion.kernel(fn, ...)`` anywhere (the function is looked up among the module's definitions).
    """
    defined = {n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    decorators: set[int] = set()
    for fn in defined.values():
        for dec in fn.decorator_list:
            if _is_kernel(dec.func if isinstance(dec, ast.Call) else dec, resolve):
                decorators.add(id(dec))
                yield fn, dec, fn.name
                break
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and id(node) not in decorators and _is_kernel(node.func, resolve) and node.args:
            target = node.args[0]
            name = target.id if isinstance(target, ast.Name) else ast.unparse(target)
            yield defined.get(name), node, name


def _setting(settings: ast.expr, name: str) -> ast.expr | None:
    return next((k.value for k in settings.keywords if k.arg == name), None) if isinstance(settings, ast.Call) else None


def _spread(settings: ast.expr) -> bool:
    """Whether settings arrive as ``**mapping``, which a scan cannot read."""
    return isinstance(settings, ast.Call) and any(k.arg is None for k in settings.keywords)


def _literal(node: ast.expr | None) -> object:
    return node.value if isinstance(node, ast.Constant) else ...


def _fast_math(settings: ast.expr, name: str) -> SourceHit | None:
    node = _setting(settings, "fast_math")
    value = _literal(node)
    if value is True:
        return SourceHit(settings.lineno, f"helion.kernel(fast_math=True) on {name} compiles with approximate math (fast-math)", "fast_math")
    if node is not None and value is ...:
        return SourceHit(settings.lineno, f"helion.kernel on {name} takes fast_math from {ast.unparse(node)[:60]}, not a literal False (fast-math)", "fast_math")
    if _spread(settings):
        return SourceHit(settings.lineno, f"helion.kernel on {name} takes its settings from **mapping: fast_math and dot_precision cannot be read "
                                          "(pass them as literals)", "fast_math")
    return None


def _precision(tree: ast.Module, resolve: Resolve) -> Iterator[SourceHit]:
    """Matmuls lowered to TF32 (Helion's default ``dot_precision``) and fast-math, per kernel, however it is declared."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "HELION_FAST_MATH" in node.value:
            yield SourceHit(node.lineno, "names HELION_FAST_MATH, which turns on approximate math for Helion kernels (fast-math)", "fast_math")
    for fn, settings, name in _kernels(tree, resolve):
        hit = _fast_math(settings, name)
        if hit is not None:
            yield hit
        precision_node = _setting(settings, "dot_precision")
        precision = _literal(precision_node)
        if fn is None or (isinstance(precision, str) and precision.lower() == "ieee"):
            continue
        matmul = next((n for n in ast.walk(fn) if (isinstance(n, ast.Call) and ".".join(resolve(n.func)) in _MATMULS)
                       or (isinstance(n, ast.BinOp) and isinstance(n.op, ast.MatMult))), None)
        if matmul is None:
            continue
        if precision_node is None:
            said = "without dot_precision=\"ieee\" multiplies fp32 in TF32 on NVIDIA GPUs (Helion's default, from TRITON_F32_DEFAULT)"
        else:
            said = f"with dot_precision={ast.unparse(precision_node)} multiplies fp32 in {KIND_NAMES['tf32']}"
        yield SourceHit(matmul.lineno, f"the matmul in Helion kernel {name} {said}; pass dot_precision=\"ieee\" for strict fp32", "tf32")


def _generated(bound: Any) -> Any:
    """The Triton JIT function Helion generated for one bound kernel, when it has been compiled."""
    run = getattr(bound, "_run", None)
    names = getattr(getattr(run, "__code__", None), "co_names", ())
    module_globals = getattr(run, "__globals__", {})
    return next((module_globals[n] for n in names if n.startswith(GENERATED_PREFIX) and n in module_globals), None)


def _config_notes(bound: Any) -> list[str]:
    config = getattr(bound, "_config", None)
    return [f"config {config}"] if config is not None else ["not compiled yet (Helion binds a config on the first call)"]


class HelionBackend:
    name: ClassVar[str] = "helion"
    required_patterns: ClassVar[tuple[str, ...]] = (r"@\s*helion\.kernel",)
    marker: ClassVar[str] = "a function decorated with @helion.kernel (loops over hl.tile), called from ModelNew.forward"
    oneshot: ClassVar[Path] = Path(__file__).resolve().parent.parent / "prompts" / "oneshot" / "helion.py"
    notes: ClassVar[str] = (
        "Write @helion.kernel functions (import helion, helion.language as hl): host code allocates outputs "
        "(torch.empty_like / torch.empty(..., device=x.device)), then `for tile in hl.tile(n)` (or hl.tile([m, n])) loops "
        "hold the device code, written with torch ops on tiles (x[tile], torch.sigmoid, torch.matmul / hl.dot, sums "
        "over a tile dim). Helion generates and compiles a Triton kernel per function. Autotuning is off here: give "
        "config=helion.Config(block_sizes=[...], num_warps=...) or a short configs=[...] list, otherwise Helion's default "
        "config runs. For fp32 matmuls under the strict policy pass dot_precision=\"ieee\" (the default is TF32). "
        "Accumulate reductions and dots in fp32 (hl.zeros([tile_m, tile_n], dtype=torch.float32))."
    )
    rule_defaults: ClassVar[Mapping[str, Severity]] = {}

    def probe(self) -> ToolchainInfo:
        missing = [m for m in ("helion", "triton") if importlib.util.find_spec(m) is None]
        if missing:
            return ToolchainInfo(name=self.name, available=False, marker=self.marker,
                                 reason=f"{' and '.join(missing)} not installed (pip install 'kernel-foundry[helion]')")
        return triton_backend.available(self.name, self.marker, "helion", "Helion's generated Triton runs")

    def worker_env(self, device: str) -> dict[str, str]:
        # Fast-math only where a kernel asks for it in its own settings (which the scan reads), never by inheritance.
        env = {"HELION_AUTOTUNE_EFFORT": "none", "HELION_FAST_MATH": "0"}
        return {**env, "TRITON_INTERPRET": "1"} if device == "cpu" else env

    def cache_env(self, shared: Path) -> dict[str, str]:
        # Generated kernels and their compiled binaries are keyed by source and config: workers can share them.
        return {"HELION_CACHE_DIR": str(shared / "helion"), "TRITON_CACHE_DIR": str(shared / "triton")}

    def marker_hits(self, tree: ast.Module, resolve: Resolve) -> list[SourceHit]:
        found = {name: (fn.lineno if fn is not None else settings.lineno) for fn, settings, name in _kernels(tree, resolve)}
        if not found:
            return [SourceHit(0, "no function is decorated with @helion.kernel")]
        loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        if not any(name in loaded for name in found):
            name, line = next(iter(found.items()))
            return [SourceHit(line, f"the @helion.kernel {name} is defined but never called")]
        return []

    def precision_dtype(self, name: str) -> str | None:
        # Helion kernels are written with torch's own dtypes, which the shared scan already knows.
        return None

    def precision_hits(self, tree: ast.Module, resolve: Resolve) -> list[SourceHit]:
        return list(_precision(tree, resolve))

    def source_hint(self, source: str, regime: Bottleneck) -> str | None:
        blocks = [int(n) for n in re.findall(r"block_sizes\s*=\s*\[\s*(\d+)", source)]
        if regime is Bottleneck.memory and blocks and max(blocks) < 256:
            return f"Raise the first block size in helion.Config from {max(blocks)} to 1024 so each program streams enough data"
        if regime is Bottleneck.compute and not re.search(r"torch\.(matmul|mm|bmm|addmm)|hl\.dot|@", source):
            return "Compute the products with torch.matmul / hl.dot on [tile_m, tile_k] x [tile_k, tile_n] tiles so Helion emits tl.dot"
        return None

    def build(self, request: BuildRequest) -> BuildUnsupported:
        return BuildUnsupported.because(self.name, "Helion generates and compiles its Triton kernels inside the worker on the first call")

    def compile_only(self, candidate: str, *, timeout_s: float) -> CompileOnlyOutcome:
        return CompileOnlyOutcome.because(self.name, "Helion specialises its kernels on the first call's tensors, which needs a GPU or the interpreter")

    def warm(self, device: str) -> None:
        """Triton only: every spare warms every backend, and importing helion there would cost each spare seconds and
        ~300 MB for jobs that mostly never use it. A Helion job imports it when its candidate does."""
        triton_backend.TritonBackend().warm(device)

    def prepare_worker(self) -> None:
        """Record every called Helion kernel, and let the Triton backend's hook record the kernels it generates."""
        triton_backend.TritonBackend().prepare_worker()
        if importlib.util.find_spec("tqdm") is not None:
            import tqdm

            # Helion's first compile on a GPU opens a tqdm bar, whose monitor thread would outlive forward and read as
            # the candidate's thread leak; with the interval at 0 tqdm never starts it.
            tqdm.tqdm.monitor_interval = 0
        from helion.runtime.kernel import Kernel

        if getattr(Kernel.__call__, "_kfoundry", False):
            return
        original = Kernel.__call__

        def call(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
            # No profiler range around the whole call: its host code may run torch ops, whose kernels must not count as
            # own. The Triton backend's hook wraps just the generated kernel's launch.
            _called[str(getattr(self, "name", None) or getattr(getattr(self, "fn", None), "__name__", "helion_kernel"))] = self
            return __original(self, *args, **kwargs)

        call._kfoundry = True  # type: ignore[attr-defined]
        _patched.append((Kernel, original))
        Kernel.__call__ = call  # type: ignore[method-assign]

    def is_own_kernel(self, name: str) -> bool:
        return name.startswith(GENERATED_PREFIX) or triton_backend.TritonBackend().is_own_kernel(name)

    @contextmanager
    def instrument(self) -> Iterator[None]:
        with triton_backend.TritonBackend().instrument():
            yield

    def built_kernels(self) -> Iterator[KernelStats]:
        kernels: dict[str, Any] = dict(_called)
        module = sys.modules.get("candidate")
        if module is not None and "helion" in sys.modules:
            from helion.runtime.kernel import Kernel

            for value in vars(module).values():
                if isinstance(value, Kernel):
                    kernels.setdefault(str(value.name), value)
        interpreted = triton_backend.interpreting()
        for name, kernel in kernels.items():
            bound = list(getattr(kernel, "_bound_kernels", {}).values())
            if not bound:
                yield KernelStats(name=name, notes=["not called yet: Helion generates its Triton kernel on the first call"])
                continue
            for each in bound:
                generated = _generated(each)
                stats = [] if interpreted or generated is None else triton_backend.compiled_stats(generated, f"{GENERATED_PREFIX}{name}")
                notes = _config_notes(each) + (["interpreted (TRITON_INTERPRET=1): no GPU compilation"] if interpreted else [])
                if stats:
                    yield from (s.model_copy(update={"notes": [*s.notes, *notes]}) for s in stats)
                else:
                    yield KernelStats(name=f"{GENERATED_PREFIX}{name}", notes=notes)
