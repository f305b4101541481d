"""Private directories (0700) and secret files (0600) of the node and platform directories.

Only the owner may list a node or platform directory or read its keys. Directories made by an
older ``init`` are tightened on ``start``, so an upgrade needs no manual ``chmod``.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import Iterable

from fedinterest.common.atomic import atomic_write_bytes
from fedinterest.common.config import ConfigError

DIRECTORY_MODE, SECRET_MODE = 0o700, 0o600


def private_directory(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (made if missing, tightened if looser)."""
    path = Path(path)
    path.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    _tighten(path, DIRECTORY_MODE)
    return path


def tighten(directory: Path, secret_files: Iterable[Path]) -> None:
    """The directory 0700 and each existing secret file 0600 (group and others lose every right)."""
    private_directory(directory)
    for path in secret_files:
        if Path(path).exists():
            _tighten(Path(path), SECRET_MODE)


def make_secret(path: Path, nbytes: int = 32) -> bytes:
    """A random secret of ``nbytes`` from the OS CSPRNG in ``path`` (0600); an existing one is kept."""
    path = Path(path)
    if path.exists():
        _tighten(path, SECRET_MODE)
        return path.read_bytes()
    secret = secrets.token_bytes(nbytes)
    atomic_write_bytes(path, secret, mode=SECRET_MODE)
    return secret


def mode(path: Path) -> int:
    return stat.S_IMODE(Path(path).stat().st_mode)


def _tighten(path: Path, wanted: int) -> None:
    if mode(path) & ~wanted:
        try:
            os.chmod(path, mode(path) & wanted)
        except PermissionError:
            raise ConfigError(f"{path} is readable by others (mode {mode(path):o}) and cannot be changed by this "
                              f"user; `chmod {wanted:o} {path}` as its owner") from None
