"""The layers import downwards only: production code (client, server, common) never reaches into the
simulations or the command line, wherever in a module the import sits."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION = ("client", "server", "common")
ABOVE = ("simulations", "common.cli")  # what production code may not import
# still on the ground floor until the command line and the HTTP server move up (commands on the top floor)
NOT_YET = ("common/cli/", "common/__main__.py", "common/serve.py")


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """Every module ``path`` imports, absolute, with its line (relative imports resolved from its package)."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.append((node.lineno, base))
    return found


def reaches_above(module: str) -> bool:
    return any(module == above or module.startswith(above + ".") for above in ABOVE)


def test_production_code_never_imports_simulations_or_the_command_line():
    offences = []
    for top in PRODUCTION:
        for path in sorted((ROOT / top).rglob("*.py")):
            if any(str(path.relative_to(ROOT)).startswith(skip) for skip in NOT_YET):
                continue
            offences += [f"{path.relative_to(ROOT)}:{line} imports {module}"
                         for line, module in imported_modules(path) if reaches_above(module)]
    assert not offences, "\n".join(offences)


def test_the_rule_sees_imports_inside_functions_and_relative_ones(tmp_path):
    module = tmp_path / "common" / "data" / "probe.py"
    module.parent.mkdir(parents=True)
    module.write_text("def f():\n    from simulations.runner import prepare\n\nfrom ..cli import predict\n")
    modules = [m for _, m in imported_modules(module, tmp_path)]
    assert sorted(modules) == ["common.cli", "simulations.runner"]
    assert all(reaches_above(m) for m in modules) and not reaches_above("simulationsx")
