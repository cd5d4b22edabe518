"""Parsing Flink's streaming SQL with sqlglot, and pointing at a place in the text.

sqlglot has no Flink dialect. Its default dialect reads almost all of what we need; two
things are added here, in a dialect of our own rather than by rewriting the text:

* back-quoted identifiers (`` `dateTime` ``), as Flink quotes its names;
* the table argument of the windowing table functions: ``TUMBLE(TABLE bid, ...)`` and
  ``SESSION(TABLE bid PARTITION BY bidder, ...)`` (several keys: ``PARTITION BY (a, b)``).
  sqlglot reads ``TABLE bid`` as no expression at all, so ``TUMBLE``, ``HOP``, ``SESSION``
  and ``CUMULATE`` get a function parser that reads it into a :class:`TableArgument` and the
  other arguments as usual.
"""

from __future__ import annotations

from typing import ClassVar

import sqlglot
from sqlglot import exp, parser, tokens
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

from streamnb.exceptions import ConfigError

__all__ = ["WINDOW_FUNCTIONS", "TableArgument", "parse", "position"]

WINDOW_FUNCTIONS = ("TUMBLE", "HOP", "SESSION", "CUMULATE")


class TableArgument(exp.Expression):
    """``TABLE name [PARTITION BY column, ...]``: the input of a windowing table function."""

    arg_types: ClassVar[dict[str, bool]] = {"this": True, "partition": False}


def _parse_window_function(self: parser.Parser, name: str) -> exp.Expr:
    """The arguments of ``name(...)``, the first of which may be ``TABLE t [PARTITION BY k]``."""
    args: list[exp.Expr] = []
    if self._match(TokenType.TABLE):
        table = self._parse_table_parts()
        partition: list[exp.Expr] = []
        if self._match(TokenType.PARTITION_BY) or self._match_text_seq("PARTITION", "BY"):
            if self._match(TokenType.L_PAREN):  # PARTITION BY (a, b)
                partition = [c for c in self._parse_csv(self._parse_column) if c is not None]
                self._match_r_paren()
            elif (column := self._parse_column()) is not None:  # PARTITION BY a
                partition = [column]
        args.append(TableArgument(this=table, partition=partition))
        if not self._match(TokenType.COMMA):
            return exp.Anonymous(this=name, expressions=args)
    args.extend(a for a in self._parse_csv(self._parse_lambda) if a is not None)
    return exp.Anonymous(this=name, expressions=args)


class FlinkStreaming(Dialect):
    """sqlglot's default dialect with Flink's quoting and windowing table functions."""

    class Tokenizer(tokens.Tokenizer):
        IDENTIFIERS: ClassVar[list[str | tuple[str, str]]] = ['"', "`"]

    class Parser(parser.Parser):
        FUNC_TOKENS: ClassVar = {*parser.Parser.FUNC_TOKENS, TokenType.SESSION}  # SESSION(...)
        FUNCTION_PARSERS: ClassVar = {
            **parser.Parser.FUNCTION_PARSERS,
            **{
                name: (lambda self, name=name: _parse_window_function(self, name))
                for name in WINDOW_FUNCTIONS
            },
        }


def parse(text: str) -> exp.Expr:
    """The syntax tree of one SQL statement; a syntax error is a ConfigError with its place."""
    try:
        statements = sqlglot.parse(text, read=FlinkStreaming)
    except ParseError as exc:
        first = exc.errors[0] if exc.errors else {}
        where = f"line {first.get('line', '?')}, column {first.get('col', '?')}"
        reason = first.get("description") or str(exc).splitlines()[0]
        raise ConfigError(f"SQL syntax error at {where}: {reason}") from None
    except TokenError as exc:
        raise ConfigError(f"SQL syntax error: {exc}") from None
    found = [s for s in statements if s is not None]
    if len(found) != 1:
        raise ConfigError(f"sn.sql() takes one SQL statement, got {len(found)}")
    return found[0]


def position(text: str, node: exp.Expr, keyword: str | None = None) -> str:
    """Where ``node`` (or the ``keyword`` that introduces it) is in ``text``: "line L, column C".

    sqlglot keeps the offsets of identifiers, literals and some functions; a construct's place
    is that of the first such token in it, or of its ``keyword``: the nearest one before that
    token (``ORDER BY`` x), else the first after it (f(...) ``OVER`` ...).
    """
    starts = [
        n.meta["start"] for n in node.walk() if isinstance(n.meta, dict) and "start" in n.meta
    ]
    offset = min(starts) if starts else None
    if keyword is not None:
        found = _keyword(text, keyword, offset)
        offset = found if found is not None else offset
    if offset is None:
        return "an unknown place"
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, column {column}"


def _keyword(text: str, keyword: str, near: int | None) -> int | None:
    """The offset of the ``keyword`` token(s) nearest before ``near``, else first after it."""
    words = keyword.upper().split()
    toks = FlinkStreaming().tokenize(text)
    offsets = [  # "ORDER BY" may be one token or two
        token.start
        for i, token in enumerate(toks)
        if token.text.upper().split() == words
        or [t.text.upper() for t in toks[i : i + len(words)]] == words
    ]
    if near is None:
        return offsets[0] if offsets else None
    before = [o for o in offsets if o <= near]
    after = [o for o in offsets if o > near]
    return before[-1] if before else (after[0] if after else None)
