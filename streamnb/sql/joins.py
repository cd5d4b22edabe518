"""``JOIN ... ON`` → ``stream.join(...)``: stream–table, interval and window joins.

The ON clause (and, for an inner join, the WHERE clause) is split into its conjuncts:

* ``a.x = b.y`` between the two sides: a join key. ``join(on=...)`` needs one name on both
  sides, so one side's column is renamed to the other's (the right one's, when it is free);
* ``a.t BETWEEN b.t - INTERVAL x AND b.t + INTERVAL y``: an interval join. streamnb's
  interval is symmetric, ``|a.t - b.t| <= within``; unequal bounds become one by moving
  ``b.t`` to the middle of the interval: ``|a.t - (b.t + (y - x) / 2)| <= (x + y) / 2``, a
  column ``<b.t>_shifted`` that is ``b``'s event time in the join, with ``grace=`` the shift
  (the inputs are merged in their sources' time order, which the shifted time is not);
* anything else: a filter after an inner join (refused in a LEFT JOIN's ON).

Which join it is follows from the inputs, as in the fluent API: a table on the right is a
stream–table join (LEFT allowed), an interval condition an interval join, and two window
results joined on ``window_start``, ``window_end`` and their keys a window join.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlglot import exp

from streamnb.definitions.code import duration_text
from streamnb.exceptions import ConfigError
from streamnb.sql.code import PL, Py
from streamnb.sql.expressions import conjuncts, interval_ms
from streamnb.sql.relations import Relation

if TYPE_CHECKING:  # the translator calls join(); join() calls back into it
    from streamnb.sql.translate import Translator

__all__ = ["join"]

_BOUNDS = ("window_start", "window_end")


@dataclass(frozen=True)
class _Interval:
    """``this BETWEEN other - low_ms AND other + high_ms``; columns physical, by side."""

    this: str
    this_side: str  # "left" or "right"
    other: str
    low_ms: int
    high_ms: int
    condition: exp.Between


class _Conditions:
    """The ON / WHERE conjuncts of one join, sorted by what they do."""

    def __init__(self) -> None:
        self.keys: list[tuple[str, str]] = []  # (left column, right column), physical
        self.interval: _Interval | None = None
        self.rest: list[exp.Expr] = []


def join(
    tr: Translator, left: Relation, node: exp.Join, where: list[exp.Expr]
) -> tuple[Relation, list[exp.Expr]]:
    """``left JOIN node`` and the WHERE conjuncts it leaves for after the join."""
    side, kind = (node.side or "").upper(), (node.kind or "").upper()
    if node.args.get("using"):
        raise tr.fail(node, "JOIN ... USING", "write ON a.k = b.k", keyword="USING")
    if kind in ("CROSS", "SEMI", "ANTI") or node.args.get("on") is None:
        raise tr.fail(
            node.this,
            f"{kind or 'a'} JOIN without ON" if kind != "CROSS" else "CROSS JOIN",
            "join ON key equality",
            keyword="JOIN",
        )
    if side in ("RIGHT", "FULL"):
        raise tr.fail(
            node.this,
            f"{side} OUTER JOIN",
            "streamnb joins inner, or LEFT to a table",
            keyword=side,
        )
    how = "left" if side == "LEFT" else "inner"
    right = tr.per_record_window(tr.from_item(node.this))
    if set(left.tables) & set(right.tables):
        raise tr.fail(
            node.this,
            f"table name {sorted(set(left.tables) & set(right.tables))[0]!r} used twice",
            "give one of them an alias",
        )
    conditions = _Conditions()
    for condition in conjuncts(node.args["on"]):
        _classify(tr, left, right, condition, conditions, keep=True)
    remaining = []
    for condition in where:
        if how == "left" or not _classify(tr, left, right, condition, conditions, keep=False):
            remaining.append(condition)
    if how == "left" and conditions.rest:
        raise tr.fail(
            conditions.rest[0],
            "a LEFT JOIN condition other than key equality",
            "filter the table before joining",
        )
    joined = _join(tr, left, right, node, how=how, found=conditions)
    if conditions.rest:
        joined = tr.filtered(joined, conditions.rest)
    return joined, remaining


def _owner(left: Relation, right: Relation, column: exp.Column) -> str | None:
    """``"left"`` or ``"right"``: the side whose tables have ``column``; None if both or none."""
    name, qualifier = column.name, column.table
    sides = [
        side
        for side, relation in (("left", left), ("right", right))
        if any((not qualifier or a == qualifier) and name in c for a, c in relation.tables.items())
    ]
    return sides[0] if len(sides) == 1 else None


def _classify(
    tr: Translator,
    left: Relation,
    right: Relation,
    condition: exp.Expr,
    found: _Conditions,
    *,
    keep: bool,
) -> bool:
    """Sort ``condition`` into ``found``; False (and not kept) for a plain filter unless
    ``keep``."""
    if isinstance(condition, exp.EQ) and all(
        isinstance(c, exp.Column) for c in (condition.this, condition.expression)
    ):
        a, b = condition.this, condition.expression
        owners = (_owner(left, right, a), _owner(left, right, b))
        if owners in (("left", "right"), ("right", "left")):
            lcol, rcol = (a, b) if owners[0] == "left" else (b, a)
            found.keys.append((left.lookup(tr.text, lcol), right.lookup(tr.text, rcol)))
            return True
    if isinstance(condition, exp.Between) and isinstance(condition.this, exp.Column):
        interval = _interval(tr, left, right, condition)
        if interval is not None:
            if found.interval is not None:
                raise tr.fail(condition, "a second interval condition in one join")
            found.interval = interval
            return True
    if keep:
        found.rest.append(condition)
    return False


def _interval(
    tr: Translator, left: Relation, right: Relation, condition: exp.Between
) -> _Interval | None:
    """``x.t BETWEEN y.t - INTERVAL a AND y.t + INTERVAL b`` across the two sides."""
    this = condition.this
    low, high = condition.args["low"], condition.args["high"]

    def shifted(bound: exp.Expr, op: type[exp.Expr]) -> tuple[exp.Column, int] | None:
        if isinstance(bound, exp.Column):
            return bound, 0
        if isinstance(bound, op) and isinstance(bound.this, exp.Column):
            return bound.this, interval_ms(tr.text, bound.expression)
        return None

    lo, hi = shifted(low, exp.Sub), shifted(high, exp.Add)
    if lo is None or hi is None or lo[0].sql() != hi[0].sql():
        return None
    owners = (_owner(left, right, this), _owner(left, right, lo[0]))
    if owners not in (("left", "right"), ("right", "left")):
        return None
    if (hi[1] - lo[1]) % 2:
        raise tr.fail(
            condition,
            "interval bounds that differ by an odd number of milliseconds",
            "streamnb's interval joins are symmetric around the middle of the interval",
        )
    this_side, other_side = (left, right) if owners[0] == "left" else (right, left)
    return _Interval(
        this_side.lookup(tr.text, this),
        owners[0],
        other_side.lookup(tr.text, lo[0]),
        lo[1],
        hi[1],
        condition,
    )


def _join(
    tr: Translator,
    left: Relation,
    right: Relation,
    node: exp.Join,
    *,
    how: str,
    found: _Conditions,
) -> Relation:
    lstream, rstream = left.stream, right.stream
    if lstream.value.keys is not None:
        raise tr.fail(
            node,
            "a table on the left of a JOIN",
            "put the stream on the left: stream JOIN table",
            keyword="JOIN",
        )
    table = rstream.value.keys is not None
    windowed = lstream.value.plan.windowed is not None and rstream.value.plan.windowed is not None
    pairs = list(found.keys)
    if found.interval is None and not table and windowed:
        for bound in _BOUNDS:
            if (bound, bound) not in pairs:
                raise tr.fail(
                    node.this,
                    f"a window join without {bound} equality",
                    "join two window results ON window_start, window_end and their keys",
                )
            pairs.remove((bound, bound))
    elif found.interval is None and not table:
        raise tr.fail(
            node.this,
            "a JOIN of two streams without an interval condition",
            "add a.t BETWEEN b.t - INTERVAL ... AND b.t + INTERVAL ..., join a "
            "table, or join two window results",
            keyword="JOIN",
        )
    if how == "left" and not table:
        raise tr.fail(node.this, "LEFT JOIN of two streams", "LEFT JOIN a table", keyword="LEFT")
    lcols, rcols = set(left.columns()), set(right.columns())
    lrename: dict[str, str] = {}
    rrename: dict[str, str] = {}
    for lname, rname in pairs:
        if lname == rname:
            continue
        if lname not in rcols:
            rrename[rname] = lname
        elif rname not in lcols:
            lrename[lname] = rname
        else:
            raise ConfigError(
                f"cannot join {lname!r} = {rname!r}: both names are taken on both sides; "
                "rename one in a subquery"
            )
    if lrename:
        lstream = lstream.call("rename", lrename)
    if rrename:
        rstream = rstream.call("rename", rrename)
    on = [lrename.get(lname, lname) for lname, _ in pairs]
    options: dict[str, object] = {"on": on[0] if len(on) == 1 else on}
    if how == "left":
        options["how"] = "left"
    interval = found.interval
    if interval is not None:
        if left.late_ms is None or right.late_ms is None:
            raise tr.fail(interval.condition, "an interval join of a SESSION window result")
        this_left = interval.this_side == "left"
        ltime, rtime = (interval.this, interval.other)[:: 1 if this_left else -1]
        ltime, rtime = lrename.get(ltime, ltime), rrename.get(rtime, rtime)
        shift_ms = (interval.high_ms - interval.low_ms) // 2
        if shift_ms and this_left:
            rstream, rtime = _shifted(rstream, rtime, shift_ms)
        elif shift_ms:
            lstream, ltime = _shifted(lstream, ltime, shift_ms)
        if lstream.value.event_time != ltime:
            lstream = lstream.call("with_watermark", ltime)
        if rstream.value.event_time != rtime:
            rstream = rstream.call("with_watermark", rtime)
        # inputs are merged in their sources' time order, which a shifted time runs ahead of
        # (or behind) by the shift: the join waits that much longer for partners
        late = max(left.late_ms, right.late_ms) + abs(shift_ms)
        options["within"] = duration_text((interval.low_ms + interval.high_ms) // 2)
        if late:
            options["grace"] = duration_text(late)
    joined = lstream.call("join", rstream, **options)
    keys = set(on) | (set(_BOUNDS) if windowed and found.interval is None and not table else set())
    left_after = {lrename.get(c, c) for c in lcols}
    tables = {a: {n: lrename.get(p, p) for n, p in c.items()} for a, c in left.tables.items()}
    for alias, columns in right.tables.items():
        mapped = {}
        for name, column in columns.items():
            physical = rrename.get(column, column)
            clash = physical in left_after and physical not in keys
            mapped[name] = f"{physical}_right" if clash else physical
        tables[alias] = mapped
    return Relation(joined, tables, late_ms=left.late_ms)


def _shifted(stream: Py, column: str, shift_ms: int) -> tuple[Py, str]:
    """``stream`` with ``<column>_shifted = column + shift`` (either sign), and that name."""
    name = f"{column}_shifted"
    op = "+" if shift_ms > 0 else "-"
    moved = PL.call("col", column).op(op, PL.call("duration", milliseconds=abs(shift_ms)))
    return stream.call("with_columns", **{name: moved}), name
