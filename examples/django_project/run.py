"""One command: ``.venv/bin/python examples/django_project/run.py`` (``--smoke``: a few requests).

Starts a private EPMD, an Erlang node with beambridge_web (Mnesia on disc), the receiver, and
gunicorn (2 workers) serving the project; stops them all on Ctrl-C or SIGTERM (``--help``: options).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _erlang import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("bbsite.wsgi:application", HERE, "The Django example (bbsite) with Erlang behind it."))
