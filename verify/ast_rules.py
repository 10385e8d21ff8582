"""Static AST rules over candidate source: tripwires for the known reward hacks.

Each rule has an id, a default severity (``block`` or ``warn``) and may be overridden per
backend, by a config file or by tool arguments (``Guardrails.rules``). A rule looks at
the parsed module, never at comments or strings, so a marker in a comment does not
count and a banned name inside a string does not trip anything.

Two rules come from the backends, which alone know their own spellings: ``backend_marker``
(the candidate's backend says whether its kernel is really built and used,
``Backend.marker_hits``) and ``precision_downcast`` (``precision_rules``, with every backend's
precision spellings, including kernel source carried in string literals). Precision hits,
and the TF32 ones of ``precision_flags``, carry a ``kind`` that the declared precision policy may allow.

Static rules are tripwires, not proof; the worker's runtime checks back them up.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from kfoundry.backends import all_backends, get_backend
from kfoundry.backends.base import Backend, Severity
from kfoundry.verify import precision_rules


@dataclass(frozen=True)
class Rule:
    id: str
    severity: Severity
    summary: str


@dataclass(frozen=True)
class Hit:
    rule: str
    line: int
    message: str
    #: reduced-precision kind ('fp16', 'bf16', 'fp8', 'tf32', 'fast_math'); "" when no policy can allow the hit
    kind: str = ""


RULES: dict[str, Rule] = {r.id: r for r in (
    Rule("backend_marker", "block", "the backend's kernel must really be built and used (not only named in a comment or string)"),
    Rule("try_fallback", "block", "no except handler that computes with torch/F/nn or the reference (fallback)"),
    Rule("concurrency", "block", "no threading/multiprocessing/subprocess/concurrent/os.system in the candidate"),
    Rule("low_level_os", "warn", "os.fork/os.open/os.write and friends (runtime checks catch leftover children)"),
    Rule("ctypes_libc", "block", "no ctypes.CDLL/cdll/pythonapi: loading libc or the interpreter directly"),
    Rule("file_io", "block", "no file or network I/O (open(), pathlib reads/writes, socket, torch.load/save)"),
    Rule("precision_flags", "block", "no global numerics flag changes (TF32, matmul precision, default dtype, denormals)"),
    # An early warning: the verdict on precision comes from the measured error against the float64 oracle
    # (a compensated 3xTF32 GEMM spells TF32 yet computes at fp32's accuracy; bit tricks spell nothing).
    Rule("precision_downcast", "warn", "reduced precision below the declared policy (downcasts, TF32, fp8, fast-math): an early "
         "warning, the measured error against the float64 oracle decides"),
    Rule("reference_use", "block", "no import of the reference, no Model subclass, no Model(...) call"),
    Rule("monkeypatch", "block", "no assignment to attributes of torch/time/triton/sys/builtins/... (patching timers or comparators)"),
    Rule("introspection", "block", "no gc.get_objects/get_referrers, sys._getframe, inspect frames (reading the harness's tensors)"),
    Rule("output_cache", "block", "no caches keyed by data_ptr() or id() (output caching across calls)"),
    Rule("dynamic_name", "block", "no names built at run time where the rules above read names: getattr/setattr/delattr with a computed "
         "name on a module or builtins, __import__/import_module of a computed name, eval/exec/compile, globals()/vars() lookups"),
)}

_CONCURRENCY_MODULES = {"threading", "_thread", "multiprocessing", "subprocess", "concurrent", "asyncio", "pty", "sched"}
_OS_PROCESS = {"system", "popen", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
               "execl", "execle", "execlp", "execlpe", "execv", "execve", "execvp", "execvpe", "posix_spawn", "posix_spawnp"}
_OS_LOW = {"fork", "forkpty", "vfork", "open", "write", "read", "pipe", "dup", "dup2", "fdopen", "kill", "register_at_fork"}
_NET_MODULES = {"socket", "urllib", "http", "requests", "ftplib", "smtplib", "telnetlib", "httpx", "aiohttp", "ssl", "shutil", "tempfile", "mmap"}
_CTYPES_LOADERS = {"CDLL", "cdll", "PyDLL", "pydll", "pythonapi", "LibraryLoader", "WinDLL", "find_library", "dlopen"}
_FILE_ATTRS = {"write_text", "write_bytes", "read_text", "read_bytes", "unlink", "rmdir", "symlink_to", "tofile"}
_FILE_CALLS = {("torch", "load"), ("torch", "save"), ("np", "load"), ("np", "save"), ("np", "fromfile"), ("np", "loadtxt"),
               ("numpy", "load"), ("numpy", "save"), ("numpy", "fromfile"), ("pickle", "load"), ("pickle", "loads"),
               ("io", "open"), ("os", "remove"), ("os", "listdir"), ("os", "scandir"), ("os", "walk"), ("glob", "glob")}
_PRECISION_ATTRS = {"allow_tf32", "allow_fp16_reduced_precision_reduction", "allow_bf16_reduced_precision_reduction",
                    "deterministic", "benchmark", "enabled", "fp32_precision"}
_PRECISION_CALLS = {"set_float32_matmul_precision", "set_default_dtype", "set_default_tensor_type", "set_flush_denormal",
                    "use_deterministic_algorithms", "set_default_device", "set_autocast_enabled", "set_autocast_dtype",
                    "set_autocast_gpu_dtype"}
# triton (and its usual alias tl) is protected whatever the backend: torch.compile baselines run Triton kernels.
_PATCH_ROOTS = {"torch", "time", "triton", "tl", "sys", "builtins", "kfoundry", "os", "numpy", "np", "gc", "F", "nn",
                "math", "ctypes", "reference", "functools", "importlib", "inspect", "timeit"}
_INTROSPECTION = {("gc", "get_objects"), ("gc", "get_referrers"), ("gc", "get_referents"), ("sys", "_getframe"),
                  ("inspect", "currentframe"), ("inspect", "stack"), ("inspect", "getouterframes"), ("sys", "settrace"),
                  ("sys", "setprofile"), ("sys", "modules")}
# Modules whose attributes the other rules judge by name: reaching one by a computed name hides it from them.
_NAMED_ROOTS = _PATCH_ROOTS | {"__builtins__", "io", "socket", "subprocess", "ctypes", "shutil", "pathlib", "threading",
                               "multiprocessing", "pickle", "marshal", "mmap", "signal", "resource", "operator", "_thread"}
_ATTR_BY_NAME = {"getattr", "setattr", "delattr", "hasattr"}
_CODE_RUNNERS = {"eval", "exec", "compile", "execfile"}
_NAMESPACES = {"globals", "vars", "locals"}
_TORCH_ROOTS = {"torch", "F", "nn", "functional", "Model", "reference", "super", "np", "numpy"}
_ALLOC = {"empty", "empty_like", "zeros", "zeros_like", "ones", "ones_like", "full", "full_like", "tensor", "as_tensor",
          "device", "dtype", "Size", "cuda", "is_tensor", "get_default_dtype"}
_COMPUTE_METHODS = {"matmul", "mm", "bmm", "addmm", "einsum", "softmax", "log_softmax", "sigmoid", "relu", "gelu", "silu",
                    "tanh", "exp", "log", "sum", "mean", "var", "std", "max", "min", "norm", "layer_norm", "conv1d", "conv2d",
                    "conv3d", "linear", "forward", "__call__", "mul", "add", "div", "sub", "pow", "sqrt", "rsqrt", "cumsum"}


def _dotted(node: ast.AST) -> list[str]:
    """``a.b.c`` -> ["a", "b", "c"]; calls and subscripts in the chain are stepped through."""
    parts: list[str] = []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Name):
            parts.append(node.id)
            return list(reversed(parts))
        elif isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Subscript):
            node = node.value
        else:
            return list(reversed(parts))


class _Scan(ast.NodeVisitor):
    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.aliases: dict[str, str] = {}  # local name -> module it stands for ("th" -> "torch")
        self.defined_classes: set[str] = set()
        self.key_names: set[str] = set()

    def hit(self, rule: str, node: ast.AST, message: str, kind: str = "") -> None:
        self.hits.append(Hit(rule, getattr(node, "lineno", 0), message, kind))

    def root(self, node: ast.AST) -> list[str]:
        parts = _dotted(node)
        if parts and parts[0] in self.aliases:
            parts = self.aliases[parts[0]].split(".") + parts[1:]
        return parts

    # -- imports -------------------------------------------------------------
    def _module(self, node: ast.AST, name: str) -> None:
        top = name.split(".")[0]
        if top in _CONCURRENCY_MODULES:
            self.hit("concurrency", node, f"imports {name}")
        if top in _NET_MODULES:
            self.hit("file_io", node, f"imports {name}")
        if top == "reference":
            self.hit("reference_use", node, "imports the reference module")
        if name in ("ctypes.util",):
            self.hit("ctypes_libc", node, "imports ctypes.util")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._module(node, alias.name)
            self.aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = node.module or ""
        self._module(node, mod)
        for alias in node.names:
            full = f"{mod}.{alias.name}" if mod else alias.name
            self.aliases[alias.asname or alias.name] = full
            if mod.split(".")[0] == "ctypes" and alias.name in _CTYPES_LOADERS:
                self.hit("ctypes_libc", node, f"imports ctypes.{alias.name}")
            if mod == "os" and alias.name in _OS_PROCESS:
                self.hit("concurrency", node, f"imports os.{alias.name}")
            if alias.name == "Model" and mod.split(".")[0] == "reference":
                self.hit("reference_use", node, "imports Model from the reference")
        self.generic_visit(node)

    # -- definitions ---------------------------------------------------------
    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.defined_classes.add(node.name)
        for base in node.bases:
            parts = self.root(base)
            if parts and parts[-1] == "Model":
                self.hit("reference_use", node, f"class {node.name} subclasses Model (the reference)")
        self.generic_visit(node)

    # -- statements ----------------------------------------------------------
    def _assigned(self, target: ast.AST, node: ast.AST) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                self._assigned(t, node)
            return
        if isinstance(target, ast.Attribute):
            parts = self.root(target)
            if parts and parts[-1] in _PRECISION_ATTRS and parts[0] == "torch":
                self.hit("precision_flags", node, f"sets {'.'.join(parts)}", _flag_kind(parts[-1], getattr(node, "value", None)))
            elif parts and parts[0] in _PATCH_ROOTS and parts[0] not in ("self",):
                self.hit("monkeypatch", node, f"assigns {'.'.join(parts)}")
        if isinstance(target, ast.Subscript):
            parts = self.root(target.value)
            if parts[:2] in (["sys", "modules"], ["builtins", "__dict__"]):
                self.hit("monkeypatch", node, f"assigns into {'.'.join(parts)}")

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._assigned(target, node)
        if self._has_identity_call(node.value):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    self.key_names.add(target.id)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._assigned(node.target, node)
        self.generic_visit(node)

    def visit_Try(self, node: ast.Try) -> None:
        for handler in node.handlers:
            for sub in ast.walk(ast.Module(body=handler.body, type_ignores=[])):
                if isinstance(sub, ast.Call) and self._is_compute_call(sub):
                    self.hit("try_fallback", handler, f"the except handler at line {handler.lineno} computes with {'.'.join(_dotted(sub.func)) or 'a call'} (fallback)")
                    break
        self.generic_visit(node)

    visit_TryStar = visit_Try  # type: ignore[assignment]

    def _is_compute_call(self, call: ast.Call) -> bool:
        parts = self.root(call.func)
        if not parts:
            return False
        if parts[0] in ("torch", "torch.nn", "torch.nn.functional") or parts[0].startswith("torch."):
            return parts[-1] not in _ALLOC
        if parts[0] in _TORCH_ROOTS:
            return True
        return len(parts) >= 2 and parts[-1] in _COMPUTE_METHODS

    def _has_identity_call(self, node: ast.AST) -> bool:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call):
                parts = _dotted(sub.func)
                if parts and (parts[-1] == "data_ptr" or parts == ["id"] or parts[-1] in ("untyped_storage", "storage")):
                    return True
        return False

    def _is_key(self, node: ast.AST) -> bool:
        if self._has_identity_call(node):
            return True
        return any(isinstance(n, ast.Name) and n.id in self.key_names for n in ast.walk(node))

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if self._is_key(node.slice):
            self.hit("output_cache", node, "indexes a container by data_ptr()/id() (output cache)")
        parts = self.root(node.value)
        if parts[:2] == ["sys", "modules"]:
            self.hit("introspection", node, "reads sys.modules[...]")
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        if any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops) and self._is_key(node.left):
            self.hit("output_cache", node, "looks up data_ptr()/id() in a container (output cache)")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        parts = self.root(node.func)
        name = ".".join(parts)
        if parts:
            head, last = parts[0], parts[-1]
            if head == "os" and last in _OS_PROCESS:
                self.hit("concurrency", node, f"calls {name}")
            if head == "os" and last in _OS_LOW and len(parts) == 2:
                self.hit("low_level_os", node, f"calls {name}")
            if head == "ctypes" and any(p in _CTYPES_LOADERS for p in parts[1:]):
                self.hit("ctypes_libc", node, f"calls {name}")
            if parts == ["open"] and "open" not in self.defined_classes:
                self.hit("file_io", node, "calls open()")
            if (head, last) in _FILE_CALLS or (len(parts) >= 2 and last in _FILE_ATTRS) or (head == "pathlib" and last in ("open", "iterdir", "glob", "rglob")):
                self.hit("file_io", node, f"calls {name}")
            if last in _PRECISION_CALLS and head == "torch":
                self.hit("precision_flags", node, f"calls {name}", _flag_kind(last, node.args[0] if node.args else None))
            if (head, last) in _INTROSPECTION or (len(parts) >= 2 and (parts[0], parts[1]) in _INTROSPECTION):
                self.hit("introspection", node, f"calls {name}")
            if parts == ["setattr"] and node.args:
                target = self.root(node.args[0])
                if target and target[0] in _PATCH_ROOTS:
                    self.hit("monkeypatch", node, f"setattr on {'.'.join(target)}")
            if last == "Model" and "Model" not in self.defined_classes:
                self.hit("reference_use", node, f"calls {name}(...) (the reference model)")
            if parts in (["__import__"], ["importlib", "import_module"]) and node.args and isinstance(node.args[0], ast.Constant):
                self._module(node, str(node.args[0].value))
            self._dynamic(node, parts)
            if last in ("get", "setdefault", "pop", "__contains__") and len(parts) >= 2 and node.args and self._is_key(node.args[0]):
                self.hit("output_cache", node, f"{name}() keyed by data_ptr()/id() (output cache)")
        self.generic_visit(node)


    def _dynamic(self, node: ast.Call, parts: list[str]) -> None:
        """Names built at run time: the structure gives them away whatever string they spell.

        ``getattr(builtins, "op" + "en")`` names no banned function in the source; what
        shows is a computed name on a module the rules read by name. Computed names on the
        candidate's own objects (``getattr(self.lib, "kernel_" + dtype)``) stay allowed.
        """
        literal = bool(node.args) and isinstance(node.args[0], ast.Constant)
        if parts in (["__import__"], ["importlib", "import_module"]) and node.args and not literal:
            self.hit("dynamic_name", node, f"{'.'.join(parts)}() of a name computed at run time")
        elif len(parts) == 1 and parts[0] in _CODE_RUNNERS:
            self.hit("dynamic_name", node, f"calls {parts[0]}() (code built at run time)")
        elif len(parts) == 1 and parts[0] in _ATTR_BY_NAME and len(node.args) >= 2 and not isinstance(node.args[1], ast.Constant):
            target = self.root(node.args[0])
            imported = isinstance(node.args[0], ast.Call) and self.root(node.args[0].func)[-1:] in (["__import__"], ["import_module"])
            if (target and target[0] in _NAMED_ROOTS) or imported:
                self.hit("dynamic_name", node, f"{parts[0]}() on {'.'.join(target) or 'an imported module'} with a name computed at run time")
        elif len(parts) == 1 and parts[0] in _NAMESPACES:
            self.hit("dynamic_name", node, f"calls {parts[0]}() (a namespace read by computed names)")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in ("__dict__", "__builtins__") and self.root(node.value)[:1] and self.root(node.value)[0] in _NAMED_ROOTS:
            self.hit("dynamic_name", node, f"reads {'.'.join(self.root(node))} (a module's namespace by computed names)")
        self.generic_visit(node)


def scan(source: str, backend: Backend | str) -> list[Hit] | None:
    """Every rule hit in ``source`` for a candidate of ``backend`` (an instance or its registered name).

    None when the source does not parse: the worker reports the syntax error.

    Raises:
        UnknownBackendError: ``backend`` is a name nobody registered.
    """
    own = get_backend(backend) if isinstance(backend, str) else backend
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    s = _Scan()
    s.visit(tree)
    hits = list(s.hits)
    # Resolving names needs every import seen, so the backends' scans run after the visit.
    hits.extend(Hit("backend_marker", h.line, h.message) for h in own.marker_hits(tree, s.root))
    hits.extend(Hit("precision_downcast", u.line, u.message, u.kind) for u in precision_rules.uses(tree, s.root, _spellers(own)))
    return hits


def _spellers(own: Backend) -> list[Backend]:
    """Backends whose precision spellings apply: every registered one, plus ``own`` when it is not registered (a test double)."""
    registered = all_backends()
    return registered if any(b.name == own.name for b in registered) else [*registered, own]


def _flag_kind(flag: str, value: ast.AST | None) -> str:
    """'tf32' for a flag change that only concerns TF32 (harmless where the policy allows TF32), else ""."""
    setting = value.value if isinstance(value, ast.Constant) else None
    if flag == "allow_tf32":
        return "tf32"
    if flag == "set_float32_matmul_precision" and setting in ("high", "medium"):
        return "tf32"
    if flag == "fp32_precision" and setting == "tf32":
        return "tf32"
    return ""
