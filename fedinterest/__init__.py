"""fedinterest: privacy-preserving federated prediction of e-commerce interest migration.

One import namespace: the source folders ``common/``, ``client/``, ``server/``, ``deploy/`` and
``simulations/`` are the subpackages ``fedinterest.common``, ``fedinterest.client``, ... and this
folder holds the top floor, the command line (``fedinterest.cli``). An installed wheel carries them
inside this package (``package-dir`` in pyproject.toml), so nothing named ``common`` or ``server``
lands in site-packages. In a source checkout, and in the app bundle (FAB) Flower unpacks from one,
the folders sit beside this one; the search path below finds them there.
"""

from pathlib import Path

#: The source folders that are subpackages of ``fedinterest`` (README, "Layout").
LAYERS = ("common", "client", "server", "deploy", "simulations")

_here = Path(__file__).resolve().parent
if not (_here / "common").is_dir() and (_here.parent / "common" / "__init__.py").is_file():
    __path__.append(str(_here.parent))  # a checkout or a FAB: the subpackages are this folder's siblings
