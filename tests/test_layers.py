"""The layers: imports point one way (coordinator → styxfs.llama → styxfs),
no module imports itself round a circle, and the 9P toolkit loads nothing
of the node or of llama.cpp."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("styxfs", "coordinator")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def our_imports(path: Path) -> set[str]:
    """The project's modules that this file imports (at any depth of its code)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}
    modules = set(MODULES)
    return {m for m in found if m in modules and m != name}


MODULES = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
GRAPH = {name: our_imports(path) for name, path in MODULES.items()}


def layer(name: str) -> int:
    if name.startswith("coordinator"):
        return 2
    if name.startswith("styxfs.llama"):
        return 1
    return 0


def test_imports_point_one_way():
    wrong = [(a, b) for a, targets in GRAPH.items() for b in targets if layer(b) > layer(a)]
    assert not wrong, wrong


def test_no_import_circles():
    def visit(name, trail):
        if name in trail:
            raise AssertionError(" -> ".join(trail[trail.index(name):] + [name]))
        for target in GRAPH.get(name, ()):
            # A package's __init__ importing its own modules is not a circle through them.
            if not (target.startswith(name + ".") or name.startswith(target + ".") and target in PACKAGES):
                visit(target, trail + [name])

    for name in GRAPH:
        visit(name, [])


def test_wire_needs_only_the_standard_library():
    assert GRAPH["styxfs.wire"] == set()


def test_the_toolkit_loads_nothing_of_the_node():
    code = ("import sys, styxfs.server, styxfs.client, styxfs.ramfs, styxfs.tree\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('styxfs.llama', 'llama_cpp', 'coordinator')))\n"
            "print(' '.join(bad))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
