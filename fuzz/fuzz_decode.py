"""Coverage-guided fuzzing of the decoder with atheris (``pip install -e '.[fuzz]'``).

    python fuzz/fuzz_decode.py -max_total_time=60

Uses the same property as the CI fuzz test (``tests/term/test_hostile.py``): any input decodes to
a value or raises ``DecodeError``; anything else is a crash that atheris reports with its input.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import atheris  # type: ignore[import-not-found]

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports():
    from beambridge import DecodeError, Limits, Mapping, binary_to_term

_LIMITS = Limits(max_decompressed_size=1 << 20)


def one_input(data: bytes) -> None:
    for mapping in (Mapping.EXACT, Mapping.TEXT):
        with contextlib.suppress(DecodeError):
            binary_to_term(b"\x83" + data, mapping=mapping, limits=_LIMITS)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
