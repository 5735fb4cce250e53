"""Erlang from web applications: one node per worker, the receiver, framework glue.

* ``get_node()``: this worker process's ``BlockingNode``, opened on first use under a name unique
  to the worker, rebuilt after a fork; ``rpc()``/``send()`` go through it to the configured
  Erlang node (``configure()`` or ``BEAMBRIDGE_*`` settings, see ``WebSettings``).
* ``Receiver``: a long-lived node that hands every message Erlang sends it to a Python handler
  and sends the handler's answer back to a requesting pid.
* ``ErlangErrorMiddleware`` (WSGI), ``beambridge.web.asgi``, ``beambridge.web.django``,
  ``beambridge.web.flask``: Erlang failures become 502/503/504 answers (``http_status``).
* ``EwgiBridge``: a WSGI app that serves each request with an Erlang function.
* ``beambridge.web.hooks``: explicit gunicorn/uWSGI fork and exit hooks.
* ``beambridge.web.metrics``: the worker nodes' counters for Prometheus, multiprocess-aware
  (``pip install 'beambridge[metrics]'``; not imported here, so nothing needs prometheus_client).

Nothing here needs Django, Flask or a server installed until their modules are imported.
"""

from ._config import MAPPINGS, Problem, SettingsError, WebSettings, check_settings
from ._default import close_node, configure, get_node, get_settings, node_if_open, rpc, send
from ._errors import NoErlangNode, http_status, is_erlang_failure
from ._receiver import Receiver, load_handler
from .ewgi import EwgiBridge
from .wsgi import ErlangErrorMiddleware

__all__ = [
    "MAPPINGS",
    "ErlangErrorMiddleware",
    "EwgiBridge",
    "NoErlangNode",
    "Problem",
    "Receiver",
    "SettingsError",
    "WebSettings",
    "check_settings",
    "close_node",
    "configure",
    "get_node",
    "get_settings",
    "http_status",
    "is_erlang_failure",
    "load_handler",
    "node_if_open",
    "rpc",
    "send",
]
