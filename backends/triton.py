"""Triton backend: real compilation on a CUDA device, Triton's interpreter on CPU-only hosts.

Nothing here imports triton at module level: the server probes with ``find_spec`` and
only workers import it (after ``TRITON_INTERPRET`` is decided by ``worker_env``).
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, ClassVar

from kfoundry.backends.base import KIND_NAMES, BuildRequest, BuildUnsupported, CompileOnlyOutcome, Resolve, Severity, SourceHit
from kfoundry.schema import Bottleneck, KernelStats, ToolchainInfo

_launched: dict[str, Any] = {}
#: the suffix Triton 2 appended to a kernel's symbol: one specialisation code per argument
_SPECIALISED = re.compile(r"_[0-9cde]+")
_patched: list[tuple[type, Any]] = []


def interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


#: libdevice functions Triton's interpreter leaves unimplemented (there they return None), each with the tl
#: builtin it equals. Generated code (Helion's, inductor's) calls libdevice for these even where tl has them.
_INTERPRETED_LIBDEVICE = {
    "exp": "exp", "exp2": "exp2", "log": "log", "log2": "log2", "sqrt": "sqrt_rn", "rsqrt": "rsqrt", "sin": "sin",
    "cos": "cos", "erf": "erf", "floor": "floor", "ceil": "ceil", "fabs": "abs", "fma": "fma",
}


def _tl_call(builtin: str) -> Any:
    import triton.language as tl

    # Looked up at call time: the interpreter swaps tl's builtins for its numpy versions while a kernel runs.
    return lambda *args: getattr(tl, builtin)(*args)


def _interpret_libdevice() -> None:
    """Point the libdevice functions the interpreter lacks at their tl equivalents (interpreted workers only)."""
    import importlib

    import triton.language as tl

    for module_name in ("triton.language.extra.libdevice", "triton.language.extra.cuda.libdevice"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name, builtin in _INTERPRETED_LIBDEVICE.items():
            if hasattr(module, name) and hasattr(tl, builtin):
                setattr(module, name, _tl_call(builtin))


def _jit_name(fn: Any) -> str:
    inner = getattr(fn, "fn", None)
    return str(getattr(inner, "__name__", None) or getattr(fn, "__name__", "triton_kernel"))


def _jit_classes() -> list[type]:
    classes: list[type] = []
    from triton.runtime.jit import JITFunction

    classes.append(JITFunction)
    try:
        from triton.runtime.interpreter import InterpretedFunction

        classes.append(InterpretedFunction)
    except ImportError:
        pass
    return classes


def compiled_stats(fn: Any, name: str) -> list[KernelStats]:
    """Registers, spills, shared memory, warps and stages of every compiled specialisation."""
    found: list[KernelStats] = []
    for entry in getattr(fn, "device_caches", {}).values():
        cache = entry[0] if isinstance(entry, tuple) else entry
        for kernel in getattr(cache, "values", lambda: [])():
            meta = getattr(kernel, "metadata", None)
            found.append(
                KernelStats(
                    name=str(getattr(kernel, "name", name)),
                    registers=getattr(kernel, "n_regs", None),
                    spills_bytes=getattr(kernel, "n_spills", None),
                    shared_memory_bytes=getattr(meta, "shared", None),
                    num_warps=getattr(meta, "num_warps", None),
                    num_stages=getattr(meta, "num_stages", None),
                )
            )
    return found


# -- static scans of candidate.py ------------------------------------------------------------------

_JIT_DECORATORS = ("jit", "autotune", "heuristics")
_DTYPES = {"triton.language.float16": "fp16", "triton.language.bfloat16": "bf16"}
_FP8_PREFIX = "triton.language.float8"


def _src(node: ast.AST, limit: int = 60) -> str:
    text = ast.unparse(node)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _const(node: ast.AST | None) -> object:
    """A literal's value; Ellipsis (never a real argument here) when the node is absent or not a literal."""
    return node.value if isinstance(node, ast.Constant) else ...


class _JitFunctions(ast.NodeVisitor):
    """Functions decorated with @triton.jit (or autotune/heuristics), in source order."""

    def __init__(self, resolve: Resolve) -> None:
        self.resolve = resolve
        self.found: dict[str, int] = {}

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for dec in node.decorator_list:
            parts = self.resolve(dec)
            if len(parts) >= 2 and parts[0] == "triton" and parts[-1] in _JIT_DECORATORS:
                self.found[node.name] = node.lineno
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]


def _dot(node: ast.Call) -> SourceHit | None:
    """tl.dot multiplies fp32 in TF32 unless told ``input_precision="ieee"`` (or ``allow_tf32=False``)."""
    line = node.lineno
    kw = {k.arg: k.value for k in node.keywords}
    precision, allow = kw.get("input_precision"), kw.get("allow_tf32")
    if len(node.args) > 3:  # Triton 3 takes input_precision fourth; Triton 2 took allow_tf32 there
        if isinstance(_const(node.args[3]), bool):
            allow = node.args[3]
        else:
            precision = node.args[3]
    if len(node.args) > 4:
        allow = node.args[4]
    value = _const(precision)
    if precision is not None and value is not None:
        if isinstance(value, str) and value.lower() == "ieee":
            return None
        kind = "bf16" if isinstance(value, str) and "bf16" in value.lower() else "tf32"
        shown = repr(value) if value is not ... else _src(precision)
        return SourceHit(line, f"tl.dot with input_precision={shown} multiplies fp32 in {KIND_NAMES[kind]} "
                               '(pass the literal input_precision="ieee" for strict fp32)', kind)
    flag = _const(allow)
    if allow is not None and flag is False:
        return None
    if allow is not None and flag is True:
        return SourceHit(line, 'tl.dot with allow_tf32=True multiplies fp32 in TF32 (pass input_precision="ieee" for strict fp32)', "tf32")
    return SourceHit(line, 'tl.dot without input_precision="ieee" multiplies fp32 in TF32 on NVIDIA GPUs '
                           '(Triton\'s default; pass input_precision="ieee" for strict fp32)', "tf32")


def _precision(tree: ast.Module, resolve: Resolve) -> Iterator[SourceHit]:
    """tl.dot in TF32, scaled float8 dots and approximate fast_* math; Triton's dtypes are ``precision_dtype``'s."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts = resolve(node.func)
            if parts[:1] == ["triton"] and parts[-1] == "dot":
                hit = _dot(node)
                if hit is not None:
                    yield hit
            elif parts[:1] == ["triton"] and parts[-1] == "dot_scaled":
                yield SourceHit(node.lineno, "tl.dot_scaled multiplies microscaled float8/float4 operands", "fp8")
        if isinstance(node, ast.Attribute):
            parts = resolve(node)
            if parts[:1] == ["triton"] and parts[-1].startswith("fast_"):
                yield SourceHit(node.lineno, f"calls the approximate {_src(node)} (fast-math)", "fast_math")


def available(name: str, marker: str, package: str, what: str) -> ToolchainInfo:
    """An installed backend that compiles through Triton: on the CUDA device, or in Triton's interpreter without one.

    ``package`` gives the version reported; ``what`` says what runs interpreted ("kernels run").
    """
    try:
        ver = version(package)
    except PackageNotFoundError:
        ver = ""
    import torch

    if torch.cuda.is_available():
        return ToolchainInfo(name=name, available=True, version=ver, device="cuda:0", marker=marker)
    return ToolchainInfo(
        name=name, available=True, version=ver, device="cpu", interpreted=True, marker=marker,
        reason=f"no CUDA device: {what} in Triton's interpreter (TRITON_INTERPRET=1) on CPU tensors; results are checked but "
               "timings are not representative",
    )


class TritonBackend:
    name: ClassVar[str] = "triton"
    required_patterns: ClassVar[tuple[str, ...]] = (r"@\s*triton\.(jit|autotune)", )
    marker: ClassVar[str] = "a kernel decorated with @triton.jit, launched as kernel[grid](...)"
    oneshot: ClassVar[Path] = Path(__file__).resolve().parent.parent / "prompts" / "oneshot" / "triton.py"
    notes: ClassVar[str] = (
        "Write @triton.jit kernels and launch them from ModelNew.forward as kernel[grid](...). Inputs arrive on the "
        "job's device (CUDA on a GPU host, CPU tensors under the Triton interpreter on CPU-only hosts), so allocate "
        "outputs with torch.empty(..., device=x.device) and never hard-code 'cuda'. Use tl.constexpr BLOCK sizes "
        "(powers of two), masks for ragged edges, and accumulate reductions/dots in fp32."
    )
    rule_defaults: ClassVar[Mapping[str, Severity]] = {}

    def probe(self) -> ToolchainInfo:
        if importlib.util.find_spec("triton") is None:
            return ToolchainInfo(name=self.name, available=False, reason="the triton package is not installed", marker=self.marker)
        return available(self.name, self.marker, "triton", "kernels run")

    def worker_env(self, device: str) -> dict[str, str]:
        return {"TRITON_INTERPRET": "1"} if device == "cpu" else {}

    def cache_env(self, shared: Path) -> dict[str, str]:
        # Compiled kernels are keyed by source and options, so workers can share them.
        return {"TRITON_CACHE_DIR": str(shared / "triton")}

    def marker_hits(self, tree: ast.Module, resolve: Resolve) -> list[SourceHit]:
        jit = _JitFunctions(resolve)
        jit.visit(tree)
        if not jit.found:
            return [SourceHit(0, "no function is decorated with @triton.jit")]
        loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        if not any(name in loaded for name in jit.found):
            name, line = next(iter(jit.found.items()))
            return [SourceHit(line, f"the @triton.jit kernel {name} is defined but never launched")]
        return []

    def precision_dtype(self, name: str) -> str | None:
        return "fp8" if name.startswith(_FP8_PREFIX) else _DTYPES.get(name)

    def precision_hits(self, tree: ast.Module, resolve: Resolve) -> list[SourceHit]:
        return list(_precision(tree, resolve))

    def source_hint(self, source: str, regime: Bottleneck) -> str | None:
        blocks = [int(n) for n in re.findall(r"BLOCK\w*\s*[:=]\s*(\d+)", source)]
        if regime is Bottleneck.memory and blocks and max(blocks) < 256:
            return f"Raise the Triton BLOCK size from {max(blocks)} to 1024 so each program streams enough data per launch"
        if regime is Bottleneck.compute and "tl.dot" not in source:
            return "Compute the products with tl.dot on BLOCK_M x BLOCK_N x BLOCK_K tiles so they run on tensor cores"
        return None

    def build(self, request: BuildRequest) -> BuildUnsupported:
        return BuildUnsupported.because(self.name, "Triton compiles inside the worker when a kernel first launches")

    def compile_only(self, candidate: str, *, timeout_s: float) -> CompileOnlyOutcome:
        return CompileOnlyOutcome.because(self.name, "Triton compiles when a kernel launches, which needs a GPU or the interpreter")

    def warm(self, device: str) -> None:
        """Import triton now: it takes seconds, and a spare should pay that before a job arrives."""
        try:
            import triton  # noqa: F401 - TRITON_INTERPRET is already in the environment (worker_env)
        except ImportError:
            pass  # probe reports the missing package; a worker without it still serves other backends

    def prepare_worker(self) -> None:
        """Record every launched JIT function so its kernels can be reported and recognised in traces."""
        import triton  # noqa: F401 - imported here so TRITON_INTERPRET is already set

        if interpreting():
            _interpret_libdevice()
        for cls in _jit_classes():
            if getattr(cls.run, "_kfoundry", False):
                continue
            original = cls.run

            def run(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
                name = _jit_name(self)
                _launched[name] = self
                if _instrumenting:
                    import torch

                    with torch.profiler.record_function(f"triton::{name}"):
                        return __original(self, *args, **kwargs)
                return __original(self, *args, **kwargs)

            run._kfoundry = True  # type: ignore[attr-defined]
            _patched.append((cls, original))
            cls.run = run  # type: ignore[method-assign]

    def is_own_kernel(self, name: str) -> bool:
        # The symbol is the JIT function's name, suffixed only by older Triton's specialisation codes ("_0d1d2de"):
        # a plain prefix match would let a kernel named "ampere" claim cuBLAS's "ampere_sgemm_..." as its own.
        return name.startswith("triton::") or any(name == n or _SPECIALISED.fullmatch(name[len(n):]) and name.startswith(n) for n in _launched)

    @contextmanager
    def instrument(self) -> Iterator[None]:
        global _instrumenting
        _instrumenting = True
        try:
            yield
        finally:
            _instrumenting = False

    def built_kernels(self) -> Iterator[KernelStats]:
        functions: dict[str, Any] = dict(_launched)
        module = sys.modules.get("candidate")
        if module is not None and "triton" in sys.modules:
            classes = tuple(_jit_classes())
            for value in vars(module).values():
                if isinstance(value, classes):
                    functions.setdefault(_jit_name(value), value)
        interpreted = interpreting()
        for name, fn in functions.items():
            stats = [] if interpreted else compiled_stats(fn, name)
            if stats:
                yield from stats
            else:
                note = "interpreted (TRITON_INTERPRET=1): no GPU compilation" if interpreted else "compiles on first launch"
                yield KernelStats(name=name, notes=[note])


_instrumenting = False
