"""This worker's node counters (``Node.stats()``) for Prometheus: ``pip install 'beambridge[metrics]'``.

Serve them with ``metrics_app`` (WSGI, any framework), ``Beambridge.metrics_view()`` (Flask) or
``beambridge.web.django.views.metrics`` (Django); each answers with everything prometheus_client
knows in this setup (your own metrics too), in the format the scraper asks for.

Metrics (``peer`` is the Erlang node's name)::

    beambridge_node_connects_total{peer}                  connections set up (either side dialled)
    beambridge_node_connections_up{peer}                  gauge: workers connected to the peer now
    beambridge_node_messages_total{peer,direction}        distribution messages (keep-alives not counted)
    beambridge_node_bytes_total{peer,direction}           bytes on the connections; direction in|out
    beambridge_node_rpc_total{peer,outcome}               finished rpcs; outcome ok|error|timeout
    beambridge_node_rpc_seconds_total{peer}               their total seconds (rate / rpc rate = mean)
    beambridge_node_rpc_seconds_max{peer}                 gauge: the longest, over live workers
    beambridge_node_open{node,pid}                        gauge: 1 while that worker's node is open

A worker whose node never opened reports nothing: no metric opens a node.

Without ``PROMETHEUS_MULTIPROC_DIR`` (one process) a collector reads ``Node.stats()`` at each
scrape. With it (gunicorn, uWSGI: prometheus_client's multiprocess mode, the variable set before
the server starts, pointing at an empty directory), each worker writes its own files and a
scrape merges them all, whichever worker answers. So the node's counters are pushed into
prometheus_client's as deltas since the last push ("sync"): at every scrape in the worker that
answers, and every ``set_sync_interval`` seconds (default 5) by a daemon thread in every worker.
A scrape therefore shows its own worker's counts fresh and the other workers' at most one
interval old (plus one sync's run). Counters of exited workers stay in the sums (they never go
back); their gauges go away when the worker is marked dead, after a last sync, at its exit
(``beambridge.web.hooks``' ``worker_exit`` / ``register_uwsgi_postfork``, or atexit without
them); gunicorn's ``child_exit`` hook marks a killed worker dead from the master (that worker
loses at most one interval of counts). No thread runs in a uWSGI master: each worker starts its
own after the fork.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .._errors import UsageError
from . import _default


class MetricsUnavailable(UsageError, ImportError):
    """prometheus_client is not installed (an ``except ImportError`` catches this too)."""


try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
except ImportError as error:  # pragma: no cover - exercised in a subprocess by the tests
    raise MetricsUnavailable("beambridge.web.metrics needs prometheus_client: "
                             "pip install 'beambridge[metrics]'") from error

__all__ = ["MetricsUnavailable", "metrics_app", "render", "set_sync_interval", "sync"]

log = logging.getLogger("beambridge.web.metrics")

DEFAULT_SYNC_INTERVAL = 5.0

# prometheus_client picks its mode from the same variable when it is imported (just above)
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

# ------------------------------------------------------------------ what is exported, once

_COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "beambridge_node_connects": ("Connections set up with the peer node (either side dialled).", ()),
    "beambridge_node_messages": ("Distribution messages with the peer node (keep-alives not counted).",
                                 ("direction",)),
    "beambridge_node_bytes": ("Bytes on the connections with the peer node.", ("direction",)),
    "beambridge_node_rpc": ("rpcs to the peer node that finished, by outcome.", ("outcome",)),
    "beambridge_node_rpc_seconds": ("Total seconds of the finished rpcs to the peer node.", ()),
}
_UP = ("beambridge_node_connections_up", "Workers connected to the peer node now.")
_MAX = ("beambridge_node_rpc_seconds_max", "The longest finished rpc to the peer node, in seconds.")
_OPEN = ("beambridge_node_open", "1 for each worker process whose node is open.")


def _counter_samples(found: dict[str, Any]) -> Iterator[tuple[str, tuple[str, ...], float]]:
    """``(family, labels after peer, value)`` for one peer's ``Node.stats()`` entry."""
    yield "beambridge_node_connects", (), found["connects"]
    yield "beambridge_node_messages", ("in",), found["messages_in"]
    yield "beambridge_node_messages", ("out",), found["messages_out"]
    yield "beambridge_node_bytes", ("in",), found["bytes_in"]
    yield "beambridge_node_bytes", ("out",), found["bytes_out"]
    errors, timeouts = found["rpc_errors"], found["rpc_timeouts"]
    yield "beambridge_node_rpc", ("ok",), found["rpc_calls"] - errors - timeouts
    yield "beambridge_node_rpc", ("error",), errors
    yield "beambridge_node_rpc", ("timeout",), timeouts
    yield "beambridge_node_rpc_seconds", (), found["rpc_seconds"]


def _open_stats() -> dict[str, Any] | None:
    """This worker's ``stats()``, or None when its node is not open (never opens one)."""
    node = _default.node_if_open()
    if node is None:
        return None
    try:
        return node.stats()
    except Exception as error:  # closed under our feet, or its loop is gone
        log.debug("no stats from the worker's node: %s", error)
        return None


# ------------------------------------------------------------------ one process: read at scrape

class _NodeCollector:
    """Reads ``Node.stats()`` at each scrape (no multiprocess mode: nothing to merge)."""

    def describe(self) -> Iterable[Metric]:
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        stats = _open_stats()
        return self._families(stats) if stats is not None else []

    @staticmethod
    def _families(stats: dict[str, Any] | None) -> list[Metric]:
        counters = {name: CounterMetricFamily(name, text, labels=["peer", *extra])
                    for name, (text, extra) in _COUNTERS.items()}
        up = GaugeMetricFamily(*_UP, labels=["peer"])
        longest = GaugeMetricFamily(*_MAX, labels=["peer"])
        opened = GaugeMetricFamily(*_OPEN, labels=["node", "pid"])
        if stats is not None:
            opened.add_metric([stats["node"], str(os.getpid())], 1)
            for peer, found in stats["peers"].items():
                for name, labels, value in _counter_samples(found):
                    counters[name].add_metric([peer, *labels], value)
                up.add_metric([peer], 1 if found["connected"] else 0)
                longest.add_metric([peer], found["rpc_seconds_max"])
        return [*counters.values(), up, longest, opened]


# ------------------------------------------------------------------ many processes: push deltas

class _Pusher:
    """Pushes the node's counters into this process's prometheus_client files as deltas.

    The node's counters start at zero with each node (a new worker, a reconfigured node), so the
    baseline is kept per node name, and a counter found lower than last time restarts from zero.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.node_name: str | None = None
        self.last: dict[tuple[str, str, tuple[str, ...]], float] = {}
        self.peers: set[str] = set()
        self.counters = {name: Counter(name, text, ["peer", *extra], registry=None)
                         for name, (text, extra) in _COUNTERS.items()}
        self.up = Gauge(*_UP, ["peer"], registry=None, multiprocess_mode="livesum")
        self.longest = Gauge(*_MAX, ["peer"], registry=None, multiprocess_mode="livemax")
        self.opened = Gauge(*_OPEN, ["node"], registry=None, multiprocess_mode="liveall")

    def forget(self) -> None:
        """In a forked child: the parent's baseline is not ours (prometheus_client starts this
        process's files afresh by itself)."""
        self.lock = threading.Lock()
        self.node_name, self.last, self.peers = None, {}, set()

    def sync(self) -> None:
        with self.lock:
            stats = _open_stats()
            name = None if stats is None else str(stats["node"])
            if name != self.node_name:
                if self.node_name is not None:
                    self.opened.labels(self.node_name).set(0)
                self.node_name, self.last = name, {}
            connected: set[str] = set()
            if stats is not None:
                self.opened.labels(name).set(1)
                for peer, found in stats["peers"].items():
                    self.peers.add(peer)
                    if found["connected"]:
                        connected.add(peer)
                    for family, labels, value in _counter_samples(found):
                        key = (family, peer, labels)
                        before = self.last.get(key, 0)
                        delta = value - before if value >= before else value
                        if delta > 0:
                            self.counters[family].labels(peer, *labels).inc(delta)
                        self.last[key] = value
                    self.longest.labels(peer).set(found["rpc_seconds_max"])
            for peer in self.peers:
                self.up.labels(peer).set(1 if peer in connected else 0)


class _Timer:
    """The daemon thread that syncs this worker every ``interval`` seconds (one per process)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.wake = threading.Event()
        self.stopped = False
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.wake, self.stopped = threading.Event(), False
        self.thread = threading.Thread(target=self._run, name="beambridge-metrics-sync", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopped = True
        self.wake.set()

    def _run(self) -> None:
        wake = self.wake
        while True:
            wake.wait(self.interval)
            if self.stopped:
                return
            wake.clear()
            try:
                sync()
            except Exception:  # never let the sync thread die: the next tick tries again
                log.warning("metrics sync failed", exc_info=True)


_pusher: _Pusher | None = None
_timer = _Timer(DEFAULT_SYNC_INTERVAL)
_pid = os.getpid()
_fork_lock = threading.Lock()  # only taken in a child that has not caught up: never held at a fork


def _this_process(*, timer: bool = True) -> None:
    """After a fork, in the child: a baseline and a timer of its own (threads do not survive a
    fork). Run by the fork handler, by the hooks' postfork (uWSGI forks without Python's fork
    handlers) and by every sync; does nothing in the process that started them."""
    global _pid
    if _pusher is None or _pid == os.getpid():
        return
    with _fork_lock:  # two request threads may be first together
        if _pid == os.getpid():
            return
        _pusher.forget()
        if timer:
            _timer.start()
        _pid = os.getpid()


def _uwsgi_master() -> Any:
    """The ``uwsgi`` module when this is a uWSGI master that will fork its workers, else None.

    A thread must not run there: uWSGI forks without Python's fork handlers, so a lock (or the
    GIL) that the thread held at that moment stays held in the worker, which hangs."""
    try:
        uwsgi: Any = importlib.import_module("uwsgi")  # only exists inside uWSGI
    except ImportError:
        return None
    return uwsgi if uwsgi.worker_id() == 0 and getattr(uwsgi, "mule_id", lambda: 0)() == 0 else None


def sync() -> None:
    """Push this worker's counters now (multiprocess mode; a no-op otherwise, where every scrape
    reads them). A scrape does it by itself; call it to make counts visible at once."""
    if _pusher is not None:
        _this_process()
        _pusher.sync()


def set_sync_interval(seconds: float) -> None:
    """How often each worker pushes its counters in multiprocess mode (default 5 s): the bound on
    how stale another worker's counts are in a scrape. Takes effect at once, in this process and
    in the workers forked from it later."""
    if not seconds > 0:
        raise UsageError(f"the sync interval must be a positive number of seconds, not {seconds!r}")
    _timer.interval = float(seconds)
    _timer.wake.set()


def render(accept: str | None = None) -> tuple[bytes, str]:
    """``(body, content type)`` of a scrape, in the format ``accept`` (an Accept header) asks for:
    every worker's metrics in multiprocess mode, else prometheus_client's default registry."""
    encoder, content_type = choose_encoder(accept or "")
    if _pusher is None:
        return encoder(REGISTRY), content_type
    sync()
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return encoder(registry), content_type


def metrics_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A WSGI app answering every request with ``render()``; mount it at ``/metrics``."""
    body, content_type = render(environ.get("HTTP_ACCEPT"))
    start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


_exited: int | None = None


def _at_exit() -> None:
    """At worker exit (the hooks, atexit): a last sync, then this process's live gauges marked
    dead; once per process."""
    global _exited
    if _pusher is None or _exited == os.getpid():
        return
    _exited = os.getpid()
    _timer.stop()
    _this_process(timer=False)
    try:
        _pusher.sync()
    except Exception:
        log.warning("last metrics sync failed", exc_info=True)
    mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


if MULTIPROCESS:
    _pusher = _Pusher()
    atexit.register(_at_exit)  # also without the hooks; again after them does no harm
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_this_process)
    _master = _uwsgi_master()
    if _master is None:
        _timer.start()
    else:  # started in each worker instead (as register_uwsgi_postfork does for the node)
        _previous = getattr(_master, "post_fork_hook", None)

        def _uwsgi_postfork() -> None:
            if callable(_previous):
                _previous()
            _this_process()

        _master.post_fork_hook = _uwsgi_postfork
else:
    REGISTRY.register(_NodeCollector())
