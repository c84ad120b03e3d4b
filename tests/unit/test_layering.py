"""The import layering of docs/architecture.md holds: ir ← frontend, partition, codegen ← runtime ← cli.
Walks every module's imports with the AST, those inside functions included (a lazy import is still
a dependency), and fails on codegen importing runtime, partition importing codegen or runtime, ir
importing anything above it, and any import cycle between shardc's subpackages and top modules."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "shardc"
BASE = {"errors", "flags", "version"}  # leaf modules every layer may use


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _exists(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT.parent / rel).with_suffix(".py").exists() or (ROOT.parent / rel / "__init__.py").exists()


def _imports(path: Path) -> set[str]:
    """Every shardc module `path` imports, anywhere in the file."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "shardc"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "shardc":
                continue
            for a in node.names:  # `from .. import flags` imports the module shardc.flags
                sub = f"{mod}.{a.name}"
                found.add(sub if _exists(sub) else mod)
    return found


def _unit(module: str) -> str:
    """The layer a module belongs to: its subpackage or top-level module ("shardc" for the root).
    A top-level module split over files is one unit: cli.py and cli_analyze.py are "cli"."""
    parts = module.split(".")
    if len(parts) == 1:
        return "shardc"
    return parts[1] if len(parts) > 2 or (ROOT / parts[1]).is_dir() else parts[1].split("_")[0]


def _edges() -> dict[str, set[tuple[str, str]]]:
    """unit → {(importing module, imported module)} across units."""
    edges: dict[str, set[tuple[str, str]]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        me = _module_name(path)
        for dep in _imports(path):
            if _unit(dep) != _unit(me):
                edges.setdefault(_unit(me), set()).add((me, dep))
    return edges


def _offending(frm: str, forbidden: set[str]) -> list[str]:
    return sorted(f"{a} imports {b}" for a, b in _edges().get(frm, ()) if _unit(b) in forbidden)


def test_the_walker_sees_lazy_imports():
    deps = _imports(ROOT / "__init__.py")
    assert "shardc.runtime.executable" in deps and "shardc.frontend.torch" in deps  # imported inside functions


def test_codegen_does_not_import_runtime():
    assert _offending("codegen", {"runtime", "cli", "shardc"}) == []


def test_partition_imports_neither_codegen_nor_runtime():
    assert _offending("partition", {"codegen", "runtime", "cli", "shardc"}) == []


def test_analysis_models_programs_without_importing_their_makers():
    """The cost, memory and hardware models sit below partition (auto-sharding prices with them)."""
    assert _offending("analysis", {"partition", "codegen", "runtime", "cli", "shardc"}) == []


def test_ir_imports_nothing_above_it():
    units = {_unit(_module_name(p)) for p in ROOT.rglob("*.py")}
    assert _offending("ir", units - BASE - {"ir"}) == []


# Import edges that close a cycle and are owned by open work, each with why (none today: analysis
# models what partition produces without importing it; partition's auto-sharding and pipeline
# analysis use its models). Any other cycle fails test_no_cycle_between_subpackages.
KNOWN_CYCLES: dict[tuple[str, str], str] = {}


def _cycles(allowed=frozenset()) -> list[str]:
    graph: dict[str, set[str]] = {}
    for unit, pairs in _edges().items():
        graph.setdefault(unit, set()).update(_unit(b) for _, b in pairs if (unit, _unit(b)) not in allowed)
    cycles = []
    for start in sorted(graph):  # a unit that reaches itself is on a cycle: report the path
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    cycles.append(" → ".join(path + [start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    return cycles


def test_no_cycle_between_subpackages():
    cycles = _cycles(allowed=set(KNOWN_CYCLES))
    edges = _edges()
    detail = {c: sorted(f"{a} imports {b}" for u in c.split(" → ")[:-1] for a, b in edges.get(u, ())
                        if _unit(b) in c.split(" → ")) for c in cycles[:3]}
    assert not cycles, f"import cycles between subpackages: {cycles[:10]}\n{detail}"


def test_no_cycle_at_all():
    assert _cycles() == []
