"""Django glue: add ``"beambridge.web.django"`` to ``INSTALLED_APPS``.

Settings (all optional but ``BEAMBRIDGE_ERLANG_NODE``): ``BEAMBRIDGE_ERLANG_NODE``,
``BEAMBRIDGE_NODE_NAME``, ``BEAMBRIDGE_COOKIE``, ``BEAMBRIDGE_RPC_TIMEOUT``,
``BEAMBRIDGE_CONNECT_TIMEOUT``, ``BEAMBRIDGE_EPMD_PORT``, ``BEAMBRIDGE_MAPPING``,
``BEAMBRIDGE_HIDDEN``, and across hosts ``BEAMBRIDGE_TLS_OPTFILE`` (the cluster's Erlang
``ssl_dist_optfile``), ``BEAMBRIDGE_LISTEN_HOST``, ``BEAMBRIDGE_LISTEN_PORTS`` (``(9100, 9105)``
or ``"9100-9105"``). ``manage.py check`` reports bad values (``beambridge.E0xx``; an optfile that
is missing, unreadable or refused is ``E009``, naming the file) and likely typos
(``beambridge.W001``). Nothing is opened when Django starts: views call ``get_node()`` or
``rpc()``, which open this worker's node on first use. Add
``"beambridge.web.django.ErlangErrorMiddleware"`` to ``MIDDLEWARE`` so that an Erlang node that
is down gives a 503 (timeout 504, Erlang error 502) instead of a 500.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ...node import BlockingNode
from .. import _default
from .._config import WebSettings
from .._errors import describe, http_status, is_erlang_failure

__all__ = ["ErlangErrorMiddleware", "get_node", "rpc", "settings_from_django"]


def settings_from_django() -> WebSettings:
    from django.conf import settings

    return WebSettings.from_mapping(settings)


def _configured() -> None:
    settings = settings_from_django()
    if _default._state.settings != settings:
        _default.configure(settings)


def get_node() -> BlockingNode:
    """This worker's node, configured from Django's settings (opened on first use)."""
    _configured()
    return _default.get_node()


def rpc(module: str, function: str, args: Iterable[Any] = (), *, node: str | None = None,
        timeout: float | None = None) -> Any:
    """``beambridge.web.rpc`` with Django's ``BEAMBRIDGE_*`` settings."""
    _configured()
    return _default.rpc(module, function, args, node=node, timeout=timeout)


class ErlangErrorMiddleware:
    """Turns an Erlang failure raised by a view into a 502/503/504 plain-text response."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        return self.get_response(request)

    def process_exception(self, request: Any, exception: Exception) -> Any:
        if not is_erlang_failure(exception):
            return None
        from django.http import HttpResponse

        code, _ = http_status(exception)
        response = HttpResponse(describe(exception) + "\n", status=code,
                                content_type="text/plain; charset=utf-8")
        if code == 503:
            response["Retry-After"] = "1"
        return response
