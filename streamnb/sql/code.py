"""Values built together with the Python code that builds them.

The translator never writes code it does not run: every step is a :class:`Py`, a value and
its code made by the same call (``Py.call("alias", "bids")`` calls ``.alias("bids")`` and
writes ``.alias("bids")``), so ``sn.sql(...).explain()`` is exactly the fluent query that runs.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import polars as pl

from streamnb.definitions import windows
from streamnb.definitions.code import render

__all__ = ["PL", "SN", "Py", "lit"]

_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "%": operator.mod,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "&": operator.and_,
    "|": operator.or_,
}


class Py:
    """``value`` and ``code``, the Python expression that evaluates to it."""

    __slots__ = ("code", "grouped", "value")

    def __init__(self, value: Any, code: str, *, grouped: bool = False) -> None:
        self.value, self.code = value, code
        self.grouped = grouped  # code is "(a op b)": as an argument, the parentheses can go

    @property
    def argument(self) -> str:
        return self.code[1:-1] if self.grouped else self.code

    def call(self, method: str, *args: Any, **kwargs: Any) -> Py:
        """``value.method(*args, **kwargs)``; arguments are ``Py`` or plain Python values."""
        value = getattr(self.value, method)(*map(_value, args), **_values(kwargs))
        code = [_code(a) for a in args] + [f"{k}={_code(v)}" for k, v in kwargs.items()]
        return Py(value, f"{self.code}.{method}({', '.join(code)})")

    def attr(self, name: str) -> Py:
        return Py(getattr(self.value, name), f"{self.code}.{name}")

    def op(self, symbol: str, other: Py) -> Py:
        """``self <symbol> other``, e.g. ``op("*", lit(2))``."""
        value = _OPERATORS[symbol](self.value, other.value)
        return Py(value, f"({self.code} {symbol} {other.code})", grouped=True)

    def invert(self) -> Py:
        return Py(~self.value, f"~{self.code}")

    def negate(self) -> Py:
        return Py(-self.value, f"-{self.code}")

    def __repr__(self) -> str:
        return self.code


def lit(value: Any) -> Py:
    """A Python literal (a number, string or bool) as itself."""
    return Py(value, render(value))


def _value(arg: Any) -> Any:
    if isinstance(arg, Py):
        return arg.value
    if isinstance(arg, list):
        return [_value(a) for a in arg]
    if isinstance(arg, dict):
        return _values(arg)
    return arg


def _values(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: _value(v) for k, v in kwargs.items()}


def _code(arg: Any) -> str:
    if isinstance(arg, Py):
        return arg.argument
    if isinstance(arg, list):
        return "[" + ", ".join(_code(a) for a in arg) + "]"
    if isinstance(arg, dict):
        return "{" + ", ".join(f"{render(k)}: {_code(v)}" for k, v in arg.items()) + "}"
    return render(arg)


PL = Py(pl, "pl")
"""``pl``: ``PL.call("col", "price")`` is ``pl.col("price")``."""
SN = Py(windows, "sn")
"""``sn`` for the window definitions: ``SN.call("Tumbling", "10s")``."""
