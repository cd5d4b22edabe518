"""Every error a user can see belongs to streamnb's exception tree and names what failed."""

from __future__ import annotations

import ast
import builtins
import inspect
from pathlib import Path

import altair as alt
import polars as pl
import pytest

import streamnb as sn
from streamnb import exceptions
from streamnb.engine.core import Context
from streamnb.engine.executor import Pipeline, Runner
from streamnb.engine.source import Source
from streamnb.plan import SourceNode, source_nodes
from streamnb.ui.notebook._throttle import Throttle
from streamnb.worker.topology import RepartitionSink, split

PACKAGE = Path(sn.__file__).parent

# Raises of built-in exceptions that never reach a user, each with the reason.
INTERNAL = {
    ("io/codecs/json.py", "ValueError"): "caught a few lines below: the batch is split and retried",
    ("worker/changelog.py", "AssertionError"): "an invariant: a new instance directory is unlocked",
}


def _classes() -> list[type[BaseException]]:
    return [
        value
        for value in vars(exceptions).values()
        if inspect.isclass(value) and issubclass(value, BaseException)
    ]


def test_every_exception_is_a_streamnb_error_and_drawn_in_the_tree() -> None:
    tree = exceptions.__doc__ or ""
    for cls in _classes():
        assert issubclass(cls, exceptions.StreamnbError), cls
        assert cls.__name__ in tree, f"{cls.__name__} is missing from the tree in the docstring"
        assert cls.__name__ in exceptions.__all__


def test_no_module_raises_a_builtin_exception_at_users() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            call = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            name = call.id if isinstance(call, ast.Name) else ""
            builtin = getattr(builtins, name, None)
            if inspect.isclass(builtin) and issubclass(builtin, Exception):
                where = (str(path.relative_to(PACKAGE)), name)
                if where not in INTERNAL and name not in ("NotImplementedError", "TimeoutError"):
                    found.append(f"{where[0]}:{node.lineno} raises {name}")
    assert not found, "raise a streamnb error instead:\n" + "\n".join(found)


def test_map_batches_returning_no_dataframe_names_map_batches() -> None:
    stream = sn.from_records([{"a": 1}]).map_batches(lambda df: df.height)  # type: ignore[arg-type, return-value]
    with pytest.raises(sn.ConfigError, match=r"map_batches\(fn\): fn returned int"):
        stream.collect()
    query = stream.start("bad-map-batches")
    with pytest.raises(sn.QueryFailed) as failed:
        query.wait(timeout=30)
    assert isinstance(failed.value.__cause__, sn.ConfigError)


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_rows", 0), ("max_updates_per_second", 0), ("renderer", "webgl")],
)
def test_bad_chart_options_name_the_option(option: str, value: object) -> None:
    chart = alt.Chart().mark_point().encode(x="price:Q")
    with pytest.raises(sn.ConfigError, match=option):
        sn.nexmark(events=10).chart(chart, name="never", **{option: value})
    assert "never" not in {q.name for q in sn.queries()}


def test_a_throttle_needs_a_positive_rate() -> None:
    with pytest.raises(sn.ConfigError, match="max_updates_per_second=0"):
        Throttle("table", lambda: 0, lambda: None, lambda: True, max_per_second=0)


def test_repartitioning_outside_the_worker_says_how_to_run_it() -> None:
    sink = RepartitionSink("rep", 2, ("k",), None)
    with pytest.raises(sn.ConfigError, match="streamnb run"):
        sink.open(Context())


def test_the_repartitioned_half_cannot_be_read_on_its_own() -> None:
    stream = sn.from_records([{"k": 1, "t": 0}], timestamp="t")
    windowed = stream.window(sn.Tumbling("1s"), by="k").agg(pl.len())
    cut = split(windowed.plan.root, "rep", 2)
    assert cut is not None
    (placeholder,) = source_nodes(cut.stages[0].root)
    runner = Runner(Pipeline(cut.stages[0].root, Context(), lambda d: None), Context())
    with pytest.raises(sn.SourceError, match="cannot be opened"):
        runner.open()
    assert isinstance(placeholder.source, Source)


def test_a_plan_node_the_engine_cannot_run_is_named() -> None:
    stream = sn.from_records([{"a": 1}])
    bogus = SourceNode((), object())  # type: ignore[arg-type]
    with pytest.raises(sn.ConfigError, match="is not a source"):
        sn.Stream(stream.plan.then(bogus)).collect()


def test_a_record_kafka_refuses_is_a_sink_error_naming_the_topic() -> None:
    from confluent_kafka import Producer

    from streamnb.io.kafka.client import produce

    producer = Producer({"bootstrap.servers": "127.0.0.1:9", "message.max.bytes": 1_000})
    with pytest.raises(sn.exceptions.SinkError, match="cannot write to out-topic"):
        produce(producer, "out-topic", b"x" * 10_000)
