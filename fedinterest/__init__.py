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

_beside = Path(__file__).resolve().parent.parent
if not (Path(__file__).resolve().parent / "common").is_dir() and (_beside / "common" / "__init__.py").is_file():
    __path__.append(str(_beside))  # a checkout or a FAB: the subpackages are this folder's siblings
