"""Erlang term syntax: read what a user types in the Erlang shell, print what the shell prints.

``parse_term`` reads one term (as ``erl_parse:parse_term`` does, plus the forms below) and gives
exactly what ``binary_to_term`` gives for the same Erlang term under the same ``Mapping``;
``format_term`` prints a value on one line as the Erlang shell does (``io_lib:format("~0tp")``
with the default ``+pc latin1`` printable range, or ``printable_range="unicode"`` for
``+pc unicode``). For every value the codec handles, ``parse_term(format_term(x)) == x``.

Pids, references and ports print with their node, because Erlang's ``<0.12.0>`` means "node 0 of
the printing node's own table" and is meaningless anywhere else. The node is an atom (quoted when
needed) followed by ``/Creation`` unless the creation is 0:

==============================  ==================================================
``<node@host/3.12.0>``          ``Pid(Atom("node@host"), 12, 0, 3)``
``#Ref<node@host/3.1.2.3>``     ``Reference(Atom("node@host"), 3, (3, 2, 1))`` (words printed
                                most significant first, as Erlang prints them)
``#Port<node@host/3.5>``        ``Port(Atom("node@host"), 5, 3)``
``#Fun{M,OldIndex,OldUniq,Pid,  ``Fun``: its fields in order (free variables as a tuple); the
{Free},Arity,Uniq,Index}``      last three are absent for the old ``FUN_EXT`` form
``#LocalTerm{<<...>>}``         ``LocalTerm`` (its raw bytes)
==============================  ==================================================

Erlang's own ``<0.12.0>`` and ``#Fun<erl_eval.6.123>`` cannot be read back (the node and the
closure's body are not in the text); parsing them raises ``TermSyntaxError`` saying so.
"""

from __future__ import annotations

import math
import re
import struct
import sys
from collections.abc import Callable
from typing import Any, Literal, NoReturn

from .._errors import EncodeError, UsageError
from ._api import binary_to_term, term_to_binary
from ._options import Limits, Mapping
from ._types import (
    Atom,
    BitString,
    ExportFun,
    Fun,
    ImproperList,
    LocalTerm,
    Map,
    Pid,
    Port,
    Reference,
)

__all__ = ["TermSyntaxError", "format_term", "parse_term"]

_MAX_DEPTH = Limits().max_depth


class TermSyntaxError(UsageError):
    """Text that is not an Erlang term; ``line`` and ``column`` (1-based) say where, ``reason`` why."""

    def __init__(self, reason: str, line: int, column: int) -> None:
        self.reason = reason
        self.line = line
        self.column = column
        super().__init__(reason, line, column)

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}: {self.reason}"


# --------------------------------------------------------------------------------------------
# Shared character classes
# --------------------------------------------------------------------------------------------

_RESERVED = frozenset((
    "after", "and", "andalso", "band", "begin", "bnot", "bor", "bsl", "bsr", "bxor", "case", "catch",
    "cond", "div", "else", "end", "fun", "if", "let", "maybe", "not", "of", "or", "orelse", "receive",
    "rem", "try", "when", "xor",
))
# Erlang names are Latin-1: letters U+C0-U+FF except the signs U+D7 and U+F7.
_NAME_CHARS = "A-Za-z0-9_@\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u00ff"
_BARE_ATOM = re.compile(f"[a-z\u00df-\u00f6\u00f8-\u00ff][{_NAME_CHARS}]*")
_VARIABLE = re.compile(f"[A-Z_\u00c0-\u00d6\u00d8-\u00de][{_NAME_CHARS}]*")

_NAMED_ESCAPES = {8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r", 27: "\\e"}
_ESCAPE_CODES = {"b": 8, "d": 127, "e": 27, "f": 12, "n": 10, "r": 13, "s": 32, "t": 9, "v": 11}


def _printable(code: int, unicode: bool) -> bool:
    """Erlang's ``io_lib:printable_latin1_list`` / ``printable_unicode_list`` test, one char."""
    if 32 <= code <= 126 or code in _NAMED_ESCAPES:
        return True
    if not unicode:
        return 160 <= code <= 255
    return 160 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD or 0x10000 <= code <= 0x10FFFF


# --------------------------------------------------------------------------------------------
# Big integers: Python refuses str() / int() beyond sys.get_int_max_str_digits(); Erlang does not
# --------------------------------------------------------------------------------------------

_SAFE_DIGITS = 600  # below the smallest limit Python allows (640)


def _digits_to_int(digits: str, base: int) -> int:
    if len(digits) <= _SAFE_DIGITS or base & (base - 1) == 0:
        return int(digits, base)
    half = len(digits) // 2
    scale: int = base**half
    return _digits_to_int(digits[:-half], base) * scale + _digits_to_int(digits[-half:], base)


def _int_to_str(n: int) -> str:
    if n.bit_length() < 1900:  # about 570 decimal digits
        return str(n)
    if n < 0:
        return "-" + _int_to_str(-n)
    half = n.bit_length() * 3 // 20  # about half the decimal digits (log10(2) > 0.3)
    high, low = divmod(n, 10**half)
    return _int_to_str(high) + _int_to_str(low).zfill(half)


# --------------------------------------------------------------------------------------------
# Scanner
# --------------------------------------------------------------------------------------------

_SKIP = re.compile(r"(?:\s+|%[^\n]*)*")
_NUMBER = re.compile(
    r"(?P<base>\d+)\#(?P<based>[0-9A-Za-z_]*)"
    r"|(?P<int>\d(?:_?\d)*)(?P<frac>\.\d(?:_?\d)*(?:[eE][+-]?\d(?:_?\d)*)?)?"
)
_PUNCT = ("<<", ">>", "=>", ":=", "#{", "{", "}", "[", "]", "(", ")", ",", "|", ":", "/", "-", "+")
# The common tokens in one match (a decimal integer that is not the start of a float or based
# integer, punctuation, a bare atom); anything else takes the general path.
_COMMON = re.compile(
    r"(?P<int>\d(?:_?\d)*)(?![.#\w])"
    r"|(?P<punct><<|>>|=>|:=|\#\{|[{}\[\](),|:/+\-])"
    f"|(?P<atom>{_BARE_ATOM.pattern})"
)
# A binary written as plain bytes (<<1,2,3>>), as format_term prints most binaries: one token.
_BYTES = re.compile(r"<<\s*(\d{1,3}(?:\s*,\s*\d{1,3})*)\s*>>")
_COMMA = re.compile(r"\s*,\s*")
_PLAIN_CHARS = {"'": re.compile(r"[^'\\]+"), '"': re.compile(r'[^"\\]+')}
_HEX = re.compile(r"[0-9A-Fa-f]+")
_OCTAL = re.compile(r"[0-7]{1,3}")
_NODE_TAIL = re.compile(r"(?:/(\d+))?((?:\.\d+)+)>")


class _Token:
    """One token: ``kind`` is a punctuation string or a word (``int``, ``atom``, ...)."""

    __slots__ = ("kind", "pos", "value")

    def __init__(self, kind: str, value: Any, pos: int) -> None:
        self.kind = kind
        self.value = value
        self.pos = pos


class _Scanner:
    """Turns text into tokens; positions are offsets, turned into line/column only on error."""

    def __init__(self, text: str) -> None:
        self.text = text

    def fail(self, reason: str, pos: int) -> NoReturn:
        line = self.text.count("\n", 0, pos) + 1
        column = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        raise TermSyntaxError(reason, line, column)

    def tokens(self) -> list[_Token]:
        text = self.text
        out: list[_Token] = []
        pos = _SKIP.match(text, 0).end()  # type: ignore[union-attr]
        end = len(text)
        common = _COMMON.match
        while pos < end:
            if text.startswith("<<", pos):
                match = _BYTES.match(text, pos)
                if match is not None:
                    values = [int(n) for n in _COMMA.split(match.group(1))]
                    if max(values) < 256:
                        out.append(_Token("literal", bytes(values), pos))
                        pos = _SKIP.match(text, match.end()).end()  # type: ignore[union-attr]
                        continue
            match = common(text, pos)
            if match is not None:
                kind = match.lastgroup
                word = match.group()
                if kind == "int":
                    out.append(_Token("int", _digits_to_int(word.replace("_", ""), 10), pos))
                elif kind == "punct":
                    out.append(_Token(word, word, pos))
                else:
                    out.append(_Token("atom", word, pos))
                pos = _SKIP.match(text, match.end()).end()  # type: ignore[union-attr]
                continue
            c = text[pos]
            if c.isdigit() and c.isascii():
                pos = self.number(pos, out)
            elif c == "'" or c == '"':
                value, after = self.quoted(pos)
                out.append(_Token("qatom" if c == "'" else "string", value, pos))
                pos = after
            elif c == "$":
                if pos + 1 >= end:
                    self.fail("a character literal needs a character after $", pos)
                if text[pos + 1] == "\\":
                    code, after = self.escape(pos + 1)
                else:
                    code, after = ord(text[pos + 1]), pos + 2
                out.append(_Token("int", code, pos))
                pos = after
            elif c == "<" and not text.startswith("<<", pos):
                pos = self.node_literal(pos, pos + 1, "pid", out)
            elif c == "#" and pos + 1 < end and (text[pos + 1].isalpha()):
                match = _VARIABLE.match(text, pos + 1) or _BARE_ATOM.match(text, pos + 1)
                if match is None:
                    self.fail("unexpected '#'", pos)
                name = match.group()
                after = match.end()
                if name in ("Ref", "Port") and text.startswith("<", after):
                    pos = self.node_literal(pos, after + 1, name.lower(), out)
                elif name == "Fun" and text.startswith("<", after):
                    self.fail("a closure printed by Erlang (#Fun<...>) cannot be read back: its code "
                              "and environment are not in the text", pos)
                else:
                    out.append(_Token("record", name, pos))
                    pos = after
            elif c == ".":
                if pos + 1 < end and not (text[pos + 1].isspace() or text[pos + 1] == "%"):
                    self.fail("unexpected '.'", pos)
                out.append(_Token("dot", None, pos))
                pos += 1
            else:
                match = _BARE_ATOM.match(text, pos)
                if match is not None:
                    out.append(_Token("atom", match.group(), pos))
                    pos = match.end()
                else:
                    match = _VARIABLE.match(text, pos)
                    if match is not None:
                        self.fail(f"{match.group()} is a variable, not a term; quote atoms that "
                                  f"start with a capital: '{match.group()}'", pos)
                    for punct in _PUNCT:
                        if text.startswith(punct, pos):
                            out.append(_Token(punct, punct, pos))
                            pos += len(punct)
                            break
                    else:
                        self.fail(f"unexpected character {c!r}", pos)
            pos = _SKIP.match(text, pos).end()  # type: ignore[union-attr]
        out.append(_Token("eof", None, end))
        return out

    def number(self, pos: int, out: list[_Token]) -> int:
        match = _NUMBER.match(self.text, pos)
        assert match is not None
        if match.group("base") is not None:
            base = int(match.group("base"))
            digits = match.group("based")
            if not 2 <= base <= 36:
                self.fail(f"the base of {match.group()} must be 2 to 36", pos)
            if not digits or digits.startswith("_") or digits.endswith("_") or "__" in digits:
                self.fail(f"bad integer {match.group()}", pos)
            try:
                value = _digits_to_int(digits.replace("_", ""), base)
            except ValueError:
                self.fail(f"bad digit in base {base} integer {match.group()}", pos)
            out.append(_Token("int", value, pos))
            return match.end()
        after = match.end()
        if after < len(self.text) and (self.text[after].isalnum() or self.text[after] == "_"):
            if self.text[after] in "eE" and match.group("frac") is None:
                self.fail("an Erlang float needs a fraction: write 1.0e10, not 1e10", pos)
            self.fail(f"bad number {self.text[pos:after + 1]!r}", pos)
        if match.group("frac") is None:
            out.append(_Token("int", _digits_to_int(match.group("int").replace("_", ""), 10), pos))
            return after
        number = float(match.group().replace("_", ""))
        if math.isinf(number):
            self.fail(f"float {match.group()} is out of range", pos)
        out.append(_Token("float", number, pos))
        return after

    def quoted(self, pos: int) -> tuple[str, int]:
        """Read a quoted atom or string starting at its opening quote; escapes resolved."""
        text = self.text
        quote = text[pos]
        plain = _PLAIN_CHARS[quote]
        parts: list[str] = []
        i = pos + 1
        while True:
            match = plain.match(text, i)
            if match is not None:
                parts.append(match.group())
                i = match.end()
            if i >= len(text):
                self.fail(f"unterminated {'atom' if quote == chr(39) else 'string'}", pos)
            if text[i] == quote:
                return "".join(parts), i + 1
            code, i = self.escape(i)
            parts.append(chr(code))

    def escape(self, pos: int) -> tuple[int, int]:
        """Read the escape sequence at ``pos`` (a backslash); return its code point and the end."""
        text = self.text
        if pos + 1 >= len(text):
            self.fail("unterminated escape sequence", pos)
        c = text[pos + 1]
        if c in _ESCAPE_CODES:
            return _ESCAPE_CODES[c], pos + 2
        if c == "^":
            if pos + 2 >= len(text):
                self.fail("unterminated control escape \\^", pos)
            control = text[pos + 2]
            return (127 if control == "?" else ord(control) & 31), pos + 3
        if c == "x":
            if text.startswith("{", pos + 2):
                match = _HEX.match(text, pos + 3)
                close = match.end() if match else pos + 3
                if match is None or not text.startswith("}", close):
                    self.fail("bad escape: write \\x{HEX}", pos)
                code = int(match.group(), 16)
                if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                    self.fail(f"\\x{{{match.group()}}} is not a Unicode character", pos)
                return code, close + 1
            digits = text[pos + 2:pos + 4]
            if len(digits) != 2 or not _HEX.fullmatch(digits):
                self.fail("bad escape: \\x takes two hex digits or {HEX}", pos)
            return int(digits, 16), pos + 4
        match = _OCTAL.match(text, pos + 1)
        if match is not None:
            return int(match.group(), 8), match.end()
        return ord(c), pos + 2  # any other escaped character stands for itself

    def node_literal(self, start: int, pos: int, kind: str, out: list[_Token]) -> int:
        """Read ``NODE[/CREATION].N.N...>`` (after ``<``, ``#Ref<`` or ``#Port<``)."""
        text = self.text
        shape = {"pid": "<node@host.12.0>", "ref": "#Ref<node@host.1.2.3>",
                 "port": "#Port<node@host.5>"}[kind]
        if pos < len(text) and text[pos] == "'":
            node, pos = self.quoted(pos)
        else:
            match = _BARE_ATOM.match(text, pos)
            if match is None:
                if pos < len(text) and text[pos].isdigit():
                    self.fail(f"a {kind} printed by Erlang has no node name (its first number only "
                              f"means something inside that node): write {shape}", start)
                self.fail(f"expected a node name: write {shape}", start)
            node, pos = match.group(), match.end()
        match = _NODE_TAIL.match(text, pos)
        if match is None:
            self.fail(f"bad {kind}: write {shape}", start)
        creation = int(match.group(1) or 0)
        numbers = [int(n) for n in match.group(2)[1:].split(".")]
        wanted = {"pid": (2,), "port": (1,), "ref": (1, 2, 3, 4, 5)}[kind]
        if len(numbers) not in wanted:
            self.fail(f"bad {kind}: write {shape}", start)
        try:
            value: Any
            if kind == "pid":
                value = Pid(Atom(node), numbers[0], numbers[1], creation)
            elif kind == "port":
                value = Port(Atom(node), numbers[0], creation)
            else:
                value = Reference(Atom(node), creation, tuple(reversed(numbers)))
        except ValueError as error:
            self.fail(str(error), start)
        out.append(_Token("literal", value, start))
        return match.end()


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------


class _Bits:
    """Builds a bitstring segment by segment; whole bytes go straight to a bytearray."""

    __slots__ = ("acc", "buf", "n")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.acc = 0  # pending bits, fewer than 8
        self.n = 0

    def bits(self, value: int, size: int) -> None:
        if size == 0:
            return
        if self.n == 0 and size % 8 == 0:
            self.buf += value.to_bytes(size // 8, "big")
            return
        acc = (self.acc << size) | value
        total = self.n + size
        rest = total % 8
        if total >= 8:
            self.buf += (acc >> rest).to_bytes(total // 8, "big")
        self.acc = acc & ((1 << rest) - 1)
        self.n = rest

    def bitstring(self, data: bytes, size: int) -> None:
        whole, rest = divmod(size, 8)
        if self.n == 0:
            self.buf += data[:whole]
        else:
            self.bits(int.from_bytes(data[:whole], "big"), whole * 8)
        if rest:
            self.bits(data[whole] >> (8 - rest), rest)

    def result(self) -> bytes | BitString:
        if self.n == 0:
            return bytes(self.buf)
        return BitString(bytes(self.buf) + bytes((self.acc << (8 - self.n),)), len(self.buf) * 8 + self.n)


_SEGMENT_TYPES = {"integer": 1, "float": 1, "binary": 8, "bytes": 8, "bitstring": 1, "bits": 1,
                  "utf8": 0, "utf16": 0, "utf32": 0}
_FLOAT_FORMATS = {16: "e", 32: "f", 64: "d"}


class _Parser:
    def __init__(self, text: str) -> None:
        self.scanner = _Scanner(text)
        self.tokens = self.scanner.tokens()
        self.i = 0
        self.depth = 0

    def fail(self, reason: str, token: _Token | None = None) -> NoReturn:
        self.scanner.fail(reason, (token or self.tokens[self.i]).pos)

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        if token.kind != "eof":
            self.i += 1
        return token

    def accept(self, kind: str) -> bool:
        if self.tokens[self.i].kind == kind:
            self.i += 1
            return True
        return False

    def expect(self, kind: str, what: str) -> _Token:
        token = self.tokens[self.i]
        if token.kind != kind:
            self.fail(f"expected {what}, found {self.describe(token)}")
        self.i += 1
        return token

    @staticmethod
    def describe(token: _Token) -> str:
        if token.kind == "eof":
            return "end of input"
        if token.kind in ("int", "float"):
            return f"number {token.value!r}"
        if token.kind in ("atom", "qatom"):
            return f"atom {token.value!r}"
        if token.kind == "string":
            return "a string"
        if token.kind == "dot":
            return "'.'"
        if token.kind == "record":
            return f"#{token.value}"
        if token.kind == "literal":
            return type(token.value).__name__.lower()
        return repr(token.kind)

    def document(self) -> Any:
        if self.peek().kind in ("eof", "dot"):
            self.fail("expected a term, found " + self.describe(self.peek()))
        value = self.term()
        self.accept("dot")
        if self.peek().kind != "eof":
            self.fail(f"unexpected {self.describe(self.peek())} after the term")
        return value

    def term(self) -> Any:
        token = self.take()
        kind = token.kind
        if kind == "int" or kind == "float":
            return token.value
        if kind == "atom":
            if token.value in _RESERVED and token.value not in ("maybe", "else"):
                if token.value == "fun":
                    return self.export_fun(token)
                self.fail(f"{token.value} is a reserved word; quote it to make an atom: "
                          f"'{token.value}'", token)
            return _atom_value(token.value)
        if kind == "qatom":
            return _atom_value(self.atom_name(token))
        if kind == "string":
            return self.string(token)
        if kind == "-" or kind == "+":
            return self.signed(token)
        if kind == "literal":
            return token.value
        if kind in ("[", "{", "#{", "<<", "record", "("):
            self.depth += 1
            if self.depth > _MAX_DEPTH:
                self.fail(f"nesting deeper than {_MAX_DEPTH}", token)
            try:
                if kind == "[":
                    return self.list_rest()
                if kind == "{":
                    return tuple(self.items("}"))
                if kind == "#{":
                    return self.map_rest()
                if kind == "<<":
                    return self.binary_rest()
                if kind == "(":
                    value = self.term()
                    self.expect(")", "')'")
                    return value
                return self.record(token)
            finally:
                self.depth -= 1
        self.fail(f"expected a term, found {self.describe(token)}", token)

    def atom_name(self, token: _Token) -> str:
        name: str = token.value
        if len(name) > 255:
            self.fail(f"an atom has at most 255 characters, not {len(name)}", token)
        return name

    def string(self, token: _Token) -> list[int]:
        parts = [token.value]
        while self.peek().kind == "string":  # "ab" "cd" is "abcd"
            parts.append(self.take().value)
        return [ord(c) for c in "".join(parts)]

    def signed(self, sign: _Token) -> int | float:
        token = self.take()
        if token.kind == "(":
            value = self.signed_operand(self.take())
            self.expect(")", "')'")
        else:
            value = self.signed_operand(token)
        return -value if sign.kind == "-" else value

    def signed_operand(self, token: _Token) -> int | float:
        if token.kind not in ("int", "float"):
            self.fail(f"'-' and '+' go before a number, not {self.describe(token)}", token)
        value: int | float = token.value
        return value

    def items(self, close: str) -> list[Any]:
        out: list[Any] = []
        if self.accept(close):
            return out
        while True:
            out.append(self.term())
            if not self.accept(","):
                self.expect(close, f"',' or '{close}'")
                return out

    def list_rest(self) -> Any:
        items: list[Any] = []
        if self.accept("]"):
            return items
        while True:
            items.append(self.term())
            if self.accept(","):
                continue
            if self.accept("|"):
                tail = self.term()
                self.expect("]", "']' after the tail of a list")
                if isinstance(tail, list):
                    return items + tail
                if isinstance(tail, ImproperList):
                    return ImproperList(items + list(tail.items), tail.tail)
                return ImproperList(items, tail)
            self.expect("]", "',', '|' or ']'")
            return items

    def map_rest(self) -> Any:
        pairs: dict[Any, tuple[Any, Any]] = {}
        if not self.accept("}"):
            while True:
                key = self.term()
                if self.peek().kind == ":=":
                    self.fail("write => in a map term (:= only updates an existing map)")
                self.expect("=>", "'=>'")
                pairs[_strict_key(key)] = (key, self.term())  # the last of equal keys wins
                if not self.accept(","):
                    self.expect("}", "',' or '}'")
                    break
        return _make_map(list(pairs.values()))

    def export_fun(self, fun: _Token) -> ExportFun:
        module = self.fun_atom()
        self.expect(":", "':' in fun Module:Function/Arity")
        function = self.fun_atom()
        self.expect("/", "'/' in fun Module:Function/Arity")
        arity = self.expect("int", "an arity")
        if arity.value > 255:
            self.fail(f"arity {arity.value} is above 255", arity)
        return ExportFun(Atom(module), Atom(function), arity.value)

    def fun_atom(self) -> str:
        token = self.take()
        if token.kind not in ("atom", "qatom"):
            self.fail(f"expected an atom in fun Module:Function/Arity, found {self.describe(token)}",
                      token)
        return self.atom_name(token)

    def record(self, token: _Token) -> Any:
        if token.value not in ("Fun", "LocalTerm"):
            self.fail(f"records (#{token.value}{{...}}) are not terms; write the tuple", token)
        self.expect("{", f"'{{' after #{token.value}")
        fields = self.items("}")
        if token.value == "LocalTerm":
            if len(fields) != 1 or type(fields[0]) is not bytes:
                self.fail("write #LocalTerm{<<Bytes>>}", token)
        elif len(fields) not in (5, 8):
            self.fail("write #Fun{Module,OldIndex,OldUniq,Pid,{FreeVars},Arity,Uniq,Index}", token)
        try:
            if token.value == "LocalTerm":
                return LocalTerm(fields[0])
            if len(fields) == 5:  # the old FUN_EXT form
                fields += [None, None, None]
            return Fun(_as_atom(fields[0]), *fields[1:])
        except (ValueError, TypeError) as error:
            self.fail(f"bad #{token.value}{{...}}: {error}", token)

    # ---------------------------------------------------------------------------- binaries

    def binary_rest(self) -> bytes | BitString:
        bits = _Bits()
        if self.accept(">>"):
            return b""
        while True:
            self.segment(bits)
            if not self.accept(","):
                self.expect(">>", "',' or '>>'")
                return bits.result()

    def segment(self, bits: _Bits) -> None:
        start = self.peek()
        if start.kind == "int" and self.tokens[self.i + 1].kind in (",", ">>"):  # the usual byte
            self.i += 1
            bits.bits(start.value & 0xFF, 8)
            return
        value: Any
        if start.kind == "string":
            value = self.string(self.take())
        elif start.kind in ("int", "float", "-", "+", "<<", "(", "literal"):
            value = self.term()
        else:
            self.fail(f"a binary segment is a number, string or binary, not {self.describe(start)}")
        size: int | None = None
        if self.accept(":"):
            token = self.take()
            if token.kind == "(":
                token = self.expect("int", "a segment size")
                self.expect(")", "')'")
            elif token.kind != "int":
                self.fail(f"a segment size is an integer, not {self.describe(token)}", token)
            size = token.value
        seg_type, unit, endian = "integer", None, "big"
        if self.accept("/"):
            while True:
                token = self.take()
                name = token.value if token.kind == "atom" else None
                if name == "unit":
                    self.expect(":", "':' after unit")
                    unit_token = self.expect("int", "a unit")
                    unit = unit_token.value
                    if not 1 <= unit <= 256:
                        self.fail("a unit is 1 to 256", unit_token)
                elif name in _SEGMENT_TYPES:
                    seg_type = name
                elif name in ("big", "little", "native"):
                    endian = sys.byteorder if name == "native" else name
                elif name not in ("signed", "unsigned"):
                    self.fail(f"unknown binary type specifier {self.describe(token)}", token)
                if not self.accept("-"):
                    break
        if seg_type.startswith("utf") and (size is not None or unit is not None):
            self.fail(f"a {seg_type} segment takes no size or unit", start)
        if unit is None:
            unit = _SEGMENT_TYPES[seg_type]
        if isinstance(value, list):
            if seg_type in ("binary", "bytes", "bitstring", "bits"):
                self.fail(f"a string segment cannot be of type {seg_type}", start)
            for code in value:
                self.put(bits, code, size, unit, seg_type, endian, start)
        else:
            self.put(bits, value, size, unit, seg_type, endian, start)

    def put(self, bits: _Bits, value: Any, size: int | None, unit: int, seg_type: str,
            endian: str, at: _Token) -> None:
        if seg_type == "integer":
            if type(value) is not int:
                self.fail(f"an integer segment needs an integer, not {_kind_of(value)}", at)
            nbits = (8 if size is None else size) * unit
            value &= (1 << nbits) - 1
            if endian == "big" or nbits <= 8:
                bits.bits(value, nbits)
            else:
                whole, rest = divmod(nbits, 8)
                bits.bitstring(value.to_bytes(whole + 1, "little")[:whole], whole * 8)
                bits.bits(value >> (whole * 8), rest)
        elif seg_type == "float":
            if type(value) not in (int, float):
                self.fail(f"a float segment needs a number, not {_kind_of(value)}", at)
            nbits = (64 if size is None else size) * unit
            if nbits not in _FLOAT_FORMATS:
                self.fail(f"a float segment is 16, 32 or 64 bits, not {nbits}", at)
            try:
                packed = struct.pack(("<" if endian == "little" else ">") + _FLOAT_FORMATS[nbits],
                                     float(value))
            except (OverflowError, struct.error):
                self.fail(f"{value!r} does not fit in a {nbits}-bit float", at)
            bits.bitstring(packed, nbits)
        elif seg_type.startswith("utf"):
            if type(value) is not int or not 0 <= value <= 0x10FFFF or 0xD800 <= value <= 0xDFFF:
                self.fail(f"a {seg_type} segment needs a Unicode code point, not {value!r}", at)
            codec = seg_type[:3] + "-" + seg_type[3:]
            if seg_type != "utf8":
                codec += "-le" if endian == "little" else "-be"
            data = chr(value).encode(codec)
            bits.bitstring(data, len(data) * 8)
        else:
            if type(value) is bytes:
                data, have = value, len(value) * 8
            elif type(value) is BitString:
                data, have = value.data, value.bit_size
            else:
                self.fail(f"a {seg_type} segment needs a binary, not {_kind_of(value)}", at)
            want = have if size is None else size * unit
            if want > have:
                self.fail(f"the binary has {have} bits, fewer than the {want} asked for", at)
            if want % unit:
                self.fail(f"a {seg_type} segment of {want} bits is not a multiple of its unit {unit}", at)
            bits.bitstring(data, want)


def _kind_of(value: Any) -> str:
    if isinstance(value, float):
        return "a float"
    if isinstance(value, (bytes, BitString)):
        return "a binary"
    return type(value).__name__


def _atom_value(name: str) -> Any:
    """The exact mapping's value of an atom: ``true``/``false``/``undefined`` are Python's."""
    if name == "true":
        return True
    if name == "false":
        return False
    if name == "undefined":
        return None
    return Atom(name)


def _as_atom(value: Any) -> Atom:
    if isinstance(value, Atom):
        return value
    if value is True or value is False or value is None:
        return Atom({True: "true", False: "false", None: "undefined"}[value])
    raise ValueError(f"expected an atom, not {value!r}")


def _strict_key(term: Any) -> Any:
    """A hashable stand-in for ``term`` that is equal only for terms Erlang's ``=:=`` calls equal
    (``1`` is not ``1.0``, ``{1}`` is not ``{1.0}``, map order does not matter)."""
    t = type(term)
    if t is int or t is Atom:
        return (t.__name__, term)
    if t is float:
        return ("float", term, math.copysign(1.0, term))
    if term is True or term is False or term is None:
        return ("Atom", {True: "true", False: "false", None: "undefined"}[term])
    if t is tuple:
        return ("tuple", tuple(map(_strict_key, term)))
    if t is list:
        return ("list", tuple(map(_strict_key, term)))
    if t is ImproperList:
        return ("list", tuple(map(_strict_key, term.items)), _strict_key(term.tail))
    if t is dict or t is Map:
        return ("map", frozenset((_strict_key(k), _strict_key(v)) for k, v in term.items()))
    if t is Fun:
        return ("fun", term.module, term.old_index, term.old_uniq, term.pid,
                _strict_key(term.free_vars), term.arity, term.uniq, term.index)
    return (t.__name__, term)  # bytes, BitString, Pid, Port, Reference, ExportFun, LocalTerm


def _make_map(pairs: list[tuple[Any, Any]]) -> Any:
    """A ``dict`` when one can hold the pairs, else ``Map``, as the decoder chooses."""
    try:
        result = dict(pairs)
    except TypeError:
        return Map(pairs)
    if len(result) != len(pairs):  # keys Python merges (1 and 1.0, 1 and true) stay apart
        return Map(pairs)
    return result


def parse_term(text: str, *, mapping: Mapping | None = None) -> Any:
    """Read one Erlang term written in Erlang syntax (a trailing ``.`` and comments allowed).

    The value is what ``binary_to_term`` gives for the same term under ``mapping`` (default:
    exact), so ``parse_term('"abc"')`` is ``[97, 98, 99]`` and, with ``Mapping.CHARLIST``,
    ``"abc"``. Raises ``TermSyntaxError`` with the line and column of the problem.
    """
    if not isinstance(text, str):
        raise UsageError(f"parse_term reads a str, not {type(text).__name__}")
    value = _Parser(text).document()
    if mapping is None or mapping == Mapping.EXACT:
        return value
    return binary_to_term(term_to_binary(value), mapping=mapping)


# --------------------------------------------------------------------------------------------
# Printer
# --------------------------------------------------------------------------------------------


def _format_float(value: float) -> str:
    """Erlang's shortest round-tripping form: the fewest digits, then whichever of plain and
    exponent notation is shorter (plain on a tie), but never plain at or beyond 2**53."""
    if not math.isfinite(value):
        raise EncodeError("Erlang has no NaN or infinite floats", value)
    if value == 0.0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    sign = "-" if value < 0 else ""
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    # point: where the decimal point goes in `digits` (value = 0.DIGITS * 10**point)
    point = len(whole) + int(exponent or 0) - (len(whole + fraction) - len(digits))
    digits = digits.rstrip("0")
    n = len(digits)
    if 0 < point < n:
        return f"{sign}{digits[:point]}.{digits[point:]}"
    exp_text = str(point - 1)
    scientific = f"{sign}{digits[0]}.{digits[1:] or '0'}e{exp_text}"
    exp_cost = len(exp_text) + 1 + (2 if n == 1 else 1)
    if point <= 0:
        if 2 - point <= exp_cost:
            return f"{sign}0.{'0' * -point}{digits}"
        return scientific
    if point - n + 2 <= exp_cost and abs(value) < 2.0**53:
        return f"{sign}{digits}{'0' * (point - n)}.0"
    return scientific


def _quote(chars: str, quote: str) -> str:
    """Escape ``chars`` for a quoted atom (``'``) or string (``"``) as ``io_lib`` does."""
    out = [quote]
    for c in chars:
        code = ord(c)
        if c == quote or c == "\\":
            out.append("\\" + c)
        elif code in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[code])
        elif code == 127:
            out.append("\\d")
        elif code < 32 or 128 <= code < 160:
            out.append(f"\\{code:03o}")
        elif 0xD800 <= code <= 0xDFFF or code in (0xFFFE, 0xFFFF):
            out.append(f"\\x{{{code:X}}}")
        else:
            out.append(c)
    out.append(quote)
    return "".join(out)


def _format_atom(name: str) -> str:
    if _BARE_ATOM.fullmatch(name) and name not in _RESERVED:
        return name
    return _quote(name, "'")


def _format_node(node: Atom, creation: int) -> str:
    return _format_atom(node) + (f"/{creation}" if creation else "")


def _format_binary(data: bytes, unicode: bool) -> str:
    """As OTP 27+ does: read UTF-8 characters while they are printable; a character that is not
    means numbers, bytes that are not UTF-8 mean a second try as Latin-1 text."""
    if not data:
        return "<<>>"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        valid = data[:error.start].decode("utf-8")
        if all(_printable(ord(c), unicode) for c in valid) and all(
                _printable(b, False) for b in data):
            return "<<" + _quote(data.decode("latin-1"), '"') + ">>"
    else:
        if all(_printable(ord(c), unicode) for c in text):
            return "<<" + _quote(text, '"') + ("/utf8>>" if len(text) != len(data) else ">>")
    return "<<" + ",".join(map(str, data)) + ">>"


class _Printer:
    def __init__(self, unicode: bool) -> None:
        self.unicode = unicode
        self.out: list[str] = []
        self.dispatch: dict[type, Callable[[Any], None]] = {
            int: self.int_, bool: self.bool_, type(None): self.none_, float: self.float_,
            Atom: self.atom_, bytes: self.bytes_, BitString: self.bitstring_, tuple: self.tuple_,
            list: self.list_, ImproperList: self.improper_, dict: self.map_, Map: self.map_,
            Pid: self.pid_, Port: self.port_, Reference: self.ref_, ExportFun: self.export_fun_,
            Fun: self.fun_, LocalTerm: self.local_,
        }

    def term(self, value: Any) -> None:
        handler = self.dispatch.get(type(value))
        if handler is None:
            handler = self.subclass(value)
        handler(value)

    def subclass(self, value: Any) -> Callable[[Any], None]:
        """Subclasses print as their base, as the codec encodes them; ``str`` is refused alike."""
        for base in (Atom, int, float, bytes, tuple, list, dict):
            if isinstance(value, base):
                convert: Callable[[Any], Any] = base
                return lambda v: self.term(convert(v))
        if isinstance(value, str):
            raise EncodeError("a Python str has two Erlang forms (binary or list of characters): "
                              "pass bytes, or format with a mapping that says (str_as=...)", value)
        raise EncodeError(f"{type(value).__name__} has no Erlang form", value)

    def int_(self, value: int) -> None:
        self.out.append(_int_to_str(value))

    def bool_(self, value: bool) -> None:
        self.out.append("true" if value else "false")

    def none_(self, value: None) -> None:
        self.out.append("undefined")

    def float_(self, value: float) -> None:
        self.out.append(_format_float(value))

    def atom_(self, value: Atom) -> None:
        self.out.append(_format_atom(value))

    def bytes_(self, value: bytes) -> None:
        self.out.append(_format_binary(value, self.unicode))

    def bitstring_(self, value: BitString) -> None:
        data = value.data
        parts = [str(b) for b in data[:-1]]
        parts.append(f"{data[-1] >> (8 - value.tail_bits)}:{value.tail_bits}")
        self.out.append("<<" + ",".join(parts) + ">>")

    def sequence(self, items: Any) -> None:
        first = True
        for item in items:
            if not first:
                self.out.append(",")
            first = False
            self.term(item)

    def tuple_(self, value: tuple[Any, ...]) -> None:
        self.out.append("{")
        self.sequence(value)
        self.out.append("}")

    def list_(self, value: list[Any]) -> None:
        unicode = self.unicode
        if value and all(isinstance(c, int) and c is not True and c is not False
                         and _printable(c, unicode) for c in value):
            self.out.append(_quote("".join(map(chr, value)), '"'))
            return
        self.out.append("[")
        self.sequence(value)
        self.out.append("]")

    def improper_(self, value: ImproperList) -> None:
        self.out.append("[")
        self.sequence(value.items)
        self.out.append("|")
        self.term(value.tail)
        self.out.append("]")

    def map_(self, value: dict[Any, Any] | Map) -> None:
        self.out.append("#{")
        first = True
        for key, item in value.items():
            if not first:
                self.out.append(",")
            first = False
            self.term(key)
            self.out.append(" => ")
            self.term(item)
        self.out.append("}")

    def pid_(self, value: Pid) -> None:
        self.out.append(f"<{_format_node(value.node, value.creation)}.{value.id}.{value.serial}>")

    def port_(self, value: Port) -> None:
        self.out.append(f"#Port<{_format_node(value.node, value.creation)}.{value.id}>")

    def ref_(self, value: Reference) -> None:
        words = ".".join(str(w) for w in reversed(value.ids))
        self.out.append(f"#Ref<{_format_node(value.node, value.creation)}.{words}>")

    def export_fun_(self, value: ExportFun) -> None:
        self.out.append(f"fun {_format_atom(value.module)}:{_format_atom(value.function)}/{value.arity}")

    def fun_(self, value: Fun) -> None:
        self.out.append("#Fun")
        fields: tuple[Any, ...] = (value.module, value.old_index, value.old_uniq, value.pid,
                                   value.free_vars)
        if value.arity is not None:
            fields += (value.arity, value.uniq, value.index)
        self.tuple_(fields)

    def local_(self, value: LocalTerm) -> None:
        self.out.append("#LocalTerm{")
        self.bytes_(value.raw)
        self.out.append("}")


def format_term(value: Any, *, mapping: Mapping | None = None,
                printable_range: Literal["latin1", "unicode"] = "latin1") -> str:
    """Print ``value`` in Erlang syntax on one line, as the Erlang shell prints the same term.

    ``mapping`` says which Erlang term a Python value stands for (as for ``term_to_binary``):
    with ``Mapping.TEXT`` a ``str`` prints as ``<<"...">>``, with ``Mapping.CHARLIST`` as
    ``"..."``. Lists of integers print as strings when every one is a printable character of
    ``printable_range`` (Erlang's ``+pc`` flag), so ``[104, 105]`` prints ``"hi"``, as in Erlang.
    Raises ``EncodeError`` for a value that has no Erlang form.
    """
    if printable_range not in ("latin1", "unicode"):
        raise UsageError(f"printable_range must be 'latin1' or 'unicode', not {printable_range!r}")
    if mapping is not None and mapping != Mapping.EXACT:
        value = binary_to_term(term_to_binary(value, mapping=mapping))
    printer = _Printer(printable_range == "unicode")
    printer.term(value)
    return "".join(printer.out)
