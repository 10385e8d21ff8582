"""CuTe DSL backend: CUTLASS's Python DSL (``nvidia-cutlass-dsl``, imported as ``cutlass`` / ``cutlass.cute``).

A candidate writes ``@cute.kernel`` functions, launches them from a ``@cute.jit`` host function
(``kernel(...).launch(grid=..., block=..., stream=...)``) and compiles that once per input shape
with ``cute.compile``, passing torch tensors through ``cutlass.cute.runtime.from_dlpack``. The DSL
traces the Python into MLIR, lowers it to a cubin in process and runs the host function as native
code: it needs an NVIDIA GPU (sm_80 or newer) and has no interpreter, so CPU-only hosts report it
unavailable. Nothing here imports cutlass at module level: the server probes with ``find_spec``
and package metadata; only a cute job's worker imports it.

Kernel symbols. The DSL names each ``@cute.kernel`` launch ``kernel_cutlass_<function>_<argument
mangling>_<n>`` (``<n>`` counts kernels within one compilation; ``set_name_prefix`` may put a
prefix in front or drop parts), and records the final symbols in the compiled function's
``kernel_info``. The worker records those symbols for every compilation the candidate's own code
starts, and wraps each run of a compiled host function in a ``cute_dsl::<function>`` profiler
range: the compiled host code is native and launches only the DSL's kernels, so whatever runs
inside the range is the candidate's. Matching recorded symbols exactly (never by prefix) keeps a
kernel named ``ampere`` from claiming cuBLAS's ``ampere_sgemm_...``.

Precision. The DSL has no process-wide fast-math switch and ``cute.compile`` has no fast-math
option: approximate math is asked for per operation (``fastmath=True`` on ``cute.math`` functions,
the ``cute.arch`` approximations such as ``exp2`` / ``rcp_approx``), and reduced precision shows in
the DSL's own dtypes (``cutlass.Float16``, ``BFloat16``, ``TFloat32``, ``Float8*``) and its TF32 /
FP8 MMA atoms. The scans below read all of those.
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

from kfoundry.backends.base import BuildRequest, BuildUnsupported, CompileOnlyOutcome, Resolve, Severity, SourceHit
from kfoundry.schema import Bottleneck, KernelStats, ToolchainInfo

#: the distribution that provides the DSL; an unrelated ``cutlass`` module may exist without it
DISTRIBUTION = "nvidia-cutlass-dsl"
#: the prefix of the profiler range wrapped around each run of a compiled host function
RANGE_PREFIX = "cute_dsl::"
#: modules whose frames sit between the candidate's call and a compiled function's construction
_DSL_MODULES = ("cutlass", "kfoundry.backends.cute", "contextlib", "functools", "threading", "abc", "typing", "inspect")
#: ``cute.arch`` functions that compile to PTX approximations (``ex2.approx.ftz``, ``rcp.approx.ftz``)
_APPROX_ARCH = frozenset({"exp", "exp2", "rcp_approx", "exp_packed_f32x2", "exp2_packed_f16x2", "exp2_packed_bf16x2"})
_DTYPES = {"Float16": "fp16", "BFloat16": "bf16", "TFloat32": "tf32"}
_LOW_FLOAT = re.compile(r"Float(8|6|4)E")
#: MMA atoms whose operands are below fp32 whatever dtype the candidate passes them
_MMA_KINDS = (("TF32", "tf32"), ("FP8", "fp8"), ("F8", "fp8"), ("MXF", "fp8"), ("NVF4", "fp8"))

# -- worker state ------------------------------------------------------------------------------------
#: compiled host functions the candidate's code produced, with the name of their @cute.jit function
_compiled: list[tuple[Any, str]] = []
#: ids of the compiled functions in ``_compiled`` (the DSL's compiled-function class defines __eq__, so no set of them)
_own_ids: set[int] = set()
#: kernel symbols of those compilations, as the profiler reports them
_symbols: set[str] = set()
_patched: list[tuple[type, str, Any]] = []
_instrumenting = False
_depth = 0


#: the DSL's own naming of a generated kernel; ``set_name_prefix(..., remove_cutlass_symbol=True)`` could otherwise
#: name a kernel after a library one (``ampere_sgemm_128x64_nn_0``), so only this form is recorded
_DSL_SYMBOL = re.compile(r"kernel_cutlass_\w+_\d+")


def _symbol_forms(symbol: str) -> set[str]:
    """The symbol, and the form without its kernel counter that the DSL's loader resolves when a binary is named after it.

    Empty for a symbol not in the DSL's own naming.
    """
    if not _DSL_SYMBOL.fullmatch(symbol):
        return set()
    head, _, tail = symbol.rpartition("_")
    return {symbol, head} if head and tail.isdigit() else {symbol}


def _in(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _from_candidate() -> bool:
    """Whether the innermost caller outside the DSL is the candidate's own code.

    A compilation that torch (or any library) starts on the candidate's behalf, such as a
    CuTe-DSL attention kernel inside a torch op, is library work even when the candidate's
    forward is further up the stack.
    """
    frame = sys._getframe(1)
    # A compiled function the candidate constructs itself (with any kernel_info it likes) has no DSL frame between
    # this hook and the candidate: only the DSL's own compilations count.
    through_dsl = False
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        if not _in(module, _DSL_MODULES):
            return through_dsl and module == "candidate"
        through_dsl = through_dsl or _in(module, ("cutlass",))
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _record(compiled: Any) -> None:
    if id(compiled) in _own_ids or not _from_candidate():
        return
    name = str(getattr(compiled, "function_name", "") or "cute_jit")
    _compiled.append((compiled, name))
    _own_ids.add(id(compiled))
    for symbol in getattr(compiled, "kernel_info", None) or {}:
        _symbols.update(_symbol_forms(str(symbol)))


def _wrap_run(original: Any) -> Any:
    """Wrap a compiled function's entry point in a profiler range while instrumenting (one range per run, however entered)."""

    def run(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
        global _depth
        if not _instrumenting or _depth or id(self) not in _own_ids:
            return __original(self, *args, **kwargs)
        import torch

        name = str(getattr(self, "function_name", "") or "cute_jit")
        _depth += 1
        try:
            with torch.profiler.record_function(f"{RANGE_PREFIX}{name}"):
                return __original(self, *args, **kwargs)
        finally:
            _depth -= 1

    run._kfoundry = True  # type: ignore[attr-defined]
    return run


def _patch(cls: type, attribute: str, replacement: Any) -> None:
    original = cls.__dict__[attribute]
    _patched.append((cls, attribute, original))
    setattr(cls, attribute, replacement)


# -- static scans of candidate.py ------------------------------------------------------------------


def _decorated(tree: ast.Module, resolve: Resolve, decorator: str) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    """Functions and methods decorated with ``cutlass.cute.<decorator>`` (bare or called), by name, in source order."""
    found: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for dec in node.decorator_list:
                parts = resolve(dec.func if isinstance(dec, ast.Call) else dec)
                if parts[:1] == ["cutlass"] and parts[-1] == decorator and "cute" in parts:
                    found.setdefault(node.name, node)
    return found


def _last_name(node: ast.expr) -> str:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""


def _launched(tree: ast.Module, kernels: Mapping[str, ast.AST]) -> bool:
    """Whether some ``<kernel>(...).launch(...)`` launches one of ``kernels`` (``self.<kernel>`` for methods)."""
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "launch"
                and isinstance(node.func.value, ast.Call) and _last_name(node.func.value.func) in kernels):
            return True
    return False


def _used(tree: ast.Module, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether a @cute.jit function is referred to outside its own body (compiled, called, or its class used)."""
    inside = {id(n) for n in ast.walk(fn)}
    names = {fn.name}
    if fn.name == "__call__":
        # A host function written as a callable object's __call__ runs through the object.
        names |= {c.name for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and fn in c.body}
    for node in ast.walk(tree):
        if id(node) in inside:
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in names:
            return True
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and node.attr in names:
            return True
    return False


def _literal(node: ast.expr) -> object:
    return node.value if isinstance(node, ast.Constant) else ...


def _src(node: ast.AST, limit: int = 60) -> str:
    text = ast.unparse(node)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _precision(tree: ast.Module, resolve: Resolve) -> Iterator[SourceHit]:
    """Approximate math asked for per op, the ``cute.arch`` approximations, and sub-fp32 MMA atoms."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts = resolve(node.func)
            if parts[:1] != ["cutlass"]:
                continue
            for kw in node.keywords:
                if kw.arg == "fastmath" and _literal(kw.value) is not False:
                    said = "fastmath=True" if _literal(kw.value) is True else f"fastmath={_src(kw.value)}, not a literal False"
                    yield SourceHit(node.lineno, f"{_src(node.func)} with {said} lets the compiler approximate (fast-math)", "fast_math")
                elif kw.arg is None and parts[1:3] == ["cute", "math"]:
                    yield SourceHit(node.lineno, f"{_src(node.func)} takes its options from **{_src(kw.value)}: fastmath cannot be "
                                                 "read (pass it as a literal)", "fast_math")
            if parts[1:3] == ["cute", "arch"] and (parts[-1] in _APPROX_ARCH or "approx" in parts[-1]):
                yield SourceHit(node.lineno, f"calls {_src(node.func)}, a PTX approximation (fast-math)", "fast_math")
        elif isinstance(node, ast.Attribute):
            parts = resolve(node)
            if parts[:1] == ["cutlass"] and parts[-1].startswith("Mma"):
                kind = next((k for tag, k in _MMA_KINDS if tag in parts[-1]), None)
                if kind is not None:
                    yield SourceHit(node.lineno, f"uses the MMA atom {_src(node)}, whose operands are {kind.upper()} "
                                                 f"(below fp32)", kind)


class CuteBackend:
    name: ClassVar[str] = "cute"
    required_patterns: ClassVar[tuple[str, ...]] = (r"@\s*(?:cutlass\.)?cute\.kernel", r"\.launch\s*\(")
    marker: ClassVar[str] = ("a function decorated with @cute.kernel, launched as kernel(...).launch(grid=..., block=...) from a "
                             "@cute.jit host function that ModelNew.forward compiles (cute.compile) and calls")
    oneshot: ClassVar[Path] = Path(__file__).resolve().parent.parent / "prompts" / "oneshot" / "cute.py"
    notes: ClassVar[str] = (
        "Write CuTe DSL kernels (import cutlass, cutlass.cute as cute, cuda.bindings.driver as cuda; from "
        "cutlass.cute.runtime import from_dlpack): a @cute.kernel function does the device work (cute.arch.thread_idx() / "
        "block_idx(), tensors indexed by coordinates or partitioned with cute.zipped_divide / cute.local_tile, "
        "TensorSSA math with .load()/.store(), cute.math.exp etc.), and a @cute.jit host function launches it with "
        "kernel(...).launch(grid=[...], block=[...], stream=stream). In ModelNew.forward wrap each tensor with "
        "from_dlpack(t.detach(), assumed_align=16) (parameters must be detached), compile once per input shape with "
        "cute.compile(host, *args, stream) and cache the result in a dict keyed by shape, then call it with the torch "
        "current stream (cuda.CUstream(torch.cuda.current_stream().cuda_stream)) so CUDA graphs and profiling see the "
        "launch. Allocate outputs with torch.empty(..., device=x.device). Runtime loops are plain `for i in range(n)`; "
        "use cutlass.range_constexpr for loops to unroll. Keep fp32 problems in cutlass.Float32 with FMA math "
        "(cute.nvgpu.MmaUniversalOp) under the strict policy; fastmath=True and TF32/fp16 MMA atoms are reduced precision."
    )
    rule_defaults: ClassVar[Mapping[str, Severity]] = {}

    def probe(self) -> ToolchainInfo:
        if importlib.util.find_spec("cutlass") is None:
            return ToolchainInfo(name=self.name, available=False, marker=self.marker,
                                 reason=f"{DISTRIBUTION} is not installed (pip install 'kernel-foundry[cute]')")
        try:
            ver = version(DISTRIBUTION)
        except PackageNotFoundError:
            return ToolchainInfo(name=self.name, available=False, marker=self.marker,
                                 reason=f"the importable 'cutlass' module is not the CuTe DSL: {DISTRIBUTION} is not installed "
                                        "(pip install 'kernel-foundry[cute]')")
        import torch

        if not torch.cuda.is_available():
            return ToolchainInfo(name=self.name, available=False, version=ver, marker=self.marker,
                                 reason="no CUDA device: CuTe DSL kernels compile for and run on an NVIDIA GPU (sm_80 or newer), "
                                        "and the DSL has no CPU interpreter")
        major, minor = torch.cuda.get_device_capability()
        if major < 8:
            return ToolchainInfo(name=self.name, available=False, version=ver, marker=self.marker,
                                 reason=f"the GPU is sm_{major}{minor}: the CuTe DSL targets sm_80 (Ampere) and newer")
        return ToolchainInfo(name=self.name, available=True, version=ver, device="cuda:0", marker=self.marker)

    def worker_env(self, device: str) -> dict[str, str]:
        # Nothing process-wide to pin: the DSL detects the GPU's arch from the driver, and approximate math is asked for per
        # op in the candidate's source, which the precision scan reads. Artefact dumps (CUTE_DSL_KEEP) stay off by default.
        return {}

    def cache_env(self, shared: Path) -> dict[str, str]:
        # The DSL's file cache holds compiled modules keyed by their IR and options, so workers can share it. Without it the
        # DSL picks a directory under TMPDIR named after the user, which a sandboxed worker may not be able to resolve.
        return {"CUTE_DSL_CACHE_DIR": str(shared / "cute_dsl")}

    def marker_hits(self, tree: ast.Module, resolve: Resolve) -> list[SourceHit]:
        kernels = _decorated(tree, resolve, "kernel")
        if not kernels:
            return [SourceHit(0, "no function is decorated with @cute.kernel")]
        if not _launched(tree, kernels):
            name, fn = next(iter(kernels.items()))
            return [SourceHit(fn.lineno, f"the @cute.kernel {name} is defined but never launched ({name}(...).launch(grid=..., block=...))")]
        hosts = _decorated(tree, resolve, "jit")
        if not hosts:
            return [SourceHit(0, "no function is decorated with @cute.jit: a @cute.kernel launches from a @cute.jit host function")]
        if not any(_used(tree, fn) for fn in hosts.values()):
            name, fn = next(iter(hosts.items()))
            return [SourceHit(fn.lineno, f"the @cute.jit function {name} is defined but never compiled or called")]
        return []

    def precision_dtype(self, name: str) -> str | None:
        parts = name.split(".")
        if parts[0] != "cutlass" or len(parts) < 2:
            return None
        last = parts[-1]
        return _DTYPES.get(last) or ("fp8" if _LOW_FLOAT.match(last) else None)

    def precision_hits(self, tree: ast.Module, resolve: Resolve) -> list[SourceHit]:
        return list(_precision(tree, resolve))

    def source_hint(self, source: str, regime: Bottleneck) -> str | None:
        if regime is Bottleneck.memory:
            blocks = [int(n) for n in re.findall(r"block\s*=\s*[\[(]\s*(\d+)", source)]
            if blocks and max(blocks) < 128:
                return f"Launch at least 128 threads per block (block=[{max(blocks)}, ...] now) so each SM keeps enough loads in flight"
            if not re.search(r"zipped_divide|local_tile|make_tiled_copy|make_layout_tv", source):
                return ("Give each thread a 16-byte vector: tile the tensors with cute.zipped_divide(t, (1, 4)) and pass "
                        "from_dlpack(t, assumed_align=16), then .load()/.store() whole tiles instead of single elements")
        if regime is Bottleneck.compute:
            if not re.search(r"SmemAllocator|allocate_tensor", source):
                return ("Stage the operand tiles in shared memory (cutlass.memory.SmemAllocator().allocate_tensor) and give each "
                        "thread a register tile (cute.make_tiled_mma + cute.gemm) so every loaded value feeds several FMAs")
            if not re.search(r"nvgpu\.(warp|warpgroup|tcgen05)\.Mma", source):
                return ("Where the precision policy allows it, feed tensor cores with an MMA atom (cute.nvgpu.warp.MmaF16BF16Op, "
                        "or cute.nvgpu.warpgroup on sm_90) instead of MmaUniversalOp's FMAs")
        return None

    def build(self, request: BuildRequest) -> BuildUnsupported:
        return BuildUnsupported.because(self.name, "the CuTe DSL compiles inside the worker when the candidate calls cute.compile")

    def compile_only(self, candidate: str, *, timeout_s: float) -> CompileOnlyOutcome:
        return CompileOnlyOutcome.because(self.name, "the CuTe DSL specialises its kernels on the first call's tensors and loads "
                                                     "them on the GPU as it compiles, which needs the device")

    def warm(self, device: str) -> None:
        """Nothing: every spare warms every backend, and importing cutlass (its MLIR libraries are ~200 MB) would cost each
        spare seconds and memory for jobs that mostly never use it. A cute job imports it in ``prepare_worker``."""

    def prepare_worker(self) -> None:
        """Record every compilation the candidate starts (its kernel symbols) and let ``instrument`` range its runs."""
        from cutlass.base_dsl.jit_executor import JitCompiledFunction

        if getattr(JitCompiledFunction.__init__, "_kfoundry", False):
            return
        original_init = JitCompiledFunction.__init__

        def init(self: Any, *args: Any, __original: Any = original_init, **kwargs: Any) -> None:
            __original(self, *args, **kwargs)
            _record(self)

        init._kfoundry = True  # type: ignore[attr-defined]
        _patch(JitCompiledFunction, "__init__", init)
        # __call__ runs a compiled function (cute.compile's result); run_compiled_program is where a @cute.jit function
        # called directly runs what it compiled. Subclasses of the DSL's reach both through super().
        for attribute in ("__call__", "run_compiled_program"):
            _patch(JitCompiledFunction, attribute, _wrap_run(JitCompiledFunction.__dict__[attribute]))

    def is_own_kernel(self, name: str) -> bool:
        # Exact recorded symbols only. The run range is not ownership: a compiled function's call runs the candidate's
        # own argument hooks (``__c_pointers__``) inside it, and anyone can open a range of that name.
        return name in _symbols

    @contextmanager
    def instrument(self) -> Iterator[None]:
        global _instrumenting
        _instrumenting = True
        try:
            yield
        finally:
            _instrumenting = False

    def built_kernels(self) -> Iterator[KernelStats]:
        for compiled, function in _compiled:
            symbols = [str(s) for s in getattr(compiled, "kernel_info", None) or {}]
            if not symbols:
                yield KernelStats(name=function, notes=["compiled host function without GPU kernels"])
                continue
            facts = _loaded_facts(compiled)
            why = facts[""].notes if "" in facts else ["driver attributes unavailable: the loaded module has no handle for this symbol"]
            for symbol in symbols:
                yield facts.get(symbol) or KernelStats(name=symbol, notes=[f"from @cute.jit {function}", *why])


def _loaded_facts(compiled: Any) -> dict[str, KernelStats]:
    """Registers and memory of each kernel of a compiled function, read from the driver once it is loaded.

    The DSL loads its cubin as a CUDA library (``cuLibraryLoadData``) on the first run, so the driver's
    per-kernel attributes (``cuKernelGetAttribute``) are the only place these numbers exist: no ptxas log
    is kept and the cubin is not retained unless artefact dumps are on. Shared memory here is the static
    part; CuTe kernels mostly size theirs dynamically at launch (SmemAllocator), which the driver reports
    only as the maximum the DSL's loader allowed. A key "" carries why nothing could be read.
    """
    from kfoundry.backends.cuda_driver import _ATTR_LOCAL, _ATTR_MAX_DYNAMIC_SHARED, _ATTR_MAX_THREADS, _ATTR_REGS, _ATTR_SHARED, _address

    function = str(getattr(compiled, "function_name", "") or "cute_jit")
    module = getattr(compiled, "jit_module", None)
    if module is None:
        return {"": KernelStats(name="", notes=["compiled, not yet run: the DSL loads kernels on the first call"])}
    try:
        import torch
        from cuda.bindings import driver

        ok = driver.CUresult.CUDA_SUCCESS
        err, device = driver.cuDeviceGet(torch.cuda.current_device())
        if err != ok:
            return {"": KernelStats(name="", notes=[f"driver attributes unavailable: cuDeviceGet returned {err}"])}
        handles: list[tuple[str, Any]] = [(str(m.sym), m.kernel) for m in getattr(module, "cuda_modules", None) or []]
        for library in getattr(module, "cuda_library", None) or []:
            # A cudaLibrary_t is a CUlibrary: the runtime and driver handles are interchangeable.
            handle = driver.CUlibrary(_address(library))
            for symbol in getattr(compiled, "kernel_info", None) or {}:
                for form in sorted(_symbol_forms(str(symbol)), key=len, reverse=True):
                    err, kernel = driver.cuLibraryGetKernel(handle, form.encode())
                    if err == ok:
                        handles.append((str(symbol), kernel))
                        break
        found: dict[str, KernelStats] = {}
        for symbol, kernel in handles:
            values: dict[int, int] = {}
            for attribute in (_ATTR_REGS, _ATTR_SHARED, _ATTR_LOCAL, _ATTR_MAX_THREADS, _ATTR_MAX_DYNAMIC_SHARED):
                err, value = driver.cuKernelGetAttribute(driver.CUfunction_attribute(attribute), kernel, device)
                if err == ok:
                    values[attribute] = int(value)
            found[symbol] = KernelStats(
                name=symbol, registers=values.get(_ATTR_REGS), spills_bytes=values.get(_ATTR_LOCAL),
                shared_memory_bytes=values.get(_ATTR_SHARED),
                notes=[f"from @cute.jit {function}",
                       f"driver: {values.get(_ATTR_LOCAL, '?')} bytes local memory per thread, at most {values.get(_ATTR_MAX_THREADS, '?')} "
                       f"threads per block, static shared memory only (dynamic shared memory allowed up to "
                       f"{values.get(_ATTR_MAX_DYNAMIC_SHARED, '?')} bytes, sized at launch)"],
            )
        if not found:
            found[""] = KernelStats(name="", notes=["driver attributes unavailable: the loaded module exposes no kernel handles"])
        return found
    except Exception as exc:  # noqa: BLE001 - stats are best effort: a DSL whose internals moved still reports its symbols
        return {"": KernelStats(name="", notes=[f"driver attributes unavailable: {type(exc).__name__}: {exc}"])}
