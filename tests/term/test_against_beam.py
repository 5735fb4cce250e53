"""The codec against a real BEAM, on every OTP release found (OTP 25 and OTP 28 in CI).

Both directions the foundation issue asks for:
* terms generated in Erlang (every kind BEAM has, under each ``minor_version`` and compressed)
  are decoded here and re-encoded, and BEAM checks the bytes are its own and ``=:=`` holds;
* terms generated here (hypothesis) are encoded, decoded by BEAM, re-encoded by BEAM, and
  decoded here again: equal with types, and byte for byte BEAM's where the term has one
  canonical encoding (maps follow BEAM's key order, which Python dicts need not).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings

from beambridge import Atom, Map, Port, binary_to_term, term_to_binary
from beambridge.otp import Runtime

from ._strict import strict_eq
from .erlang_port import TermOracle, contains
from .strategies import terms
from .test_float_ext import FLOAT_TEXTS, float_ext

pytestmark = pytest.mark.erlang


@pytest.fixture(scope="module")
def oracle(otp_runtime: Runtime) -> Iterator[TermOracle]:
    oracle = TermOracle(otp_runtime)
    yield oracle
    oracle.close()


@pytest.mark.parametrize("minor_version", [0, 1, 2])
@pytest.mark.parametrize("level", [0, 6])
def test_terms_generated_by_beam_reencode_to_the_same_bytes(
    oracle: TermOracle, minor_version: int, level: int
) -> None:
    seed = 1000 * minor_version + level + 17
    encoded = oracle.generate(seed, 300, 40, minor_version, level)
    assert len(encoded) == 300
    ours = []
    for etf in encoded:
        term = binary_to_term(etf)
        again = term_to_binary(term, minor_version=minor_version, compressed=level or False)
        if level == 0:
            assert again == etf, f"{oracle.runtime}: re-encoding differs for {term!r}"[:500]
        else:
            assert strict_eq(binary_to_term(again), term)
        ours.append(again)
    oracle.check(ours)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(term=terms)
def test_python_terms_survive_a_trip_through_beam(oracle: TermOracle, term: object) -> None:
    for minor_version in (2, 1):
        ours = term_to_binary(term, minor_version=minor_version)
        assert strict_eq(binary_to_term(ours), term)
        theirs = oracle.reencode(ours, minor_version)
        back = binary_to_term(theirs)
        assert strict_eq(back, term), f"{oracle.runtime}: {term!r} came back as {back!r}"
        # Python dicts keep insertion order and OTP 25 writes small ports in the old form;
        # everything else has exactly one encoding, which must be BEAM's.
        order_free = not contains(term, (dict, Map))
        if order_free and not (oracle.runtime.major < 26 and contains(term, (Port,))):
            assert theirs == ours, f"{oracle.runtime}: bytes differ for {term!r}"


def test_compressed_terms_decode_in_beam(oracle: TermOracle) -> None:
    term = [b"abc" * 100, (Atom("x"), list(range(300)))] * 20
    packed = term_to_binary(term, compressed=True)
    assert packed[1] == 80 and len(packed) < len(term_to_binary(term))
    assert binary_to_term(oracle.reencode(packed)) == term
    for level in range(10):
        assert binary_to_term(term_to_binary(term, compressed=level)) == term


def test_local_ext_is_kept_opaque_and_reencodes_to_the_same_bytes(oracle: TermOracle) -> None:
    if oracle.runtime.major < 26:
        pytest.skip(f"term_to_binary(T, [local]) is OTP 26+; this is {oracle.runtime}")
    plain = oracle.apply(term_to_binary((Atom("erlang"), Atom("self"), [])))
    local = oracle.local(term_to_binary((Atom("a"), binary_to_term(plain), [1, 2])))
    value = binary_to_term(local)
    assert term_to_binary(value) == local
    wrapped = term_to_binary([value, 1])
    inner, = [binary_to_term(wrapped)[0]]
    assert inner == value


def test_beam_rejects_what_we_refuse(oracle: TermOracle) -> None:
    """A few malformed inputs both sides must refuse (NaN float, bad UTF-8 atom, short binary)."""
    from beambridge import DecodeError

    for bad in (
        bytes([131, 70, 127, 248, 0, 0, 0, 0, 0, 0]),
        bytes([131, 119, 2, 0xC3, 0x28]),
        bytes([131, 109, 0, 0, 0, 5, 1, 2]),
        bytes([131, 104, 2, 97, 1]),
        bytes([131, 77, 0, 0, 0, 1, 0, 255]),
    ):
        assert oracle.rejects(bad)
        with pytest.raises(DecodeError):
            binary_to_term(bad)


def test_float_ext_texts_get_beams_verdict(oracle: TermOracle) -> None:
    """Each tricky FLOAT_EXT text: refused where BEAM refuses it, else the float BEAM reads."""
    import struct

    from beambridge import DecodeError

    for text, expected in FLOAT_TEXTS.items():
        data = float_ext(text)
        if oracle.rejects(data):
            assert expected is None, f"{oracle.runtime} refuses {text!r}"
            with pytest.raises(DecodeError):
                binary_to_term(data)
            continue
        theirs = binary_to_term(oracle.reencode(data))
        assert expected is not None, f"{oracle.runtime} reads {text!r} as {theirs!r}"
        ours = binary_to_term(data)
        assert struct.pack(">d", ours[0]) == struct.pack(">d", theirs[0]) == struct.pack(
            ">d", expected), text
