"""``python -m fedinterest``: the console script."""

import sys

from .cli import main

sys.exit(main())
