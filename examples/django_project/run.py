"""One command: ``.venv/bin/python examples/django_project/run.py`` (``--smoke``: a few requests).

Starts a private EPMD, an Erlang node with beambridge_web (Mnesia on disc), the receiver, and
gunicorn (2 workers) serving the project; stops them all on exit.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _erlang import serve, smoke, stack  # noqa: E402


def main() -> int:
    with stack("bbsite.wsgi:application", extra_path=HERE) as settings:
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
