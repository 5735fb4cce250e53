"""Server hooks, for those who want the worker's node managed explicitly.

Nothing here is required: the default node notices a fork by itself. The hooks make it
explicit and let a worker unregister cleanly when it exits.

gunicorn (``gunicorn.conf.py``)::

    from beambridge.web.hooks import child_exit, post_fork, worker_exit   # noqa: F401

With ``beambridge.web.metrics`` under ``PROMETHEUS_MULTIPROC_DIR``, the exit hooks also push the
worker's last counts and mark its files dead, so its live gauges leave the scrape.

uWSGI (in the application module)::

    from beambridge.web.hooks import register_uwsgi_postfork
    register_uwsgi_postfork()          # uwsgidecorators.postfork, or uwsgi.post_fork_hook
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from . import _default

__all__ = ["child_exit", "on_exit", "post_fork", "postfork", "register_uwsgi_postfork", "worker_exit"]

log = logging.getLogger("beambridge.web.hooks")


def postfork(*, open_now: bool = False) -> None:
    """After a fork, in the child: drop the inherited node; ``open_now`` opens this worker's.
    A metrics sync timer inherited from the parent starts again here."""
    _default.after_fork()
    metrics = sys.modules.get(f"{__package__}.metrics")  # never imported here: it may not install
    if metrics is not None:
        metrics._this_process()
    if open_now:
        try:
            _default.get_node()
        except Exception as error:  # the first request will try again and report it
            log.warning("worker node not opened at fork: %s", error)


def on_exit() -> None:
    """Close this worker's node (unregister from EPMD, close its connections), after a last
    metrics sync while its counters still exist."""
    metrics = sys.modules.get(f"{__package__}.metrics")  # never imported here: it may not install
    if metrics is not None:
        try:
            metrics._at_exit()
        except Exception:
            log.warning("marking this worker's metrics dead failed", exc_info=True)
    _default.close_node()


def post_fork(server: Any, worker: Any) -> None:
    """gunicorn's ``post_fork(server, worker)`` hook."""
    postfork()


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn's ``worker_exit(server, worker)`` hook."""
    on_exit()


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn's ``child_exit(server, worker)`` hook, in the master: a worker that was killed
    (timeout, OOM) never ran ``worker_exit``, so its Prometheus live gauges are marked dead here."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    try:
        from prometheus_client.multiprocess import mark_process_dead
    except ImportError:
        return
    try:
        mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
    except OSError as error:
        log.warning("marking worker %s's metrics dead failed: %s", worker.pid, error)


def register_uwsgi_postfork(*, open_now: bool = False) -> bool:
    """Register ``postfork`` with uWSGI (and ``on_exit`` for worker shutdown, via atexit).

    Returns ``False`` when not running under uWSGI (nothing registered).
    """
    import atexit
    import importlib

    try:
        uwsgi: Any = importlib.import_module("uwsgi")  # only exists inside uWSGI
    except ImportError:
        return False

    previous = getattr(uwsgi, "post_fork_hook", None)

    def hook() -> None:
        if callable(previous):
            previous()
        postfork(open_now=open_now)

    uwsgi.post_fork_hook = hook
    atexit.register(on_exit)
    return True
