"""NVRTC: finding libnvrtc and the CUDA headers, and compiling through ``cuda.bindings`` or ctypes.

``_nvrtc()`` picks the binding (``KFOUNDRY_CUDA_BINDING``; libraries come from the nvidia wheels,
torch/lib, CUDA_HOME or /usr/local/cuda) and ``nvrtc_facts()`` reports its version, supported
architectures and header directories. Builds (options, caching, the child process that runs
NVRTC) are in ``kfoundry.backends.cuda_build``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import re
import shutil
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

PROGRAM = "kernel.cu"
#: KFOUNDRY_CUDA_BINDING: "auto" (cuda.bindings, then ctypes), "cuda-python" or "ctypes".
BINDING_ENV = "KFOUNDRY_CUDA_BINDING"


class CudaUnavailable(RuntimeError):
    """NVRTC, the driver or a device is missing; the message starts with 'unavailable: '."""


class CudaError(RuntimeError):
    """A CUDA driver or NVRTC call failed."""


def _nvidia_dirs() -> list[Path]:
    """The ``nvidia`` wheel namespace directories (nvidia/cu13, nvidia/cuda_nvrtc, ...)."""
    found: list[Path] = []
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        spec = None
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for entry in sys.path:
        candidate = Path(entry or ".") / "nvidia"
        if candidate.is_dir() and str(candidate) not in roots:
            roots.append(str(candidate))
    for root in roots:
        base = Path(root)
        if base.is_dir():
            found += sorted((p for p in base.iterdir() if p.is_dir()), reverse=True)
    return found


def _library_version(path: Path) -> tuple[int, ...]:
    digits = re.findall(r"\.so\.([\d.]+)$", path.name)
    return tuple(int(x) for x in digits[0].split(".") if x) if digits else (0,)


def _nvrtc_candidates() -> list[Path]:
    paths: list[Path] = []
    explicit = os.environ.get("KFOUNDRY_NVRTC")
    if explicit:
        paths.append(Path(explicit))
    for base in _nvidia_dirs():
        paths += sorted(base.glob("lib/libnvrtc.so*"), key=_library_version, reverse=True)
    torch_spec = importlib.util.find_spec("torch")
    if torch_spec is not None and torch_spec.origin:
        paths += sorted(Path(torch_spec.origin).parent.glob("lib/libnvrtc*.so*"), key=_library_version, reverse=True)
    for home in _cuda_homes():
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
            paths += sorted((home / sub).glob("libnvrtc.so*"), key=_library_version, reverse=True)
    return [p for p in paths if p.is_file() and "builtins" not in p.name and ".alt." not in p.name]


def _cuda_homes() -> list[Path]:
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    exe = shutil.which("nvcc")
    if exe:
        homes.append(str(Path(os.path.realpath(exe)).parent.parent))
    homes += ["/usr/local/cuda"]
    seen: list[Path] = []
    for h in homes:
        if h and Path(h).is_dir() and Path(h) not in seen:
            seen.append(Path(h))
    # /usr/local/bin/nvcc may be a wrapper script: the toolkit is then /usr/local/cuda-X.Y
    seen += [p for p in sorted(Path("/usr/local").glob("cuda-*"), reverse=True) if p.is_dir() and p not in seen]
    return seen


def _include_dirs(library: Path | None) -> list[str]:
    """CUDA headers for NVRTC, preferring the ones shipped beside the NVRTC library in use."""
    options: list[Path] = []
    if library is not None:
        options.append(library.parent.parent / "include")
    options += [h / "include" for h in _cuda_homes()]
    options += [base / "include" for base in _nvidia_dirs()]
    for inc in options:
        if (inc / "cuda_fp16.h").is_file():
            dirs = [str(inc)]
            if (inc / "cccl").is_dir():
                dirs.append(str(inc / "cccl"))
            return dirs
    return []


def _preload(library: Path) -> ctypes.CDLL:
    """Load libnvrtc and, first, the builtins library beside it: libnvrtc dlopens it by soname,
    which fails for wheels outside the loader's search path unless it is already loaded."""
    for builtins in sorted(library.parent.glob("libnvrtc-builtins.so*"), key=_library_version, reverse=True):
        if ".alt." in builtins.name:
            continue
        try:
            ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
    return ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)


def _check(lib_result: int, lib: Any, call: str) -> None:
    if lib_result != 0:
        message = ""
        try:
            getter = lib.nvrtcGetErrorString
            getter.restype = ctypes.c_char_p
            message = (getter(lib_result) or b"").decode()
        except AttributeError:
            pass
        raise CudaError(f"{call} failed with NVRTC error {lib_result} {message}".strip())


class _NvrtcCtypes:
    """NVRTC through ctypes on libnvrtc.so."""

    kind = "ctypes"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lib = _preload(path) if path.is_absolute() else ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)

    def version(self) -> tuple[int, int]:
        major, minor = ctypes.c_int(), ctypes.c_int()
        _check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), self.lib, "nvrtcVersion")
        return major.value, minor.value

    def archs(self) -> list[int]:
        count = ctypes.c_int()
        try:
            _check(self.lib.nvrtcGetNumSupportedArchs(ctypes.byref(count)), self.lib, "nvrtcGetNumSupportedArchs")
        except AttributeError:
            return []
        values = (ctypes.c_int * count.value)()
        _check(self.lib.nvrtcGetSupportedArchs(values), self.lib, "nvrtcGetSupportedArchs")
        return list(values)

    def compile(self, source: str, options: list[str], headers: dict[str, str], exprs: list[str], ptx: bool) -> tuple[bool, bytes, str, dict[str, str]]:
        lib = self.lib
        prog = ctypes.c_void_p()
        names = list(headers)
        n = len(names)
        contents = (ctypes.c_char_p * n)(*[headers[k].encode() for k in names])
        includes = (ctypes.c_char_p * n)(*[k.encode() for k in names])
        _check(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), PROGRAM.encode(), n, contents, includes), lib, "nvrtcCreateProgram")
        try:
            for expr in exprs:
                _check(lib.nvrtcAddNameExpression(prog, expr.encode()), lib, "nvrtcAddNameExpression")
            opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
            status = lib.nvrtcCompileProgram(prog, len(options), opts)
            size = ctypes.c_size_t()
            _check(lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), lib, "nvrtcGetProgramLogSize")
            buf = ctypes.create_string_buffer(size.value)
            _check(lib.nvrtcGetProgramLog(prog, buf), lib, "nvrtcGetProgramLog")
            log = buf.value.decode(errors="replace")
            if status != 0:
                return False, b"", log, {}
            get_size, get = (lib.nvrtcGetPTXSize, lib.nvrtcGetPTX) if ptx else (lib.nvrtcGetCUBINSize, lib.nvrtcGetCUBIN)
            _check(get_size(prog, ctypes.byref(size)), lib, "nvrtcGet*Size")
            image = ctypes.create_string_buffer(size.value)
            _check(get(prog, image), lib, "nvrtcGet*")
            lowered: dict[str, str] = {}
            for expr in exprs:
                out = ctypes.c_char_p()
                _check(lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(out)), lib, "nvrtcGetLoweredName")
                lowered[expr] = (out.value or b"").decode()
            return True, image.raw, log, lowered
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(prog))


class _NvrtcBindings:
    """NVRTC through cuda-python's ``cuda.bindings.nvrtc``."""

    kind = "cuda-python"

    def __init__(self, path: Path | None) -> None:
        if path is not None:
            # cuda.pathfinder finds an already-loaded libnvrtc first; wheels outside site-packages it may not.
            _preload(path)
        from cuda.bindings import nvrtc

        self.m = nvrtc
        self.path = path
        self.version()

    def _ok(self, result: Any, call: str) -> list[Any]:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.m.nvrtcResult.NVRTC_SUCCESS:
            _, text = self.m.nvrtcGetErrorString(err)
            raise CudaError(f"{call} failed: {text.decode() if isinstance(text, bytes) else text}")
        return rest

    def version(self) -> tuple[int, int]:
        major, minor = self._ok(self.m.nvrtcVersion(), "nvrtcVersion")
        return int(major), int(minor)

    def archs(self) -> list[int]:
        (values,) = self._ok(self.m.nvrtcGetSupportedArchs(), "nvrtcGetSupportedArchs")
        return [int(v) for v in values]

    def compile(self, source: str, options: list[str], headers: dict[str, str], exprs: list[str], ptx: bool) -> tuple[bool, bytes, str, dict[str, str]]:
        m = self.m
        names = list(headers)
        (prog,) = self._ok(
            m.nvrtcCreateProgram(source.encode(), PROGRAM.encode(), len(names), [headers[k].encode() for k in names], [k.encode() for k in names]),
            "nvrtcCreateProgram",
        )
        try:
            for expr in exprs:
                self._ok(m.nvrtcAddNameExpression(prog, expr.encode()), "nvrtcAddNameExpression")
            opts = [o.encode() for o in options]
            (status, *_) = m.nvrtcCompileProgram(prog, len(opts), opts)
            (size,) = self._ok(m.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
            buf = b" " * int(size)
            self._ok(m.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
            log = buf.rstrip(b"\0 ").decode(errors="replace")
            if status != m.nvrtcResult.NVRTC_SUCCESS:
                return False, b"", log, {}
            get_size, get = (m.nvrtcGetPTXSize, m.nvrtcGetPTX) if ptx else (m.nvrtcGetCUBINSize, m.nvrtcGetCUBIN)
            (size,) = self._ok(get_size(prog), "nvrtcGet*Size")
            image = b" " * int(size)
            self._ok(get(prog, image), "nvrtcGet*")
            lowered = {}
            for expr in exprs:
                (name,) = self._ok(m.nvrtcGetLoweredName(prog, expr.encode()), "nvrtcGetLoweredName")
                lowered[expr] = name.decode() if isinstance(name, bytes) else str(name)
            return True, image, log, lowered
        finally:
            m.nvrtcDestroyProgram(prog)


def _binding_choice() -> str:
    choice = os.environ.get(BINDING_ENV, "auto").strip().lower()
    return choice if choice in ("auto", "cuda-python", "ctypes") else "auto"


@cache
def _nvrtc() -> _NvrtcCtypes | _NvrtcBindings:
    """The NVRTC binding to compile with: cuda.bindings when it works, else ctypes.

    Raises:
        CudaUnavailable: neither finds a usable libnvrtc.
    """
    choice = _binding_choice()
    reasons: list[str] = []
    libraries = _nvrtc_candidates()
    if choice in ("auto", "cuda-python"):
        if importlib.util.find_spec("cuda") is not None and importlib.util.find_spec("cuda.bindings") is not None:
            try:
                return _NvrtcBindings(libraries[0] if libraries else None)
            except Exception as exc:  # noqa: BLE001 - any failure falls back to ctypes, with the reason kept
                reasons.append(f"cuda.bindings.nvrtc: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        else:
            reasons.append("cuda-python (cuda.bindings) is not installed")
    if choice in ("auto", "ctypes"):
        names = [*libraries, *(Path(n) for n in ("libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"))]
        found = ctypes.util.find_library("nvrtc")
        if found:
            names.append(Path(found))
        for lib in names:
            try:
                api = _NvrtcCtypes(lib)
                api.version()
                return api
            except (OSError, AttributeError, CudaError) as exc:
                reasons.append(f"{lib}: {str(exc)[:120]}")
                continue
        if not libraries:
            reasons.append("no libnvrtc.so under the nvidia wheels, torch/lib, CUDA_HOME or /usr/local/cuda")
    raise CudaUnavailable("unavailable: NVRTC could not be loaded (" + "; ".join(reasons[-4:]) + ")")


@dataclass(frozen=True)
class NvrtcFacts:
    version: tuple[int, int]
    archs: tuple[int, ...]
    binding: str
    library: str
    includes: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"NVRTC {self.version[0]}.{self.version[1]} via {self.binding}"


@cache
def nvrtc_facts() -> NvrtcFacts:
    """Version, supported architectures and header directories of the NVRTC in use.

    Raises:
        CudaUnavailable: NVRTC cannot be loaded.
    """
    api = _nvrtc()
    path = getattr(api, "path", None)
    library = Path(path) if path else None
    return NvrtcFacts(api.version(), tuple(api.archs()), api.kind, str(library or ""), tuple(_include_dirs(library)))
