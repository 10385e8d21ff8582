"""Static scans shared by backends whose kernel source sits in Python string literals (cpp, cuda).

Such a candidate builds its kernel with one call (``load_cpp(src)``, ``load_cuda(src)``,
``load_inline(...)``) and must use what the call returned. Its reduced precision hides in
the C/C++/CUDA text, so the strings are searched with C comments blanked out. Each backend
passes its own ``BuildCall`` predicate; the scans only look at candidates that make such
a call, so a note in a Triton candidate's string never reads as kernel source.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator

from kfoundry.backends.base import KIND_NAMES, Resolve, SourceHit

#: (the call, its resolved dotted name) -> whether it builds this backend's kernel
BuildCall = Callable[[ast.Call, list[str]], bool]

# (pattern, kind, what the match is) over kernel source; word boundaries keep `half` as a variable name legal.
_KERNEL_PATTERNS: list[tuple[re.Pattern[str], str, str]] = [(re.compile(p), kind, what) for p, kind, what in (
    (r"\b__half2?\b|\bhalf2\b|\b__float2half\w*|\b__floats2half2\w*|\b__half2float\b|\b__h(?:add|sub|mul|div|fma)2?(?:_\w+)?\b",
     "fp16", "float16 type or intrinsic"),
    (r"\b(?:at|c10|torch)::(?:Half|kHalf|kFloat16)\b|\bScalarType::Half\b|\b_Float16\b|\b__fp16\b|\bstd::float16_t\b|\b_mm\d*_cvtps_ph\b",
     "fp16", "float16 type"),
    (r"\b(?:__)?nv_bfloat162?\b|\b__float2bfloat16\w*|\b__floats2bfloat162\w*|\b__bfloat162float\b", "bf16", "bfloat16 type or intrinsic"),
    (r"\b(?:at|c10|torch)::(?:BFloat16|kBFloat16)\b|\bScalarType::BFloat16\b|\b__bf16\b|\bstd::bfloat16_t\b|\b_mm\d*_(?:cvtne\w*pbh|dpbf16_ps)\b",
     "bf16", "bfloat16 type"),
    (r"\b__nv_fp8\w*|\bFloat8_e\w+|\bkFloat8_\w+|\bCUDA_R_8F_\w+", "fp8", "float8 type"),
    (r"\bCUDA_R_16F\b|\bCUBLAS_COMPUTE_32F_FAST_16F\b", "fp16", "cuBLAS float16 mode"),
    (r"\bCUDA_R_16BF\b|\bCUBLAS_COMPUTE_32F_FAST_16BF\b", "bf16", "cuBLAS bfloat16 mode"),
    (r"\bCUBLAS_COMPUTE_32F_FAST_TF32\b|\bCUBLAS_TF32_TENSOR_OP_MATH\b|\bprecision::tf32\b|\b__float_to_tf32\b", "tf32", "TF32 mode"),
    (r"(?<![\w-])--?use_fast_math\b|(?<![\w])(?:-f)?fast-math\b|(?<![\w-])-Ofast\b|-funsafe-math-optimizations\b"
     r"|(?<![\w-])--?(?:ftz=true|prec-div=false|prec-sqrt=false)\b", "fast_math", "fast-math flag"),
    (r"\b__(?:expf|exp10f|logf|log2f|log10f|sinf|cosf|tanf|sincosf|powf|fdividef)\b", "fast_math", "approximate fast-math intrinsic"),
)]
# Tensor-core instructions and fragments: the kind comes from the types they name.
_MMA = re.compile(r"\bwmma::fragment\s*<[^;>]*>|\b(?:w?gmma|mma|cvt)(?:\.\w+)+")
_MMA_TYPES = (("tf32", "tf32"), ("bf16", "bf16"), ("e4m3", "fp8"), ("e5m2", "fp8"), ("f16", "fp16"), ("half", "fp16"))
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
#: how a build call's result is bound: a name, an attribute, or nothing (used in place)
_ATTR, _EXPR = "<attr>", "<expr>"


class _BuildCalls(ast.NodeVisitor):
    """Build calls in source order, with the name each result is bound to."""

    def __init__(self, resolve: Resolve, builds: BuildCall) -> None:
        self.resolve = resolve
        self.builds = builds
        self.calls: list[tuple[int, str | None]] = []  # (line, bound name)

    def _is_build(self, node: ast.AST) -> bool:
        if not isinstance(node, ast.Call):
            return False
        parts = self.resolve(node.func)
        return bool(parts) and self.builds(node, parts)

    def visit_Assign(self, node: ast.Assign) -> None:
        if self._is_build(node.value):
            target = node.targets[0]
            bound = target.id if isinstance(target, ast.Name) else _ATTR if isinstance(target, ast.Attribute) else None
            self.calls.append((node.lineno, bound))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        # A call already seen as an assignment's value keeps its binding.
        if self._is_build(node) and not any(line == node.lineno for line, _ in self.calls):
            self.calls.append((node.lineno, _EXPR))
        self.generic_visit(node)


def build_calls(tree: ast.Module, resolve: Resolve, builds: BuildCall) -> list[tuple[int, str | None]]:
    """(line, bound name) of every call that builds a kernel, in source order."""
    scan = _BuildCalls(resolve, builds)
    scan.visit(tree)
    return scan.calls


def loaded_names(tree: ast.AST) -> set[str]:
    """Every name the module reads somewhere."""
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def marker_hits(tree: ast.Module, resolve: Resolve, builds: BuildCall) -> list[SourceHit]:
    """A hit when no call builds a kernel, or when every built library is bound to a name nobody reads."""
    calls = build_calls(tree, resolve, builds)
    if not calls:
        return [SourceHit(0, "no call builds a kernel")]
    named = [bound for _, bound in calls if bound not in (None, _ATTR, _EXPR)]
    if named and len(named) == len(calls) and not any(bound in loaded_names(tree) for bound in named):
        line = calls[0][0]
        return [SourceHit(line, f"the kernel library built at line {line} ({', '.join(named)}) is never used")]
    return []


def _strings(tree: ast.AST) -> Iterator[ast.Constant]:
    """String literals that can reach a compiler: bare string statements (docstrings) cannot."""
    bare = {id(n) for s in ast.walk(tree) if isinstance(s, ast.Expr) for n in ast.walk(s.value)
            if isinstance(s.value, (ast.Constant, ast.JoinedStr))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in bare:
            yield node


def _kernel_uses(node: ast.Constant) -> Iterator[SourceHit]:
    text = _COMMENT.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), node.value)
    # The string's own newlines are the source's when the literal spans exactly that many lines (a raw triple-quoted kernel).
    exact = node.end_lineno is not None and node.end_lineno - node.lineno == text.count("\n")

    def line(pos: int) -> int:
        return node.lineno + text.count("\n", 0, pos) if exact else node.lineno

    for pattern, kind, what in _KERNEL_PATTERNS:
        for m in pattern.finditer(text):
            verb = "builds with" if what == "fast-math flag" else "kernel source uses"
            yield SourceHit(line(m.start()), f"{verb} {m.group().strip()} ({what})", kind)
    for m in _MMA.finditer(text):
        found = m.group()
        # ".f16x2" packs two float16: the same type
        fields = {re.sub(r"x\d+$", "", f) for f in re.split(r"\W+", found.lower())}
        for token, kind in _MMA_TYPES:
            if token in fields:
                yield SourceHit(line(m.start()), f"kernel source uses {found} ({KIND_NAMES[kind]})", kind)
                break


def kernel_precision(tree: ast.Module, resolve: Resolve, builds: BuildCall) -> list[SourceHit]:
    """Reduced-precision spellings in the candidate's string literals, when it builds a kernel at all."""
    if not build_calls(tree, resolve, builds):
        return []
    return [hit for node in _strings(tree) for hit in _kernel_uses(node)]
