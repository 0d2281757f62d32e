"""The import direction between m2dist's packages (CONTRIBUTING.md, "Architecture"), and no import cycles.

Every module under ``m2dist/`` is parsed with ``ast``; every import counts, at any depth (inside functions too: a
lazy import is still a dependency, only a later one).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "m2dist"

# Which packages each package may import (besides itself). The plain single-device models (ops, monarch, models)
# sit at the bottom and know nothing of what is applied to them from above: kernels (``m2dist.kernels.accelerate``)
# and tensor parallelism (``m2dist.parallel``) each rewrite a built model from outside, and neither knows the other.
# "m2dist" is the top-level package itself (``__init__``, ``__main__``). "contract" is the batch contract
# (``m2dist/data/contract.py``: batch keys, IGNORE_INDEX, MDS columns, the task of an arch), the vocabulary that the
# readers, the losses (train, and parallel's vocab-parallel one) and evaluation share; it stands on config alone.
BASE = {"utils"}
ALLOWED: dict[str, set[str]] = {
    "utils": set(),
    "config": BASE,
    "contract": BASE | {"config"},
    "ops": BASE,
    "monarch": BASE | {"ops"},
    "models": BASE | {"config", "ops", "monarch"},
    "kernels": BASE | {"config", "ops", "monarch", "models"},
    "parallel": BASE | {"config", "contract", "ops", "monarch", "models"},
    "data": BASE | {"config", "contract"},
    "checkpoint": BASE | {"config", "models", "parallel"},
    "train": BASE | {"config", "contract", "ops", "monarch", "models", "kernels", "parallel", "data", "checkpoint"},
    "jobs": BASE | {"config", "checkpoint"},
    "cli": BASE | {"m2dist", "config", "contract", "ops", "monarch", "models", "kernels", "parallel", "data",
                   "checkpoint", "train", "jobs"},
    "m2dist": {"cli"},
}
# Modules that form a layer of their own inside another package's folder.
MODULE_LAYERS = {"m2dist.data.contract": "contract"}

# Imports that break the table, or cycles, in code that another change of issue 13 is rewriting right now, each
# with who fixes it: a debt with an owner, not an exception. A listed entry that is gone fails the test too, so that
# the list shrinks as they land.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()
KNOWN_CYCLES: dict[str, str] = {}  # package -> owner; a cycle of modules all inside that package


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str) -> str:
    """``m2dist.models.gpt`` -> ``models``; the top-level modules (``m2dist``, ``m2dist.__main__``) -> ``m2dist``."""
    if module in MODULE_LAYERS:
        return MODULE_LAYERS[module]
    parts = module.split(".")
    if len(parts) == 1 or (PACKAGE / f"{parts[1]}.py").exists():
        return "m2dist"
    return parts[1]


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """The m2dist modules ``path`` imports: ``from a.b import c`` is ``a.b.c`` where that is a module, else
    ``a.b``; relative imports are resolved."""
    me = module_name(path)
    here = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m == "m2dist" or m.startswith("m2dist.")}


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imported_modules(path, modules) - {name} for name, path in modules.items()}


def direction_violations(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """(importing module, imported module) pairs whose packages the table does not allow."""
    bad = set()
    for src, targets in graph.items():
        src_pkg = package_of(src)
        for dst in targets:
            dst_pkg = package_of(dst)
            if dst_pkg != src_pkg and dst_pkg not in ALLOWED.get(src_pkg, set()):
                bad.add((src, dst))
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_package_is_in_the_table():
    packages = {package_of(m) for m in all_modules()}
    assert packages - ALLOWED.keys() == set(), "a new package: add it to ALLOWED (and to CONTRIBUTING's diagram)"


def test_imports_follow_the_layer_table():
    bad = direction_violations(import_graph())
    new = sorted(bad - KNOWN_VIOLATIONS)
    assert not new, "imports against the direction in CONTRIBUTING.md's Architecture section:\n" + "\n".join(
        f"  {src} ({package_of(src)}) imports {dst} ({package_of(dst)})" for src, dst in new)
    assert not KNOWN_VIOLATIONS - bad, f"fixed, remove from KNOWN_VIOLATIONS: {sorted(KNOWN_VIOLATIONS - bad)}"


def test_no_import_cycles():
    found = cycles(import_graph())
    known = {pkg for pkg in KNOWN_CYCLES for c in found if {package_of(m) for m in c} == {pkg}}
    new = [c for c in found if not ({package_of(m) for m in c} <= known)]
    assert not new, "import cycles between modules:\n" + "\n".join("  " + " <-> ".join(c) for c in new)
    assert known == KNOWN_CYCLES.keys(), f"fixed, remove from KNOWN_CYCLES: {sorted(KNOWN_CYCLES.keys() - known)}"


def test_the_checks_catch_a_violation_and_a_cycle():
    """The helpers find what they are for, on a made-up graph (so the two tests above cannot pass vacuously)."""
    graph = {"m2dist.models.gpt": {"m2dist.kernels.convert"}, "m2dist.kernels.convert": {"m2dist.models.gpt"},
             "m2dist.parallel.plan": {"m2dist.models.gpt"}}
    assert direction_violations(graph) == {("m2dist.models.gpt", "m2dist.kernels.convert")}
    assert cycles(graph) == [["m2dist.kernels.convert", "m2dist.models.gpt"]]
    real = import_graph()
    assert len(real) > 50 and "m2dist.models.sequence_mixer" in real["m2dist.models.build"]
    assert "m2dist.kernels.convert" in real["m2dist.kernels"]  # from ... import name: the module that defines it


def test_contributing_shows_this_table():
    """CONTRIBUTING.md's Architecture table and ALLOWED are one fact written twice: they must agree."""
    text = (ROOT / "CONTRIBUTING.md").read_text()
    section = text[text.index("## Architecture"):]
    section = section[: section.index("\n## ", 4)]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 2:
            rows[cells[0].split("`")[1]] = {c.strip("` ") for c in cells[1].split(",") if c.strip()}
    assert rows == {pkg: allowed - BASE for pkg, allowed in ALLOWED.items() if pkg != "utils"}
