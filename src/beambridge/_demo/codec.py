"""The codec demo: a round trip of terms through a local Erlang that beambridge starts itself.

Shows the exactness claim on a real BEAM: Python encodes, BEAM decodes and re-encodes, and the
bytes are the same; then BEAM builds terms of its own (pids, refs, funs, maps, bignums) and
Python decodes and re-encodes them byte for byte.
"""

from __future__ import annotations

import time
from typing import Any

from .. import otp
from ..term import Atom, BitString, ImproperList, Pid, binary_to_term, term_to_binary


def _sample() -> Any:
    return {
        Atom("call"): (Atom("call"), Atom("mod"), Atom("fun"), [1, b"abc", 3.14], Atom("user")),
        Atom("big"): 2**100 + 1,
        Atom("text"): "héllo wörld €".encode(),
        Atom("bits"): BitString(b"\xa0", 3),
        Atom("improper"): ImproperList([1, 2], Atom("tail")),
        Atom("nested"): [(True, None, -1.5e-300), {b"k": [[], ()]}],
    }


def run(out: Any = print) -> int:
    runtime = otp.default_runtime()
    ebin = otp.build_erlang_app("beambridge")
    out(f"starting a local Erlang ({runtime}) ...")
    with otp.ErlangPort("bb_term_port", runtime=runtime, paths=(ebin,)) as port:
        term = _sample()
        ours = term_to_binary(term)
        started = time.perf_counter()
        reply = port.request(b"\x01\x02\x00" + ours)
        elapsed = time.perf_counter() - started
        if reply[:1] != b"\x00":
            out(f"Erlang refused the term: {reply[1:].decode(errors='replace')}")
            return 1
        theirs = reply[1:]
        back = binary_to_term(theirs)
        out(f"sent     {len(ours)} bytes: {term!r}")
        out(f"received {len(theirs)} bytes back from BEAM in {elapsed * 1000:.1f} ms")
        out(f"equal after the round trip: {back == term}")
        made = port.request(b"\x04" + term_to_binary(
            (Atom("erlang"), Atom("list_to_tuple"),
             [[Atom("from_erlang"), 7, 1.0]])))
        made_by_beam = binary_to_term(made[1:])
        out(f"a term BEAM made: {made_by_beam!r}")
        self_pid = binary_to_term(port.request(b"\x04" + term_to_binary(
            (Atom("erlang"), Atom("self"), [])))[1:])
        out(f"BEAM's port process: {self_pid!r} (a {type(self_pid).__name__})")
        ok = back == term and isinstance(self_pid, Pid)
        out("round trip OK" if ok else "round trip FAILED")
        return 0 if ok else 1
