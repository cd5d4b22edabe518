"""The Python code of a query, as ``Stream.explain()`` shows it.

Every ``Stream`` method records the call that made it; :func:`call_code` writes one call and
:func:`render` one argument. Polars expressions have no Python form of their own, so a fluent
query shows them as polars prints them, tidied (``pl.col("a").sum()``); queries translated
from SQL carry the exact code of their expressions instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import polars as pl

from streamnb.definitions.windows import Hopping, Session, Tumbling

__all__ = ["Code", "call_code", "duration_text", "render"]


class Code(str):
    """Python source text that shows as itself (no quotes) in a notebook or a REPL."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))


_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000))


def duration_text(ms: int) -> str:
    """``10000`` → ``"10s"``: the largest unit that divides ``ms`` (durations.py parses it)."""
    for unit, size in _UNITS:
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def render(value: Any) -> str:
    """The Python code of one argument of a ``Stream`` method."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, pl.Expr):
        return _expr_text(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{render(k)}: {render(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Tumbling):
        return f"sn.Tumbling({render(duration_text(value.size_ms))})"
    if isinstance(value, Hopping):
        size, every = duration_text(value.size_ms), duration_text(value.every_ms)
        return f"sn.Hopping({render(size)}, {render(every)})"
    if isinstance(value, Session):
        return f"sn.Session({render(duration_text(value.gap_ms))})"
    if isinstance(value, timedelta):
        return render(duration_text(value // timedelta(milliseconds=1)))
    if hasattr(value, "explain"):  # a Stream: the code that made it
        return str(value.explain())
    if value is ...:  # data that has no code (from_records' records)
        return "..."
    if callable(value):  # map_batches(fn)
        return getattr(value, "__name__", "fn")
    return repr(value)


def call_code(target: str, method: str, *args: Any, **kwargs: Any) -> str:
    """``target.method(args, key=value)`` with every argument rendered."""
    parts = [render(a) for a in args] + [f"{k}={render(v)}" for k, v in kwargs.items()]
    return f"{target}.{method}({', '.join(parts)})"


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_FUNCTION = re.compile(r"(?<![\w.])(col|len|lit|all|first|last|struct|when|int_range)\(")
_DYN = re.compile(r"dyn \w+: ")


def _expr_text(expr: pl.Expr) -> str:
    """Polars' print of ``expr`` with its top-level functions written ``pl.f(...)``."""
    text = str(expr)
    parts, last = [], 0
    for match in _STRING.finditer(text):  # leave string literals alone
        parts.append(_tidy(text[last : match.start()]))
        parts.append(match.group())
        last = match.end()
    parts.append(_tidy(text[last:]))
    return "".join(parts)


def _tidy(text: str) -> str:
    return _FUNCTION.sub(r"pl.\1(", _DYN.sub("", text))
