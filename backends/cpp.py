"""CPU C++ backend: OpenMP kernels behind a plain C ABI, loaded with ctypes.

A candidate embeds C++ source and calls ``load_cpp``::

    from kfoundry.backends.cpp import load_cpp
    lib = load_cpp(r'''
    #include <cstdint>
    extern "C" void relu(const float* x, float* y, int64_t n) { ... }
    ''')
    lib.relu(x, y, x.numel())   # tensors pass as pointers, checked for dtype/contiguity

Inside a worker the build is done by the trusted server (and cached by content hash);
elsewhere it is done in-process. KernelBench's ``torch.utils.cpp_extension.load_inline``
candidates run unchanged; their functions are wrapped so profiles can see them.
"""

from __future__ import annotations

import ast
import ctypes
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field, ValidationError

from kfoundry.backends import embedded
from kfoundry.backends.base import BuildRequest, BuildUnsupported, CompileOnlyOutcome, Resolve, Severity, SourceHit, trusted_side
from kfoundry.backends.gxx import BuildOutcome, FlagError, build, compiler_version
from kfoundry.schema import Bottleneck, Diagnostic, KernelStats, ToolchainInfo

_EXPORT = re.compile(
    r'extern\s+"C"\s*(?:\{)?\s*(?:__attribute__\s*\(\([^)]*\)\)\s*)?'
    r"(?P<ret>[A-Za-z_][\w\s\*]*?)\s+(?P<name>[A-Za-z_]\w*)\s*\((?P<args>[^)]*)\)\s*\{",
)
_ANY_FN = r"(?P<ret>[A-Za-z_][\w\s\*]*?)\s+{name}\s*\((?P<args>[^)]*)\)\s*[{{;]"

_SCALARS: dict[str, Any] = {
    "int": ctypes.c_int32, "int32_t": ctypes.c_int32, "unsigned": ctypes.c_uint32, "uint32_t": ctypes.c_uint32,
    "long": ctypes.c_int64, "long long": ctypes.c_int64, "int64_t": ctypes.c_int64, "size_t": ctypes.c_size_t,
    "ptrdiff_t": ctypes.c_int64, "uint64_t": ctypes.c_uint64, "float": ctypes.c_float, "double": ctypes.c_double,
    "bool": ctypes.c_bool, "char": ctypes.c_char, "void": None,
}
# element type of a pointer parameter -> torch dtype names it accepts
_POINTEE: dict[str, tuple[str, ...]] = {
    "float": ("float32",), "double": ("float64",), "int": ("int32",), "int32_t": ("int32",),
    "int64_t": ("int64",), "long": ("int64",), "long long": ("int64",), "int16_t": ("int16",),
    "uint16_t": ("float16", "bfloat16", "int16"), "int8_t": ("int8",), "uint8_t": ("uint8", "bool"),
    "bool": ("bool",), "char": ("int8", "uint8"), "void": (),
}

#: the wire op a worker's load_cpp sends to ask the server for a build
BUILD_OP = "build_cpp"

_built: list[KernelStats] = []
_instrumented = False


class BuildError(RuntimeError):
    """The C++ source did not compile; ``diagnostics`` carries the compiler's messages."""

    def __init__(self, message: str, diagnostics: list[Diagnostic]) -> None:
        super().__init__(message)
        self.diagnostics = diagnostics


def _normalise(ctype: str) -> tuple[str, int]:
    text = re.sub(r"\b(const|volatile|restrict|__restrict__|__restrict|unsigned\s+(?=long))\b", " ", ctype)
    text = re.sub(r"\bstd::", "", text)
    stars = text.count("*")
    return " ".join(text.replace("*", " ").split()), stars


def _param_type(param: str) -> tuple[str, int]:
    param = param.split("=")[0].strip()
    if param in ("", "void"):
        return "void", -1
    # drop the parameter name (last identifier not part of the type)
    m = re.match(r"^(?P<type>.*?[\*\s])\s*(?P<name>[A-Za-z_]\w*)\s*(\[\s*\])?$", param)
    if m:
        base, stars = _normalise(m["type"])
        return base, stars + (1 if m.group(3) else 0)
    return _normalise(param)


class CppFunction:
    """A C function with arguments converted and checked from its parsed signature."""

    def __init__(self, name: str, raw: Any, params: list[tuple[str, int]] | None, ret: tuple[str, int] | None) -> None:
        self.__name__ = name
        self.raw = raw
        self.params = params
        if params is not None and ret is not None:
            raw.argtypes = [ctypes.c_void_p if stars else _SCALARS[base] for base, stars in params]
            raw.restype = ctypes.c_void_p if ret[1] else _SCALARS.get(ret[0])

    def _convert(self, index: int, value: Any) -> Any:
        import torch

        if self.params is None:
            return ctypes.c_void_p(value.data_ptr()) if isinstance(value, torch.Tensor) else value
        base, stars = self.params[index]
        if stars:
            if isinstance(value, torch.Tensor):
                dtype = str(value.dtype).removeprefix("torch.")
                allowed = _POINTEE.get(base, ())
                if allowed and dtype not in allowed:
                    raise TypeError(f"{self.__name__}: argument {index} is {base}* but got a {dtype} tensor")
                if not value.is_contiguous():
                    raise ValueError(f"{self.__name__}: argument {index} must be contiguous (call .contiguous())")
                if value.device.type != "cpu":
                    raise ValueError(f"{self.__name__}: argument {index} is on {value.device}, the cpp backend needs CPU tensors")
                return value.data_ptr()
            if isinstance(value, int):
                return value
            raise TypeError(f"{self.__name__}: argument {index} is a pointer; pass a tensor")
        if isinstance(value, torch.Tensor):
            raise TypeError(f"{self.__name__}: argument {index} is {base}; pass a Python number, not a tensor")
        return value

    def __call__(self, *args: Any) -> Any:
        if self.params is not None and len(args) != len(self.params):
            raise TypeError(f"{self.__name__} takes {len(self.params)} arguments ({len(args)} given)")
        converted = [self._convert(i, a) for i, a in enumerate(args)]
        if _instrumented:
            import torch

            with torch.profiler.record_function(f"cpp::{self.__name__}"):
                return self.raw(*converted)
        return self.raw(*converted)


class CppLibrary:
    """The loaded library; exported C functions are attributes."""

    def __init__(self, path: str, source: str) -> None:
        self.path = path
        self._lib = ctypes.CDLL(path)
        self._source = re.sub(r"//[^\n]*|/\*.*?\*/", " ", source, flags=re.S)
        self._functions: dict[str, CppFunction] = {}

    def _signature(self, name: str) -> tuple[list[tuple[str, int]] | None, tuple[str, int] | None]:
        m = re.search(_ANY_FN.format(name=re.escape(name)), self._source)
        if not m:
            return None, None
        ret = _normalise(m["ret"].replace("extern", "").replace('"C"', "").replace("inline", "").replace("static", ""))
        params = [_param_type(p) for p in m["args"].split(",")] if m["args"].strip() else []
        if params == [("void", -1)]:
            params = []
        known = all(stars or base in _SCALARS for base, stars in params) and (ret[1] or ret[0] in _SCALARS)
        return (params, ret) if known else (None, None)

    def __getattr__(self, name: str) -> CppFunction:
        if name.startswith("_"):
            raise AttributeError(name)
        fn = self._functions.get(name)
        if fn is None:
            try:
                raw = getattr(self._lib, name)
            except AttributeError:
                raise AttributeError(f"the C++ source exports no function {name!r}; declare it extern \"C\"") from None
            params, ret = self._signature(name)
            fn = self._functions[name] = CppFunction(name, raw, params, ret)
        return fn


def _exported_names(source: str) -> list[str]:
    return [m["name"] for m in _EXPORT.finditer(source)]


def load_cpp(source: str, extra_cflags: list[str] | None = None) -> CppLibrary:
    """Build ``source`` (g++ -O3 -march=native -fopenmp) and load it.

    Raises:
        BuildError: the source failed to compile; the message holds the first errors.
    """
    channel = trusted_side()
    if channel is not None:
        request = {"op": BUILD_OP, "source": source, "flags": list(extra_cflags or [])}
        outcome = BuildOutcome.model_validate(channel.request(request))
    else:
        outcome = build(source, extra_cflags)
    if not outcome.ok:
        first = "\n".join(str(d) for d in outcome.diagnostics[:5]) or outcome.log[-2000:]
        raise BuildError(f"C++ build failed:\n{first}", outcome.diagnostics)
    for name in _exported_names(source) or [f"lib{outcome.key}"]:
        _built.append(KernelStats(name=name, build_s=round(outcome.seconds, 4), cached=outcome.cached,
                                  notes=[f"fast-math ({o})" for o in outcome.math_options]))
    return CppLibrary(outcome.library, source)


class _Wrapped:
    """A load_inline module whose functions open a profiler range per call."""

    def __init__(self, module: Any) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._module, name)
        if not callable(attr) or not _instrumented:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            import torch

            with torch.profiler.record_function(f"cpp::{name}"):
                return attr(*args, **kwargs)

        return call


def _wrap_load_inline(original: Callable[..., Any]) -> Callable[..., Any]:
    def load_inline(name: str, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        module = original(name, *args, **kwargs)
        seconds = time.perf_counter() - start
        for fn in kwargs.get("functions") or [name]:
            _built.append(KernelStats(name=str(fn), build_s=round(seconds, 4), notes=["torch.utils.cpp_extension.load_inline"]))
        return _Wrapped(module)

    return load_inline


class _BuildMessage(BaseModel):
    """A worker's ``build_cpp`` request."""

    source: str = ""
    flags: list[str] = Field(default_factory=list)


def _builds_kernel(call: ast.Call, parts: list[str]) -> bool:
    return parts[-1] in ("load_cpp", "load_inline")


def _located(candidate: str, source: str) -> tuple[int, str]:
    """(line offset, file label) for g++ messages: candidate.py lines when the candidate holds the source verbatim."""
    at = candidate.find(source) if source else -1
    return (candidate[:at].count("\n"), "candidate.py") if at >= 0 else (0, "kernel.cpp")


class CppBackend:
    name: ClassVar[str] = "cpp"
    required_patterns: ClassVar[tuple[str, ...]] = (r"\bload_cpp\s*\(|\bload_inline\s*\(",)
    marker: ClassVar[str] = "C++ source built with kfoundry.backends.cpp.load_cpp(...) (or torch.utils.cpp_extension.load_inline)"
    oneshot: ClassVar[Path] = Path(__file__).resolve().parent.parent / "prompts" / "oneshot" / "cpp.py"
    notes: ClassVar[str] = (
        "Write the kernel in C++17 with OpenMP and export it with extern \"C\"; pass torch tensors straight to "
        "the exported function (they become pointers; dtype and contiguity are checked) and integers/floats as "
        "scalars. Allocate outputs in Python with torch.empty and let the kernel fill them. Builds use "
        "g++ -O3 -march=native -fopenmp and are cached by content hash; no torch headers are needed."
    )
    rule_defaults: ClassVar[Mapping[str, Severity]] = {}

    def probe(self) -> ToolchainInfo:
        gxx = shutil.which("g++")
        if gxx is None:
            return ToolchainInfo(name=self.name, available=False, reason="g++ not found on PATH", marker=self.marker)
        return ToolchainInfo(name=self.name, available=True, version=compiler_version(), device="cpu", marker=self.marker)

    def worker_env(self, device: str) -> dict[str, str]:
        return {}

    def cache_env(self, shared: Path) -> dict[str, str]:
        # load_cpp builds are cached by the server; load_inline candidates use torch's extension cache.
        return {"TORCH_EXTENSIONS_DIR": str(shared / "torch_extensions")}

    def marker_hits(self, tree: ast.Module, resolve: Resolve) -> list[SourceHit]:
        return embedded.marker_hits(tree, resolve, _builds_kernel)

    def precision_dtype(self, name: str) -> str | None:
        return None  # the kernel is C++ text, not Python: see precision_hits

    def precision_hits(self, tree: ast.Module, resolve: Resolve) -> list[SourceHit]:
        return embedded.kernel_precision(tree, resolve, _builds_kernel)

    def source_hint(self, source: str, regime: Bottleneck) -> str | None:
        if "omp" not in source and "parallel_for" not in source:
            return "Parallelise the outer loop with `#pragma omp parallel for` (built with -fopenmp), as it runs on one core"
        return None

    def build(self, request: BuildRequest) -> BuildOutcome | BuildUnsupported:
        """g++ build of a worker's ``load_cpp`` source, its messages located in candidate.py when the source is there."""
        refused = request.refusal(self.name, BUILD_OP)
        if refused is not None:
            return refused
        try:
            message = _BuildMessage.model_validate(request.message)
        except ValidationError as exc:
            text = f"build_cpp needs 'source' (text) and 'flags' (a list of strings): {exc.errors()[0]['msg']}"
            return BuildOutcome(ok=False, key="", diagnostics=[Diagnostic(file="kernel.cpp", message=text)], log=text)
        offset, label = _located(request.candidate, message.source)
        try:
            return build(message.source, message.flags, line_offset=offset, file_label=label)
        except FlagError as exc:
            return BuildOutcome(ok=False, key="", diagnostics=[Diagnostic(file=label, message=str(exc))], log=str(exc))

    def compile_only(self, candidate: str, *, timeout_s: float) -> CompileOnlyOutcome:
        return CompileOnlyOutcome.because(self.name, "it runs wherever g++ does, so call `compile`, which builds and loads it")

    def warm(self, device: str) -> None:
        """Nothing to preload: g++ runs on the trusted side and the library loads with ctypes."""

    def prepare_worker(self) -> None:
        """Wrap ``load_inline`` so KernelBench-style candidates are profiled and reported too."""
        from torch.utils import cpp_extension

        if not getattr(cpp_extension.load_inline, "_kfoundry", False):
            wrapped = _wrap_load_inline(cpp_extension.load_inline)
            wrapped._kfoundry = True  # type: ignore[attr-defined]
            cpp_extension.load_inline = wrapped

    def is_own_kernel(self, name: str) -> bool:
        return name.startswith("cpp::")

    @contextmanager
    def instrument(self) -> Iterator[None]:
        global _instrumented
        _instrumented = True
        try:
            yield
        finally:
            _instrumented = False

    def built_kernels(self) -> Iterator[KernelStats]:
        yield from _built
