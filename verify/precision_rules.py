"""The ``precision_downcast`` rule's scan: every place a candidate computes below fp32.

Each use is reported with its kind ('fp16', 'bf16', 'fp8', 'tf32', 'fast_math'); the
guardrails decide, from the declared precision policy, which kinds are findings. Python
is read through the AST (comments and docstrings never count). For the cpp and cuda
backends the kernel lives in string literals, so those strings are searched too, with
their C/C++ comments blanked out.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

#: how a kind is named in messages
KIND_NAMES: dict[str, str] = {"fp16": "float16", "bf16": "bfloat16", "fp8": "float8", "tf32": "TF32", "fast_math": "fast-math"}

_DTYPES: dict[str, str] = {
    "torch.float16": "fp16", "torch.half": "fp16", "torch.bfloat16": "bf16", "torch.complex32": "fp16", "torch.chalf": "fp16",
    "torch.HalfTensor": "fp16", "torch.BFloat16Tensor": "bf16", "torch.cuda.HalfTensor": "fp16", "torch.cuda.BFloat16Tensor": "bf16",
    "triton.language.float16": "fp16", "triton.language.bfloat16": "bf16", "numpy.float16": "fp16", "numpy.half": "fp16",
}
_FP8_PREFIXES = ("torch.float8_", "triton.language.float8")
_CAST_METHODS = {"half": "fp16", "bfloat16": "bf16"}
_CONVERTERS = {"to", "type", "view", "astype", "cast"}

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


@dataclass(frozen=True)
class Use:
    line: int
    kind: str
    message: str


def _src(node: ast.AST, limit: int = 60) -> str:
    text = ast.unparse(node)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _const(node: ast.AST | None) -> object:
    """A literal's value; Ellipsis (never a real argument here) when the node is absent or not a literal."""
    return node.value if isinstance(node, ast.Constant) else ...


class _Python:
    """Reduced-precision dtypes, casts, autocast and Triton dots in the Python code."""

    def __init__(self, resolve: Callable[[ast.AST], list[str]]) -> None:
        self.resolve = resolve
        self.uses: list[Use] = []

    def dtype_kind(self, node: ast.AST) -> str | None:
        if not isinstance(node, (ast.Attribute, ast.Name)):
            return None
        name = ".".join(self.resolve(node))
        if name.startswith(_FP8_PREFIXES):
            return "fp8"
        return _DTYPES.get(name)

    def add(self, node: ast.AST, kind: str, message: str) -> None:
        self.uses.append(Use(getattr(node, "lineno", 0), kind, message))

    def scan(self, tree: ast.AST) -> list[Use]:
        # A dtype inside a comparison only inspects (``x.dtype == torch.float16``); it computes nothing.
        compared = {id(n) for c in ast.walk(tree) if isinstance(c, ast.Compare) for n in ast.walk(c)}
        # Breadth first: a call is seen before the dtype inside it, so its more telling message wins the dedup.
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                self.call(node)
            kind = self.dtype_kind(node)
            if kind and id(node) not in compared:
                self.add(node, kind, f"uses {_src(node)} ({KIND_NAMES[kind]})")
            if isinstance(node, ast.Attribute):
                parts = self.resolve(node)
                if parts[:1] == ["triton"] and parts[-1].startswith("fast_"):
                    self.add(node, "fast_math", f"calls the approximate {_src(node)} (fast-math)")
        return self.uses

    def call(self, node: ast.Call) -> None:
        parts = self.resolve(node.func)
        last = parts[-1] if parts else ""
        if isinstance(node.func, ast.Attribute) and last in _CAST_METHODS and not node.args and not node.keywords:
            kind = _CAST_METHODS[last]
            self.add(node, kind, f"converts to {KIND_NAMES[kind]} (.{last}())")
        if last in _CONVERTERS and isinstance(node.func, ast.Attribute):
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                kind = self.dtype_kind(arg)
                if kind:
                    self.add(node, kind, f"converts to {KIND_NAMES[kind]} (.{last}({_src(arg)}))")
        for kw in node.keywords:
            kind = self.dtype_kind(kw.value)
            if kind and kw.arg:
                self.add(node, kind, f"computes in {KIND_NAMES[kind]} ({kw.arg}={_src(kw.value)})")
        if parts[:1] == ["torch"] and last == "autocast":
            self.autocast(node, parts)
        if parts[:1] == ["triton"] and last == "dot":
            self.dot(node)
        if parts[:1] == ["triton"] and last == "dot_scaled":
            self.add(node, "fp8", "tl.dot_scaled multiplies microscaled float8/float4 operands")

    def autocast(self, node: ast.Call, parts: list[str]) -> None:
        kw = {k.arg: k.value for k in node.keywords}
        if _const(kw.get("enabled")) is False:
            return
        if "dtype" in kw:
            return  # the dtype keyword is reported by itself when it is a reduced type
        device = _const(kw.get("device_type", node.args[0] if node.args else None))
        # autocast's defaults: float16 on GPUs, bfloat16 on the CPU
        kind = "bf16" if device == "cpu" or "cpu" in parts else "fp16"
        self.add(node, kind, f"runs under autocast to {KIND_NAMES[kind]} ({_src(node)})")

    def dot(self, node: ast.Call) -> None:
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
                return
            kind = "bf16" if isinstance(value, str) and "bf16" in value.lower() else "tf32"
            shown = repr(value) if value is not ... else _src(precision)
            self.add(node, kind, f"tl.dot with input_precision={shown} multiplies fp32 in {KIND_NAMES[kind]} "
                                 '(pass the literal input_precision="ieee" for strict fp32)')
            return
        flag = _const(allow)
        if allow is not None and flag is False:
            return
        if allow is not None and flag is True:
            self.add(node, "tf32", 'tl.dot with allow_tf32=True multiplies fp32 in TF32 (pass input_precision="ieee" for strict fp32)')
            return
        self.add(node, "tf32", 'tl.dot without input_precision="ieee" multiplies fp32 in TF32 on NVIDIA GPUs '
                               '(Triton\'s default; pass input_precision="ieee" for strict fp32)')


def _strings(tree: ast.AST) -> Iterator[ast.Constant]:
    """String literals that can reach a compiler: bare string statements (docstrings) cannot."""
    bare = {id(n) for s in ast.walk(tree) if isinstance(s, ast.Expr) for n in ast.walk(s.value)
            if isinstance(s.value, (ast.Constant, ast.JoinedStr))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in bare:
            yield node


def _kernel_uses(node: ast.Constant) -> Iterator[Use]:
    text = _COMMENT.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), node.value)
    # The string's own newlines are the source's when the literal spans exactly that many lines (a raw triple-quoted kernel).
    exact = node.end_lineno is not None and node.end_lineno - node.lineno == text.count("\n")

    def line(pos: int) -> int:
        return node.lineno + text.count("\n", 0, pos) if exact else node.lineno

    for pattern, kind, what in _KERNEL_PATTERNS:
        for m in pattern.finditer(text):
            verb = "builds with" if what == "fast-math flag" else "kernel source uses"
            yield Use(line(m.start()), kind, f"{verb} {m.group().strip()} ({what})")
    for m in _MMA.finditer(text):
        found = m.group()
        # ".f16x2" packs two float16: the same type
        fields = {re.sub(r"x\d+$", "", f) for f in re.split(r"\W+", found.lower())}
        for token, kind in _MMA_TYPES:
            if token in fields:
                yield Use(line(m.start()), kind, f"kernel source uses {found} ({KIND_NAMES[kind]})")
                break


def uses(tree: ast.AST, backend: str, resolve: Callable[[ast.AST], list[str]]) -> list[Use]:
    """Every reduced-precision use in ``tree``, one per (line, kind).

    ``resolve`` turns a name or attribute chain into its dotted path with import aliases
    expanded (``tl.float16`` -> ["triton", "language", "float16"]).
    """
    found = _Python(resolve).scan(tree)
    if backend in ("cpp", "cuda"):
        for node in _strings(tree):
            found.extend(_kernel_uses(node))
    seen: set[tuple[int, str]] = set()
    unique: list[Use] = []
    for use in found:
        if (use.line, use.kind) not in seen:
            seen.add((use.line, use.kind))
            unique.append(use)
    return sorted(unique, key=lambda u: u.line)
