"""CUDA source text: kernel signatures parsed from CUDA C++, and the sources a candidate builds, read with ``ast``.

``find_kernels`` gives every ``__global__`` function's name, scope and parameter types (shared by
``load_cuda``, which checks and converts launch arguments with them, and by nvcc compile-only).
``extract_units`` finds the CUDA source strings a candidate passes to ``load_cuda(...)`` or
``torch.utils.cpp_extension.load_inline(cuda_sources=...)`` without importing it, keeping the
``candidate.py`` line of each piece so compiler messages can be located there.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass, field

from kfoundry.backends.cuda_flags import _FLAG_OK
from kfoundry.schema import Diagnostic

CANDIDATE_FILE = "candidate.py"
#: What load_inline prepends to the joined cuda_sources (torch.utils.cpp_extension.load_inline).
LOAD_INLINE_PREFIX = ("#include <torch/types.h>", "#include <cuda.h>", "#include <cuda_runtime.h>")


# -- kernel signatures (shared with load_cuda) ---------------------------------------------------

_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_STRINGS = re.compile(r'"(?:\\.|[^"\\\n])*"')
_KERNEL = re.compile(
    r"__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(?:static\s+|inline\s+|__forceinline__\s+|__noinline__\s+)*void\s+"
    r"(?:__launch_bounds__\s*\([^)]*\)\s*)?(?P<name>[A-Za-z_]\w*)\s*\((?P<args>[^)]*)\)\s*(?P<end>[{;])"
)
_TYPE_WORDS = {"int", "long", "short", "char", "unsigned", "signed", "float", "double", "bool", "void"}
_CANONICAL = {
    "signed": "int", "signed int": "int", "unsigned": "unsigned int", "long int": "long", "signed long": "long",
    "long long int": "long long", "signed long long": "long long", "unsigned long int": "unsigned long",
    "unsigned long long int": "unsigned long long", "short int": "short", "signed short": "short",
    "unsigned short int": "unsigned short", "half": "__half", "half2": "__half2", "nv_bfloat16": "__nv_bfloat16",
    "nv_bfloat162": "__nv_bfloat162",
}


@dataclass(frozen=True)
class Param:
    """One kernel parameter: its base type and pointer depth (``const float* x`` -> ("float", 1))."""

    base: str
    pointer: int
    reference: bool = False


@dataclass
class KernelDecl:
    name: str
    params: list[Param] | None  # None: the parameter list could not be read
    extern_c: bool
    template: bool
    qualified: str  # name with enclosing namespaces, for NVRTC name expressions
    line: int  # 1-based line in the source


def strip_comments(source: str) -> str:
    """Comments become spaces, keeping every newline so positions and line numbers stay valid."""
    return _COMMENTS.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), source)


def parse_param(text: str) -> Param:
    text = text.split("=")[0]
    text = re.sub(r"__align__\s*\(\s*\d+\s*\)", " ", text)
    text = re.sub(r"\b(const|volatile|__restrict__|__restrict|restrict|__grid_constant__|struct|register)\b", " ", text)
    text = re.sub(r"\b(std|cuda::std)::", "", text)
    array = bool(re.search(r"\[\s*\d*\s*\]\s*$", text))
    text = re.sub(r"\[\s*\d*\s*\]\s*$", "", text)
    pointer = text.count("*") + int(array)
    reference = "&" in text
    words = text.replace("*", " ").replace("&", " ").split()
    if len(words) >= 2 and words[-1] not in _TYPE_WORDS:
        words = words[:-1]  # the parameter's name
    base = " ".join(words)
    return Param(_CANONICAL.get(base, base), pointer, reference)


def _split_args(args: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(args):
        if ch in "<([":
            depth += 1
        elif ch in ">)]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(args[start:i])
            start = i + 1
    parts.append(args[start:])
    return [p for p in (p.strip() for p in parts) if p]


def _scopes(text: str, end: int) -> tuple[bool, list[str] | None]:
    """(inside an extern "C" block, enclosing namespace names) at ``end``; names None inside a class/function."""
    stack: list[tuple[str, str]] = []
    for m in re.finditer(r"[{}]", text[:end]):
        if m.group() == "}":
            if stack:
                stack.pop()
            continue
        before = text[max(0, m.start() - 200) : m.start()]
        if re.search(r'extern\s*"C"\s*$', before):
            stack.append(("extern", ""))
        elif ns := re.search(r"namespace\s*([A-Za-z_]\w*)?\s*$", before):
            stack.append(("namespace", ns.group(1) or ""))
        else:
            stack.append(("other", ""))
    if any(kind == "other" for kind, _ in stack):
        return False, None
    return any(kind == "extern" for kind, _ in stack), [n for kind, n in stack if kind == "namespace" and n]


def find_kernels(source: str) -> list[KernelDecl]:
    """Every ``__global__`` function defined in ``source`` (declarations without a body are skipped)."""
    text = _STRINGS.sub(lambda m: m.group() if m.group() == '"C"' else '"' + " " * (len(m.group()) - 2) + '"', strip_comments(source))
    found: dict[str, KernelDecl] = {}
    for m in _KERNEL.finditer(text):
        if m["end"] != "{":
            continue
        head = text[max(0, m.start() - 300) : m.start()]
        template = bool(re.search(r"template\s*<[^;{}]*>\s*$", head))
        extern_here = bool(re.search(r'extern\s*"C"\s*$', head))
        in_extern, namespaces = _scopes(text, m.start())
        if namespaces is None:
            continue
        args = m["args"].strip()
        params: list[Param] | None = [parse_param(a) for a in _split_args(args)] if args and args != "void" else []
        qualified = "::".join([*namespaces, m["name"]])
        line = text.count("\n", 0, m.start()) + 1
        decl = KernelDecl(m["name"], params, extern_here or in_extern, template, qualified, line)
        if m["name"] in found and found[m["name"]].params != params:
            found[m["name"]].params = None  # overloaded: the name alone does not say which one
            continue
        found[m["name"]] = decl
    return list(found.values())


# -- reading CUDA sources out of a candidate (never importing it) --------------------------------


@dataclass
class Segment:
    """A piece of a compiled file; ``line`` is the candidate.py line of its first line when known."""

    text: str
    line: int | None
    flat: bool = False  # a one-line literal with escaped newlines: every line maps to ``line``


@dataclass
class CudaUnit:
    """One CUDA translation unit the candidate builds: a load_cuda source or load_inline's cuda_sources."""

    kind: str  # "load_cuda" | "load_inline"
    name: str
    segments: list[Segment]
    flags: list[str]
    call_line: int
    ignored_flags: list[str] = field(default_factory=list)
    has_cpp_sources: bool = False

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments)

    def locate(self, line: int) -> tuple[str, int]:
        """(file, line) for a line of the compiled file: candidate.py where the text came from a literal."""
        at = 1
        for seg in self.segments:
            if not seg.text:
                continue
            lines = seg.text.count("\n")
            if at <= line <= at + lines and not (line == at + lines and seg.text.endswith("\n")):
                if seg.line is not None:
                    return CANDIDATE_FILE, seg.line if seg.flat else seg.line + (line - at)
                break
            at += lines
        return f"{self.name}.cu", line


def _literal_line(source: str, node: ast.Constant) -> int | None:
    """Line of the string's first line when its lines map 1:1 onto the file (no escaped newlines)."""
    segment = ast.get_source_segment(source, node)
    if segment is None or not isinstance(node.value, str):
        return None
    return node.lineno if segment.count("\n") == node.value.count("\n") else None


class _Resolver:
    def __init__(self, source: str, tree: ast.Module) -> None:
        self.source = source
        self.assigned: dict[str, list[ast.Assign | ast.AnnAssign]] = {}
        self.augmented: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        self.assigned.setdefault(target.id, []).append(node)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
                self.assigned.setdefault(node.target.id, []).append(node)
            elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
                self.augmented.add(node.target.id)

    def segments(self, node: ast.expr | None, before: int, depth: int = 0) -> list[Segment] | None:
        """Static text of ``node`` as segments, or None when it is only known at run time."""
        if node is None or depth > 20:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            line = _literal_line(self.source, node)
            if line is None and node.lineno == node.end_lineno:
                return [Segment(node.value, node.lineno, flat=True)]
            return [Segment(node.value, line)]
        if isinstance(node, ast.Name):
            if node.id in self.augmented:
                return None
            candidates = [a for a in self.assigned.get(node.id, []) if a.lineno <= before] or self.assigned.get(node.id, [])
            if len(candidates) != 1:
                return None  # unbound or reassigned: which text runs is a run-time question
            value = candidates[0].value
            return self.segments(value, candidates[0].lineno, depth + 1)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left = self.segments(node.left, before, depth + 1)
            right = self.segments(node.right, before, depth + 1)
            return left + right if left is not None and right is not None else None
        if isinstance(node, (ast.List, ast.Tuple)):
            parts: list[Segment] = []
            for i, element in enumerate(node.elts):
                segs = self.segments(element, before, depth + 1)
                if segs is None:
                    return None
                parts += ([Segment("\n", None)] if i else []) + segs
            return parts
        if (
            isinstance(node, ast.Call)
            and _call_name(node) == "dedent"
            and len(node.args) == 1
            and (inner := self.segments(node.args[0], before, depth + 1)) is not None
            and len(inner) == 1
        ):
            return [Segment(textwrap.dedent(inner[0].text), inner[0].line)]
        return None

    def strings(self, node: ast.expr | None, before: int) -> list[str] | None:
        if node is None:
            return []
        if isinstance(node, ast.Name):
            found = [a for a in self.assigned.get(node.id, []) if a.lineno <= before]
            return self.strings(found[-1].value, found[-1].lineno) if len(found) == 1 else None
        if isinstance(node, (ast.List, ast.Tuple)):
            values = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            return values if len(values) == len(node.elts) else None
        return None


def _call_name(node: ast.Call) -> str:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return ""


def _argument(node: ast.Call, index: int, keyword: str) -> ast.expr | None:
    for kw in node.keywords:
        if kw.arg == keyword:
            return kw.value
    if 0 <= index < len(node.args) and not any(isinstance(a, ast.Starred) for a in node.args[: index + 1]):
        return node.args[index]
    return None


def extract_units(candidate: str) -> tuple[list[CudaUnit], list[Diagnostic]]:
    """The CUDA translation units a candidate builds, read with ``ast``; diagnostics for what cannot be read."""
    try:
        tree = ast.parse(candidate, filename=CANDIDATE_FILE)
    except SyntaxError as exc:
        return [], [Diagnostic(file=CANDIDATE_FILE, line=exc.lineno, column=exc.offset, message=f"Python syntax error: {exc.msg}")]
    resolver = _Resolver(candidate, tree)
    units: list[CudaUnit] = []
    notes: list[Diagnostic] = []
    calls = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call) and _call_name(n) in ("load_cuda", "load_inline")), key=lambda n: n.lineno)
    for call in calls:
        kind = _call_name(call)
        if kind == "load_cuda":
            source_node, name_node, flags_node = _argument(call, 0, "source"), _argument(call, 1, "name"), _argument(call, 2, "options")
        else:
            source_node, name_node, flags_node = _argument(call, 2, "cuda_sources"), _argument(call, 0, "name"), _argument(call, -1, "extra_cuda_cflags")
            if source_node is None or (isinstance(source_node, ast.Constant) and source_node.value is None):
                continue  # a C++-only extension: nothing for nvcc
        segments = resolver.segments(source_node, call.lineno)
        if segments is None:
            notes.append(
                Diagnostic(
                    file=CANDIDATE_FILE, line=call.lineno, severity="warning",
                    message=f"the CUDA source passed to {kind}(...) is built at run time (not a string literal or a module-level "
                    "string variable), so compile-only could not check it; it is compiled when the candidate runs on a GPU",
                )
            )
            continue
        name = name_node.value if isinstance(name_node, ast.Constant) and isinstance(name_node.value, str) else f"{kind}_{len(units)}"
        name = re.sub(r"\W", "_", name)[:64] or "kernel"
        flags = resolver.strings(flags_node, call.lineno) or []
        allowed = [f for f in flags if _FLAG_OK.match(f)]
        if kind == "load_inline":
            segments = [Segment("\n".join(LOAD_INLINE_PREFIX) + "\n", None), *segments]
        units.append(
            CudaUnit(
                kind=kind, name=name, segments=segments, flags=allowed, call_line=call.lineno,
                ignored_flags=[f for f in flags if f not in allowed],
                has_cpp_sources=kind == "load_inline" and _argument(call, 1, "cpp_sources") is not None,
            )
        )
    return units, notes
