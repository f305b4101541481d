"""One import namespace: the installed project is the package ``fedinterest`` and nothing else.

The wheel is built from a copy of the source (the checkout stays untouched), and imported from a
directory outside the checkout: its modules are ``fedinterest.common``, ``fedinterest.client``, ...
and no top-level ``common``, ``client``, ``server``, ``deploy`` or ``simulations`` exists.
"""

from __future__ import annotations

import shutil
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERIC = ("common", "client", "server", "deploy", "simulations")


def build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    for folder in ("fedinterest", *GENERIC):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for file in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / file, source / file)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(wheels), str(source)], check=True, cwd=tmp_path)
    return next(wheels.glob("fedinterest-*.whl"))


def test_the_wheel_installs_one_package_and_its_modules_import_under_it(tmp_path):
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"fedinterest", next(t for t in tops if t.endswith(".dist-info"))}, tops
    assert "fedinterest/client/app.py" in names and "fedinterest/cli/__init__.py" in names

    python = wheel_only_environment(tmp_path / "venv", wheel)
    probe = (
        "import importlib.util, sys\n"
        "import fedinterest, fedinterest.client.app, fedinterest.cli, fedinterest.server.app\n"
        "assert fedinterest.client.app.__file__.startswith(sys.prefix), fedinterest.client.app.__file__\n"
        f"print([n for n in {GENERIC!r} if importlib.util.find_spec(n) is not None])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # the working directory, first on the path, is outside the checkout
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def wheel_only_environment(directory: Path, wheel: Path) -> Path:
    """A fresh virtual environment holding the wheel, as ``pip install`` unpacks it; its dependencies come
    from this environment's site-packages, added as a plain path (so its ``.pth`` files, among them the
    checkout's editable install, are not read). Its Python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True, timeout=120)
    site = next(directory.glob("lib/python*/site-packages"))
    zipfile.ZipFile(wheel).extractall(site)
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return directory / "bin" / "python"


def test_in_a_checkout_the_folders_are_the_subpackages():
    import fedinterest
    import fedinterest.client.app

    assert Path(fedinterest.client.app.__file__).resolve() == ROOT / "client" / "app.py"
    assert set(fedinterest.LAYERS) == set(GENERIC)
