"""The layers import downwards only, and no module imports itself back through others.

The floors, lowest first (README, "Layout"): common → client → server → deploy → simulations → the
command line (``fedinterest.cli``, ``python -m fedinterest``). An import may reach its own floor or
any floor below, wherever in a module it sits (top level or inside a function), never one above.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Each source folder's floor; the package root's own modules (the command line) are the top.
FLOORS = {"common": 0, "client": 1, "server": 2, "deploy": 3, "simulations": 4}
TOP = 5
PACKAGE = "fedinterest"


def module_name(path: Path, root: Path = ROOT) -> str:
    """``client/app.py`` -> ``fedinterest.client.app``; ``fedinterest/cli/__init__.py`` -> ``fedinterest.cli``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[0] != PACKAGE:
        parts.insert(0, PACKAGE)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the project by its import name."""
    return {module_name(path, root): path for top in (*FLOORS, PACKAGE) for path in sorted((root / top).rglob("*.py"))}


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """Every name ``path`` imports, absolute, with its line (relative imports resolved from its package;
    ``from p import m`` names ``p.m`` as well as ``p``, so a submodule imported that way is seen)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found += [(node.lineno, base), *((node.lineno, f"{base}.{alias.name}") for alias in node.names)]
    return found


def floor(module: str) -> int | None:
    """The floor of a project module (None for anything outside the project)."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    if len(parts) == 1:
        return 0  # the namespace package itself: it only maps the folders
    return FLOORS.get(parts[1], TOP)


def upward_imports(modules: dict[str, Path], root: Path = ROOT) -> list[str]:
    offences = []
    for name, path in modules.items():
        own = floor(name)
        for line, target in imported_modules(path, root):
            if (reached := floor(target)) is not None and reached > own:
                offences.append(f"{path.relative_to(root)}:{line} imports {target}, a floor above")
    return offences


def import_graph(modules: dict[str, Path], root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from p import m`` counts as ``p.m`` alone when m is a module)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        names = [target for _, target in imported_modules(path, root)]
        for target in names:
            if target in modules and not any(other.startswith(target + ".") and other in modules for other in names):
                targets.add(target)
            elif target not in modules and (parent := target.rpartition(".")[0]) in modules:
                targets.add(parent)  # ``from p import function``
        graph[name] = targets - {name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_module_imports_a_floor_above_its_own():
    offences = upward_imports(source_modules())
    assert not offences, "\n".join(offences)


def test_no_circle_among_the_modules():
    assert circles(import_graph(source_modules())) == []


def test_every_floor_is_a_subpackage_the_wheel_installs():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {f"{PACKAGE}.{top}": top for top in FLOORS}
    packages = {module_name(path) for path in source_modules().values() if path.name == "__init__.py"}
    assert sorted(config["packages"]) == sorted(packages)


def test_the_rules_see_upward_relative_and_late_imports_and_circles(tmp_path):
    module = tmp_path / "common" / "data" / "probe.py"
    module.parent.mkdir(parents=True)
    (tmp_path / "common" / "__init__.py").write_text("")
    (tmp_path / "common" / "data" / "__init__.py").write_text("from . import probe\n")
    module.write_text("def f():\n    from fedinterest.simulations.runner import prepare\n\n"
                      "from ...cli import predict\nfrom fedinterest.common import data\n")
    (tmp_path / "client").mkdir()
    (tmp_path / "client" / "__init__.py").write_text("")
    modules = source_modules(tmp_path)
    offences = upward_imports(modules, tmp_path)
    assert {o.split(" imports ")[1].split(",")[0] for o in offences} == {
        "fedinterest.simulations.runner", "fedinterest.simulations.runner.prepare", "fedinterest.cli",
        "fedinterest.cli.predict"}
    assert circles(import_graph(modules, tmp_path)) == [["fedinterest.common.data", "fedinterest.common.data.probe"]]
    assert floor("simulationsx") is None and floor("fedinterest.client.app") == 1
