"""The package's import structure: no cycles, and each layer imports only the layers beneath it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: installed package -> folder in the checkout (pyproject's package-dir mapping)
FOLDERS = {"kfoundry": "kfoundry", **{f"kfoundry.{name}": name for name in
                                      ("server", "tools", "runner", "backends", "verify", "profilers", "prompts", "examples", "clients")}}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, folder in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def _imports() -> dict[str, set[str]]:
    modules = _modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            edges[name] |= {t for t in targets if t in modules and t != name}
    return edges


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and f"{parts[0]}.{parts[1]}" in FOLDERS else parts[0]


def _cycle(edges: dict[str, set[str]]) -> list[str]:
    """One cycle of the graph, or [] (depth-first search with colours)."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return []

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_no_module_imports_itself_through_a_cycle() -> None:
    assert _cycle(_imports()) == []


def test_no_package_imports_a_package_that_imports_it_back() -> None:
    packages: dict[str, set[str]] = {}
    for module, targets in _imports().items():
        packages.setdefault(_package(module), set()).update(_package(t) for t in targets if _package(t) != _package(module))
    packages.pop("kfoundry", None)  # the root package holds the CLI entry, which wires every layer together
    packages = {p: {t for t in ts if t != "kfoundry"} for p, ts in packages.items()}

    assert _cycle(packages) == []


def test_only_the_cli_imports_the_mcp_face() -> None:
    importers = {m for m, targets in _imports().items() for t in targets if _package(t) == "kfoundry.server" and _package(m) != "kfoundry.server"}

    assert importers <= {"kfoundry.cli"}, importers


def test_the_runner_and_the_verdict_never_import_the_tools_or_the_mcp_face() -> None:
    above = {"kfoundry.tools", "kfoundry.server", "kfoundry.clients"}
    offenders = {m: sorted(t for t in targets if _package(t) in above) for m, targets in _imports().items()
                 if _package(m) in ("kfoundry.runner", "kfoundry.verify", "kfoundry.backends", "kfoundry.profilers")}

    assert {m: ts for m, ts in offenders.items() if ts} == {}
