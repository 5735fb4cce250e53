"""One command: ``.venv/bin/python examples/flask_app/run.py`` (``--smoke``: a few requests, exit).

Starts a private EPMD, an Erlang node with beambridge_web (Mnesia on disc), the receiver, and
gunicorn (2 workers) serving ``app.py``; stops them all on exit.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _erlang import serve, smoke, stack  # noqa: E402


def main() -> int:
    with stack("app:application", extra_path=HERE) as settings:
        if "--smoke" in sys.argv:
            smoke(settings["URL"], [("GET", "/", None), ("GET", "/hello", None),
                                    ("GET", "/add?a=40&b=2", None), ("PUT", "/kv/colour", b"blue"),
                                    ("GET", "/kv/colour", None), ("GET", "/shout?text=hey", None),
                                    ("GET", "/ewgi/page?x=1", None)])
        else:
            serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
