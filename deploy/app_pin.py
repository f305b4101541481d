"""The app release a merchant's node runs: the sha256 of the installed release's FAB, pinned.

``flwr run`` ships a FAB (a deterministic zip: sorted files, fixed dates) built from the app
directory :func:`deploy.flower.make_app` makes. The same release therefore gives the same hash on
the platform and on every node. ``node init`` pins the installed release's hash in ``app.json``;
``node start`` recomputes it and refuses to run if the installed release changed since (the
merchant checks the upgrade, then ``--repin-app``); the task runner serves only tasks of runs
whose bundle has the pinned hash, and runs the installed ClientApp for them, never the bundle.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fedinterest.common.atomic import atomic_write_json
from fedinterest.common.config import ConfigError

from . import flower

PIN_FORMAT = "fedinterest-app-pin/1"


def release_hash() -> str:
    """The sha256 of the FAB that ``flwr run`` builds from the installed fedinterest release."""
    from .flower_internals import fab_sha256

    with tempfile.TemporaryDirectory(prefix="fedinterest-app-") as tmp:
        return fab_sha256(flower.make_app(Path(tmp) / "fedinterest", flower.DEPLOYED))


def installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedinterest")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class AppPin:
    """The release a node serves: its FAB's sha256, and the version it was pinned from (for people)."""

    fab_hash: str
    version: str

    def save(self, path: Path) -> None:
        atomic_write_json(path, {"format": PIN_FORMAT, "fab_sha256": self.fab_hash, "version": self.version})

    @classmethod
    def load(cls, path: Path) -> "AppPin":
        try:
            data = json.loads(Path(path).read_text())
        except OSError as err:
            raise ConfigError(f"{path}: cannot read the pinned app ({err.strerror})") from None
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict) or data.get("format") != PIN_FORMAT:
            raise ConfigError(f"{path}: not a {PIN_FORMAT!r} file; remove it and start the node with --repin-app "
                              "to pin the installed release")
        digest = str(data.get("fab_sha256", ""))
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError(f"{path}: 'fab_sha256' must be 64 lower-case hex digits; start the node with "
                              "--repin-app to pin the installed release")
        return cls(fab_hash=digest, version=str(data.get("version", "unknown")))


def pin_app(path: Path, *, repin: bool = False, echo: Callable[[str], None] = print) -> AppPin:
    """The pinned release: the installed one on first use; after that the same one, unless ``repin``."""
    installed = AppPin(release_hash(), installed_version())
    if not Path(path).exists():
        installed.save(path)
        echo(f"app: pinned the installed fedinterest {installed.version}, bundle sha256 {installed.fab_hash}")
        return installed
    pinned = AppPin.load(path)
    if pinned.fab_hash == installed.fab_hash:
        return pinned
    if not repin:
        raise ConfigError(f"the installed fedinterest release (bundle sha256 {installed.fab_hash}, version "
                          f"{installed.version}) is not the one this node pinned in {path} (sha256 "
                          f"{pinned.fab_hash}, version {pinned.version}). If you upgraded on purpose and checked the "
                          "new release, start again with --repin-app")
    installed.save(path)
    echo(f"app: re-pinned to the installed fedinterest {installed.version}, bundle sha256 {installed.fab_hash} "
         f"(was {pinned.fab_hash})")
    return installed
