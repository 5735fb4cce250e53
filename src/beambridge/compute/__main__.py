"""``python -m beambridge.compute``: the ``beambridge compute`` command line."""

import sys

from ._cli import main

sys.exit(main())
