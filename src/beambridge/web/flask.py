"""Flask extension::

    from beambridge.web.flask import Beambridge
    erlang = Beambridge()
    erlang.init_app(app)           # or Beambridge(app)

    @app.get("/hello")
    def hello():
        return {"answer": str(erlang.rpc("mymod", "hello"))}

Config keys: the ``BEAMBRIDGE_*`` settings of ``beambridge.web.WebSettings`` (across hosts
``BEAMBRIDGE_TLS_OPTFILE``, ``BEAMBRIDGE_LISTEN_PORTS``); ``init_app`` refuses bad values
(``SettingsError``; a missing or refused optfile names the file). Nothing is opened by
``init_app``: the worker's node opens on the first call. ``mailbox()`` gives a request-scoped
mailbox, closed at teardown. Erlang failures raised by views become 502/503/504 plain-text
answers. ``app.add_url_rule("/metrics", view_func=erlang.metrics_view())`` serves Prometheus
metrics (``beambridge.web.metrics``; needs ``beambridge[metrics]``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from .._errors import ProtocolError, RemoteError, TransportError, UsageError
from ..node import BlockingMailbox, BlockingNode
from . import _default
from ._config import SettingsError, WebSettings, check_settings
from ._errors import describe, http_status

__all__ = ["Beambridge"]

log = logging.getLogger("beambridge.web.flask")

_G_MAILBOXES = "_beambridge_mailboxes"


class Beambridge:
    """The Flask extension; one instance may serve several apps (``init_app`` each)."""

    def __init__(self, app: Any = None) -> None:
        self.app = app
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Any) -> None:
        problems = [p for p in check_settings(app.config) if p.level == "error"]
        if problems:
            raise SettingsError(problems)
        for warning in check_settings(app.config):
            if warning.level == "warning":
                log.warning("%s", warning)
        settings = WebSettings.from_mapping(app.config)
        app.extensions["beambridge"] = settings
        app.teardown_appcontext(self._teardown)
        for family in (TransportError, RemoteError, ProtocolError):
            app.register_error_handler(family, self._erlang_failed)

    # ------------------------------------------------------------ what views use

    def _settings(self) -> WebSettings:
        from flask import current_app, has_app_context

        if has_app_context():
            settings: WebSettings = current_app.extensions["beambridge"]
        elif self.app is not None:  # outside a request, the app given to the constructor
            settings = self.app.extensions["beambridge"]
        else:
            raise UsageError("outside an application context: use app.app_context()")
        if _default._state.settings != settings:
            _default.configure(settings)
        return settings

    @property
    def node(self) -> BlockingNode:
        """This worker's node (opened on first use)."""
        self._settings()
        return _default.get_node()

    def rpc(self, module: str, function: str, args: Iterable[Any] = (), *, node: str | None = None,
            timeout: float | None = None) -> Any:
        self._settings()
        return _default.rpc(module, function, args, node=node, timeout=timeout)

    def send(self, dest: Any, message: Any) -> None:
        self._settings()
        _default.send(dest, message)

    def mailbox(self) -> BlockingMailbox:
        """A fresh mailbox for this request (e.g. to get an answer from Erlang), closed at
        teardown."""
        from flask import g

        box = self.node.mailbox()
        boxes: list[BlockingMailbox] = g.setdefault(_G_MAILBOXES, [])
        boxes.append(box)
        return box

    def metrics_view(self) -> Any:
        """A view serving Prometheus metrics (``beambridge.web.metrics.render``), for
        ``app.add_url_rule("/metrics", view_func=erlang.metrics_view())``. Raises
        ``MetricsUnavailable`` here, at setup, when prometheus_client is not installed."""
        from flask import Response, request

        from . import metrics

        def beambridge_metrics() -> Any:
            body, content_type = metrics.render(request.headers.get("Accept"))
            return Response(body, status=200, content_type=content_type)

        return beambridge_metrics

    # ------------------------------------------------------------ hooks

    @staticmethod
    def _teardown(exc: BaseException | None) -> None:
        from flask import g

        for box in g.pop(_G_MAILBOXES, []):
            box.close()

    @staticmethod
    def _erlang_failed(error: Exception) -> Any:
        from flask import Response

        code, _ = http_status(error)
        log.warning("request failed on Erlang: %s", error)
        response = Response(describe(error) + "\n", status=code, mimetype="text/plain")
        if code == 503:
            response.headers["Retry-After"] = "1"
        return response
