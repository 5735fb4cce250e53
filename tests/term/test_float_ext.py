"""``FLOAT_EXT`` (tag 99, a float as 31 bytes of text) is read exactly as strictly as BEAM.

BEAM's rule, found by experiment on OTP 25 and OTP 28 (erts' ``sys_chars_to_double``): an
optional sign, digits, ``.`` or ``,``, digits, an optional exponent (``e``/``E``, optional sign,
digits), then the NUL that ends the text; what follows the NUL is ignored; no spaces, no
underscores, no ``inf``/``nan``, no hex; overflow is refused, underflow gives 0.0 or a subnormal.
Python's ``float()`` accepts more (``"1_0"``, `` 1.0``, ``"1e5"``, ``".5"``), which is why the
codec does not just call it. ``test_against_beam.py`` checks this table against every BEAM found.

One case is left out of the BEAM comparison: 31 bytes with no NUL. BEAM then reads on past the
field into whatever follows (a NUL there makes it accept), so its verdict depends on bytes outside
the float; the codec refuses such a field.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from beambridge import DecodeError, Limits, Mapping
from beambridge.term import _pure

try:
    from beambridge.term import _cterm  # type: ignore[attr-defined]
except ImportError:
    _cterm = None

#: text -> the float BEAM decodes it to, or None where BEAM refuses it.
FLOAT_TEXTS: dict[bytes, float | None] = {
    b"1.5": 1.5, b"+1.5": 1.5, b"-1.5": -1.5, b"00001.5000": 1.5, b"1.0e5": 1e5,
    b"1.5E+03": 1500.0, b"1.5e-03": 0.0015, b"1.5e0003": 1500.0, b"1,5": 1.5, b"1,5e3": 1500.0,
    b"0.0": 0.0, b"-0.0": -0.0, b"1.00000000000000000000e+00": 1.0, b"1.5\x00xyz": 1.5,
    b"1.0e-400": 0.0, b"0.0e999": 0.0, b"4.9e-324": 5e-324, b"2.4e-320": 2.4e-320,
    b"2.2250738585072012e-308": 2.2250738585072014e-308,
    b"2.2250738585072011e-308": 2.225073858507201e-308,
    b"1.7976931348623157e308": 1.7976931348623157e308,
    b"1.79769313486231580793e308": 1.7976931348623157e308,
    b"000.000e00000000000000000000": 0.0, b"1." + b"5" * 28: 1.5555555555555556,
    # refused by BEAM (Python's float() takes most of these)
    b"1_0": None, b"1_0.0": None, b" 1.0": None, b"1.0 ": None, b"1.0\n": None, b"\t1.0": None,
    b"1e5": None, b"1.": None, b".5": None, b"+.5": None, b"1.5e": None, b"1.5e+": None,
    b"1.5e+-3": None, b"1.5ee3": None, b"1.5e3.0": None, b"1.0.0": None, b"1,0,0": None,
    b"--1.0": None, b"+-1.0": None, b"": None, b"inf": None, b"nan": None, b"infinity": None,
    b"0x1.0p3": None, b"1.5f": None, b"1.0e999": None, b"-1.0e999": None,
    b"1.7976931348623159e308": None, b"1.5e+3 ": None, b"\xb91.0": None, b"1.0\xa0": None,
    b"\xd9\xa1.0": None, b"\xef\xbc\x91.0": None,
}

CODECS = [pytest.param(_pure, id="pure"),
          pytest.param(_cterm, id="compiled",
                       marks=pytest.mark.skipif(_cterm is None, reason="not built"))]


def float_ext(text: bytes) -> bytes:
    """A FLOAT_EXT inside a list, so the byte after the field is a tag, never a NUL."""
    return b"\x83l\x00\x00\x00\x01c" + text.ljust(31, b"\0") + b"j"


def decoded(codec: Any, data: bytes) -> float | None:
    try:
        value = codec.decode(data, Mapping.EXACT, Limits(), None, False)
    except DecodeError as error:
        assert error.offset == 6 and ("FLOAT_EXT" in error.reason or "infinite" in error.reason)
        return None
    assert type(value[0]) is float
    return float(value[0])


def bits(value: float | None) -> bytes | None:
    return None if value is None else struct.pack(">d", value)


@pytest.mark.parametrize("codec", CODECS)
def test_float_ext_texts_as_beam_reads_them(codec: Any) -> None:
    for text, expected in FLOAT_TEXTS.items():
        assert bits(decoded(codec, float_ext(text))) == bits(expected), text


@pytest.mark.parametrize("codec", CODECS)
def test_a_field_without_a_nul_is_refused(codec: Any) -> None:
    for tail in (b"j", b"\0"):
        data = b"\x83c" + b"1." + b"5" * 29 + tail
        with pytest.raises(DecodeError, match="malformed FLOAT_EXT"):
            codec.decode(data, Mapping.EXACT, Limits(), None, True)
