"""The ``precision_downcast`` rule's scan: every place a candidate computes below fp32.

Each use is reported with its kind ('fp16', 'bf16', 'fp8', 'tf32', 'fast_math'); the
guardrails decide, from the declared precision policy, which kinds are findings. Python
is read through the AST (comments and docstrings never count). This module knows how
Python code computes in a dtype (casts, dtype keywords, autocast) with torch's and
numpy's spellings; each backend adds its own: the dtypes of its Python DSL
(``Backend.precision_dtype``) and what only it can see, such as DSL matmuls or kernel
source in string literals (``Backend.precision_hits``).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kfoundry.backends.base import KIND_NAMES, Backend, Resolve

__all__ = ["KIND_NAMES", "Use", "uses"]

_DTYPES: dict[str, str] = {
    "torch.float16": "fp16", "torch.half": "fp16", "torch.bfloat16": "bf16", "torch.complex32": "fp16", "torch.chalf": "fp16",
    "torch.HalfTensor": "fp16", "torch.BFloat16Tensor": "bf16", "torch.cuda.HalfTensor": "fp16", "torch.cuda.BFloat16Tensor": "bf16",
    "numpy.float16": "fp16", "numpy.half": "fp16",
}
_FP8_PREFIX = "torch.float8_"
_CAST_METHODS = {"half": "fp16", "bfloat16": "bf16"}
_CONVERTERS = {"to", "type", "view", "astype", "cast"}


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
    """Reduced-precision dtypes, casts and autocast in the Python code."""

    def __init__(self, resolve: Resolve, backend_dtype: Callable[[str], str | None]) -> None:
        self.resolve = resolve
        self.backend_dtype = backend_dtype
        self.uses: list[Use] = []

    def dtype_kind(self, node: ast.AST) -> str | None:
        if not isinstance(node, (ast.Attribute, ast.Name)):
            return None
        name = ".".join(self.resolve(node))
        if name.startswith(_FP8_PREFIX):
            return "fp8"
        return _DTYPES.get(name) or self.backend_dtype(name)

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


def uses(tree: ast.Module, resolve: Resolve, backends: Sequence[Backend]) -> list[Use]:
    """Every reduced-precision use in ``tree``, one per (line, kind), in line order.

    ``resolve`` turns a name or attribute chain into its dotted path with import aliases
    expanded (``tl.float16`` -> ["triton", "language", "float16"]). Every backend in
    ``backends`` contributes its spellings: a candidate may use any backend's code.
    """

    def backend_dtype(name: str) -> str | None:
        return next((kind for b in backends if (kind := b.precision_dtype(name))), None)

    found = _Python(resolve, backend_dtype).scan(tree)
    for backend in backends:
        found.extend(Use(hit.line, hit.kind, hit.message) for hit in backend.precision_hits(tree, resolve))
    seen: set[tuple[int, str]] = set()
    unique: list[Use] = []
    for use in found:
        if (use.line, use.kind) not in seen:
            seen.add((use.line, use.kind))
            unique.append(use)
    return sorted(unique, key=lambda u: u.line)
