"""Settings of the web layer, read from ``BEAMBRIDGE_*`` keys (environment, Django settings, Flask
config), checked in one place so that Django's system checks, Flask's ``init_app`` and the
environment report the same problems in the same words.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping as AbcMapping
from dataclasses import dataclass, field, replace
from typing import Any

from .._errors import UsageError
from ..node import TlsConfig, TlsConfigError
from ..term import Mapping

__all__ = ["MAPPINGS", "PREFIX", "Problem", "SettingsError", "WebSettings", "check_settings"]

PREFIX = "BEAMBRIDGE_"

#: the names a ``BEAMBRIDGE_MAPPING`` setting may take
MAPPINGS: dict[str, Mapping] = {
    "exact": Mapping.EXACT,
    "text": Mapping.TEXT,
    "charlist": Mapping.CHARLIST,
    "uwsgi": Mapping.UWSGI,
}


class SettingsError(UsageError):
    """A ``BEAMBRIDGE_*`` setting is wrong; ``problems`` lists every one found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


@dataclass(frozen=True)
class Problem:
    """One bad setting: ``level`` is ``"error"`` (refused) or ``"warning"`` (probably a mistake)."""

    key: str
    message: str
    level: str = "error"
    id: str = "beambridge.E001"

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


@dataclass(frozen=True)
class WebSettings:
    """How each worker's node is made and what it talks to.

    ``node_name``: this side's base name; each worker process adds ``_<pid>_<random>`` so that
    workers never collide (``web`` -> ``web_4242_1a2b3c@127.0.0.1``; a ``@host`` part is kept).
    ``erlang_node``: the Erlang node that ``rpc`` calls go to when none is named.
    ``rpc_timeout``/``connect_timeout``: seconds; every call ends within them.
    ``mapping``: one of ``MAPPINGS`` (how str/atoms/binaries map, ``beambridge.term.Mapping``).
    ``tls_optfile``: the cluster's Erlang ``ssl_dist_optfile`` (``-proto_dist inet_tls``); None:
    plain TCP. ``listen_host``/``listen_ports``: where the node accepts connections (a
    ``(low, high)`` range, ``"9100-9105"`` in the environment, for a firewall rule).
    """

    node_name: str = "beambridge_web"
    erlang_node: str | None = None
    cookie: str | None = None
    rpc_timeout: float = 5.0
    connect_timeout: float = 5.0
    epmd_port: int | None = None
    mapping: str = "exact"
    hidden: bool = True
    tls_optfile: str | None = None
    listen_host: str | None = None
    listen_ports: tuple[int, int] | None = None
    options: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def term_mapping(self) -> Mapping:
        return MAPPINGS[self.mapping]

    def node_options(self) -> dict[str, Any]:
        """The ``BlockingNode``/``Node`` keyword arguments these settings ask for (``options``
        first, then the named settings that are set), so every node the web layer makes (the
        worker's, the receiver's) is made the same way."""
        found: dict[str, Any] = dict(self.options)
        for name in ("epmd_port", "listen_host", "listen_ports"):
            if getattr(self, name) is not None:
                found.setdefault(name, getattr(self, name))
        if self.tls_optfile is not None:
            found.setdefault("tls", self.tls_optfile)
        return found

    def replace(self, **changes: Any) -> WebSettings:
        return replace(self, **changes)

    @classmethod
    def from_mapping(cls, source: Any, *, prefix: str = PREFIX, base: WebSettings | None = None
                     ) -> WebSettings:
        """Settings from ``PREFIX``-ed keys of a dict, a Django settings object or the environment.

        Raises ``SettingsError`` listing every bad value.
        """
        raw = _collect(source, prefix)
        problems = [p for p in check_settings(raw, prefix=prefix) if p.level == "error"]
        if problems:
            raise SettingsError(problems)
        values: dict[str, Any] = {}
        for key, value in raw.items():
            name = key[len(prefix):].lower()
            if name not in _FIELDS:
                continue
            values[name] = _convert(name, value)
        return replace(base or cls(), **values)

    @classmethod
    def from_env(cls, environ: AbcMapping[str, str] | None = None) -> WebSettings:
        return cls.from_mapping(dict(os.environ if environ is None else environ))


_FIELDS = {"node_name", "erlang_node", "cookie", "rpc_timeout", "connect_timeout", "epmd_port",
           "mapping", "hidden", "tls_optfile", "listen_host", "listen_ports"}
_TEXT = {"node_name", "erlang_node", "cookie", "listen_host"}
_POSITIVE = {"rpc_timeout", "connect_timeout"}


def _collect(source: Any, prefix: str) -> dict[str, Any]:
    if isinstance(source, AbcMapping):
        return {k: v for k, v in source.items() if isinstance(k, str) and k.startswith(prefix)}
    return {k: getattr(source, k) for k in dir(source) if k.startswith(prefix)}


def _convert(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in _POSITIVE:
        return float(value)
    if name == "epmd_port":
        return int(value)
    if name == "hidden":
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    if name == "mapping":
        return str(value).lower()
    if name == "listen_ports":
        return _ports(value)
    if name == "tls_optfile":
        return os.fspath(value) or None  # an empty value: plain TCP
    return str(value)


def _ports(value: Any) -> tuple[int, int]:
    """``"9100-9105"``, ``"9100"``, ``9100`` or ``(9100, 9105)``; ``ValueError`` otherwise."""
    if isinstance(value, str):
        low, _, high = value.strip().partition("-")
        parts: list[Any] = [low, high or low]
    elif isinstance(value, int) and not isinstance(value, bool):
        parts = [value, value]
    elif isinstance(value, tuple | list) and len(value) == 2:
        parts = list(value)
    else:
        raise ValueError(value)
    if any(isinstance(p, bool) or not isinstance(p, int | str) for p in parts):
        raise ValueError(value)
    low_port, high_port = int(parts[0]), int(parts[1])
    if not 0 < low_port <= high_port < 65536:
        raise ValueError(value)
    return low_port, high_port


def _optfile_problems(key: str, value: Any) -> list[Problem]:
    """The optfile read as the node will read it: a refusal now, not at the first request."""
    if not isinstance(value, str | os.PathLike):
        return [Problem(key, f"must be the path of an ssl_dist_optfile, not {value!r}",
                        id="beambridge.E009")]
    if not os.fspath(value):
        return []
    try:
        tls = TlsConfig.from_optfile(value)
    except TlsConfigError as error:
        return [Problem(key, str(error), id="beambridge.E009")]
    if tls.server is None:
        return [Problem(key, f"{os.fspath(value)}: no server section (a node needs one to accept "
                        "connections; Erlang nodes need it too)", id="beambridge.E009")]
    if tls.client.verify_mode == ssl.CERT_NONE:
        return [Problem(key, f"{os.fspath(value)}: the client section has {{verify, verify_none}}: "
                        "any certificate is accepted from the Erlang nodes this node connects to",
                        "warning", "beambridge.W003")]
    return []


def check_settings(source: Any, *, prefix: str = PREFIX) -> list[Problem]:
    """Every problem with the ``PREFIX``-ed settings in ``source`` (empty when all is well)."""
    raw = _collect(source, prefix)
    problems: list[Problem] = []
    for key, value in raw.items():
        name = key[len(prefix):].lower()
        if name not in _FIELDS:
            if name not in _IGNORED:
                problems.append(Problem(key, "unknown beambridge setting (a typo?); known: "
                                        + ", ".join(sorted(prefix + f.upper() for f in _FIELDS)),
                                        "warning", "beambridge.W001"))
            continue
        if value is None:
            if name in ("node_name", "mapping", "rpc_timeout", "connect_timeout", "hidden"):
                problems.append(Problem(key, "must not be None", id="beambridge.E002"))
            continue
        if name in _TEXT:
            if not isinstance(value, str) or not value.strip():
                problems.append(Problem(key, f"must be a non-empty string, not {value!r}",
                                        id="beambridge.E003"))
            elif any(c.isspace() for c in value) and name != "cookie":
                problems.append(Problem(key, f"must not contain spaces: {value!r}",
                                        id="beambridge.E003"))
            elif name == "erlang_node" and value.count("@") > 1:
                problems.append(Problem(key, f"a node name is name@host, not {value!r}",
                                        id="beambridge.E004"))
            elif name == "node_name" and not value.partition("@")[0].replace("_", "a").isalnum():
                problems.append(Problem(key, "the part before @ must be letters, digits and _: "
                                        f"{value!r}", id="beambridge.E004"))
        elif name in _POSITIVE:
            try:
                number = float(value)
            except (TypeError, ValueError):
                problems.append(Problem(key, f"must be a number of seconds, not {value!r}",
                                        id="beambridge.E005"))
                continue
            if isinstance(value, bool) or not number > 0 or number == float("inf"):
                problems.append(Problem(key, f"must be a positive finite number of seconds, not "
                                        f"{value!r}", id="beambridge.E005"))
        elif name == "epmd_port":
            try:
                port = int(value)
            except (TypeError, ValueError):
                port = -1
            if isinstance(value, bool) or not 0 < port < 65536:
                problems.append(Problem(key, f"must be a TCP port (1-65535), not {value!r}",
                                        id="beambridge.E006"))
        elif name == "mapping":
            if not isinstance(value, str) or value.lower() not in MAPPINGS:
                problems.append(Problem(key, f"must be one of {', '.join(MAPPINGS)}, not {value!r}",
                                        id="beambridge.E007"))
        elif name == "hidden" and not isinstance(value, (bool, int, str)):
            problems.append(Problem(key, f"must be a boolean, not {value!r}", id="beambridge.E008"))
        elif name == "tls_optfile":
            problems += _optfile_problems(key, value)
        elif name == "listen_ports":
            try:
                _ports(value)
            except (TypeError, ValueError):
                problems.append(Problem(key, "must be a port range LOW-HIGH (like "
                                        "inet_dist_listen_min/max, e.g. 9100-9105) or one port, "
                                        f"within 1-65535, not {value!r}", id="beambridge.E010"))
    if "erlang_node" not in {k[len(prefix):].lower() for k in raw} or raw.get(
            prefix + "ERLANG_NODE") is None:
        problems.append(Problem(prefix + "ERLANG_NODE", "not set: rpc() calls must name their node",
                                "warning", "beambridge.W002"))
    return problems


#: BEAMBRIDGE_* names used by other parts of beambridge (not web settings; not reported)
_IGNORED = {"erl", "build_dir", "receiver_name", "receiver_handler", "pure"}
