"""The package's import graph over its AST: no import circles, no use of another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "iterdpo"


def modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imports(name: str, f: Path, mods: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) of every import of the package in module ``name``, at any depth."""
    base = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(f.read_text(), str(f))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("iterdpo")]
        elif isinstance(node, ast.ImportFrom):
            mod = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else [])) if node.level else node.module or ""
            if mod.startswith("iterdpo"):
                out.append((mod, [a.name for a in node.names], node.lineno))
    return out


def owner(target: str, mods: dict[str, Path]) -> str | None:
    while target and target not in mods:
        target = target.rpartition(".")[0]
    return target or None


def test_no_import_circles():
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for mod, names, _ in imports(m, f, mods):
            for t in [mod, *(f"{mod}.{n}" for n in names)]:
                t = owner(t, mods)
                if t and t != m and not m.startswith(t + "."):  # a package importing its own submodules is fine
                    graph[m].add(t)
    # Tarjan's strongly connected components
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert circles == [], f"import circles: {circles}"


def test_no_module_uses_another_modules_private_names():
    mods = modules()
    bad = []
    for m, f in mods.items():
        tree = ast.parse(f.read_text(), str(f))
        aliases: dict[str, str] = {}  # local name -> package module it is bound to
        for mod, names, line in imports(m, f, mods):
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    bad.append(f"{f.relative_to(PACKAGE.parent)}:{line}: imports {mod}.{n}")
                if f"{mod}.{n}" in mods:
                    aliases[n] = f"{mod}.{n}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("iterdpo") and a.asname:
                        aliases[a.asname] = a.name
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__") and aliases[node.value.id] != m):
                bad.append(f"{f.relative_to(PACKAGE.parent)}:{node.lineno}: uses {aliases[node.value.id]}.{node.attr}")
    assert bad == [], "\n".join(bad)
