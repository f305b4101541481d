"""Identity keys and the roster for simulated shops: what each merchant and the platform do by hand.

On a deployment each merchant runs ``fedinterest keys new`` and the platform collects the public
keys into the roster every shop pins. A simulation does the same on one machine: one identity key
in each shop's state directory (kept across runs, like a merchant's) and ``roster.json`` of all.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import Mapping

from fedinterest.common.secagg import Identity, Roster
from fedinterest.common.secagg.identity import IDENTITY_FILE

ROSTER_FILE = "roster.json"


def simulation_roster(out: Path, state_dirs: Mapping[str, Path]) -> Path:
    """Make any missing identity key in ``state_dirs`` (shop name -> state dir); write ``out/roster.json``."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / (ROSTER_FILE + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # flwr-run simulation nodes may ask at once
        keys = {}
        for name, state in sorted(state_dirs.items()):
            path = Path(state) / IDENTITY_FILE
            if not path.is_file():
                Identity.generate().save(path)
            keys[name] = Identity.load(path).public_key
        roster = Roster(keys)
        target = out / ROSTER_FILE
        if not target.is_file() or target.read_text() != roster.to_json():
            roster.save(target)
    return target
