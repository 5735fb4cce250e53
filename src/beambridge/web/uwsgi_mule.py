"""Run the receiver as a uWSGI mule::

    uwsgi ... --mule=$(python -c 'import beambridge.web.uwsgi_mule as m; print(m.__file__)')

configured by environment variables (``--env``): ``BEAMBRIDGE_RECEIVER_NAME`` (the node name,
``name@host``), ``BEAMBRIDGE_RECEIVER_HANDLER`` (``module:function``), and the usual
``BEAMBRIDGE_COOKIE`` / ``BEAMBRIDGE_EPMD_PORT``. The mule serves until uWSGI stops it.
"""

from __future__ import annotations

import logging
import os
import sys

from beambridge.web._config import WebSettings
from beambridge.web._receiver import Receiver, load_handler

log = logging.getLogger("beambridge.web.receiver")


def main() -> int:
    name = os.environ.get("BEAMBRIDGE_RECEIVER_NAME")
    spec = os.environ.get("BEAMBRIDGE_RECEIVER_HANDLER")
    if not name or not spec:
        log.error("set BEAMBRIDGE_RECEIVER_NAME and BEAMBRIDGE_RECEIVER_HANDLER for the mule")
        return 2
    # made as the web workers' nodes are: TLS optfile, listen address and ports included
    receiver = Receiver.from_settings(name, load_handler(spec), settings=WebSettings.from_env())
    receiver.serve_forever()
    return 0


if __name__ == "__main__":  # uWSGI runs a ``--mule=file.py`` as __main__
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
