"""What a node counts about each peer node, for ``Node.stats()`` and the web layer's metrics:
connections made, messages and bytes each way, and the rpcs this side sent with their
outcomes and latency. One ``PeerStats`` per peer node outlives its connections (a reconnect
goes on counting); updates are plain increments made where the traffic is already serialized
(a connection's write or read lock, or the loop)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["PeerStats"]


@dataclass(slots=True)
class PeerStats:
    connects: int = 0
    connected_since: float | None = None  # wall-clock time of the live connection's start
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    rpc_calls: int = 0  # finished: answered, failed or timed out
    rpc_errors: int = 0  # Erlang raised, threw or exited, or the connection was lost
    rpc_timeouts: int = 0
    rpc_seconds: float = 0.0  # total time of the finished calls
    rpc_seconds_max: float = 0.0

    def call_ended(self, seconds: float, ok: bool, timed_out: bool = False) -> None:
        self.rpc_calls += 1
        self.rpc_seconds += seconds
        if seconds > self.rpc_seconds_max:
            self.rpc_seconds_max = seconds
        if timed_out:
            self.rpc_timeouts += 1
        elif not ok:
            self.rpc_errors += 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
