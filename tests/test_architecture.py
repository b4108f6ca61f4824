"""Layering of the core: sdk/ has no import cycle (not even one hidden in a function body) and never
imports a plugin; plugins reach the core through its public modules."""

import ast
from pathlib import Path

SDK = Path(__file__).resolve().parents[1] / "sdk"


def _imports(path: Path) -> set[str]:
    """sdk modules ``path`` imports anywhere, except under ``if TYPE_CHECKING:`` (annotations only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(a.name for a in node.names)
            elif (node.module or "").startswith("reasondistill"):
                parts = node.module.split(".")
                found.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("reasondistill."))
    return found


def _graph() -> dict[str, set[str]]:
    return {p.stem: _imports(p) for p in SDK.glob("*.py")}


def test_sdk_imports_no_plugin():
    offenders = {mod: deps & {"plugins"} for mod, deps in _graph().items() if "plugins" in deps}
    assert not offenders, f"sdk modules importing reasondistill.plugins: {sorted(offenders)}"


def test_sdk_has_no_import_cycle():
    graph = {m: {d for d in deps if d in _graph() and d != m} for m, deps in _graph().items()}
    graph.pop("__init__", None)
    for deps in graph.values():
        deps.discard("__init__")
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            visit(dep)
        stack.pop()

    for node in sorted(graph):
        visit(node)
    assert not cycles, "import cycles in sdk/: " + "; ".join(" -> ".join(c) for c in cycles)
