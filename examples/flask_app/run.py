"""One command: ``.venv/bin/python examples/flask_app/run.py`` (``--smoke``: a few requests, exit).

Starts a private EPMD, an Erlang node with beambridge_web (Mnesia on disc), the receiver, and
gunicorn (2 workers) serving ``app.py``; stops them all on Ctrl-C or SIGTERM (``--help``: options).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _erlang import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("app:application", HERE, "The Flask example (app.py) with Erlang behind it."))
