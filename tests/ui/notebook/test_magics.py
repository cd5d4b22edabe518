"""``%%stream`` and ``%stream`` (docs/semantics.md §6) in a real IPython shell.

Every subcommand, every UsageError path, replacing a running query, ``%config`` defaults,
``--chart`` / ``--to-kafka``, promotion to a job file, and unloading without leftovers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from polars.testing import assert_frame_equal

import streamnb as sn
from streamnb.capture import capturing
from streamnb.io.kafka import client as kafka_client
from streamnb.io.sinks.kafka import KafkaSink
from streamnb.stream import Stream
from streamnb.ui.notebook.magics import StreamMagics
from streamnb.ui.notebook.widgets import StaticView
from tests.io.kafka import broker as kafka
from tests.threads import streamnb_threads, wait_until

Run = Callable[[str], Any]
PACED = "sn.nexmark(rate=2000)"  # unbounded, slow: runs until stopped
BOUNDED = 'sn.nexmark(events=20_000).window(sn.Tumbling("1s")).agg(pl.len().alias("bids"))'


def magics(shell: InteractiveShell) -> StreamMagics:
    found = shell.magics_manager.registry["StreamMagics"]
    assert isinstance(found, StreamMagics)
    return found


# -- %%stream --------------------------------------------------------------------------------


def test_cell_starts_the_query_and_returns_it_at_once(run: Run) -> None:
    q = run(f"%%stream paced\nsource = {PACED}\nsource.filter(pl.col('price') > 0)")
    assert isinstance(q, sn.Query)
    assert q.name == "paced" and q.status()["state"] == "running"
    assert isinstance(run("source"), Stream)  # the cell ran in the user namespace
    assert [t.name for t in streamnb_threads("streamnb:")] == ["streamnb:paced"]


def test_cell_replaces_a_running_query_of_that_name(run: Run) -> None:
    first = run(f"%%stream same\n{PACED}")
    second = run(f"%%stream same\n{PACED}")
    assert first.status()["state"] == "stopped"
    assert second.status()["state"] == "running"
    wait_until(lambda: len(streamnb_threads("streamnb:")) == 1)
    assert [t.name for t in streamnb_threads("streamnb:")] == ["streamnb:same"]
    assert [q.name for q in sn.queries()] == ["same"]


def test_cell_show_gives_a_static_view_without_a_kernel(run: Run) -> None:
    q = run(f"%%stream shown --show\n{BOUNDED}")
    assert isinstance(q.widget, StaticView)
    assert q.wait(timeout=30)
    assert q.widget.join(timeout=10)
    assert "shown: finished" in q.widget.snapshots[-1]


def test_config_sets_the_view_defaults(run: Run, shell: InteractiveShell) -> None:
    assert (magics(shell).max_rows, magics(shell).max_updates_per_second) == (20, 10.0)
    run("%config StreamMagics.max_rows = 5")
    run("%config StreamMagics.max_updates_per_second = 4")
    assert run("%config StreamMagics.max_rows") == 5
    q = run(f"%%stream configured --show\n{BOUNDED}")
    assert (q.widget.max_rows, q.widget.max_updates_per_second) == (5, 4.0)
    q.wait(timeout=30)


def test_config_rejects_a_bad_value(run: Run, shell: InteractiveShell) -> None:
    run("%config StreamMagics.max_rows = 0")  # %config reports the error itself
    assert magics(shell).max_rows == 20


def test_cell_chart_evaluates_spec_in_the_user_namespace(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[Any, str | None]] = []

    def fake_chart(self: Stream, chart: Any, name: str | None = None, **_: Any) -> sn.Query:
        seen.append((chart, name))
        return self.start(name)

    monkeypatch.setattr(Stream, "chart", fake_chart)
    q = run(f"%%stream charted --chart 'spec * 2' --show\nspec = 21\n{BOUNDED}")
    assert seen == [(42, "charted")]
    assert isinstance(q.widget, StaticView)  # --show adds the table to the chart's query
    q.wait(timeout=30)


def test_cell_chart_runs_a_live_chart_of_the_query(run: Run) -> None:
    run("import altair as alt")
    spec = "alt.Chart().mark_bar().encode(x='window_start:T', y='bids:Q')"
    q = run(f'%%stream real_chart --chart "{spec}"\n{BOUNDED}')
    assert q.name == "real_chart" and q.chart_widget is not None
    assert q.chart_widget.query is q and q.chart_widget.dataset == "data"
    assert q.chart_widget.spec["mark"]["type"] == "bar"
    assert q.wait(timeout=30)
    assert_frame_equal(q.result(), run(BOUNDED).collect(timeout=30))


def test_cell_to_kafka_attaches_the_sink(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    topics: list[str] = []

    def fake_to_kafka(self: Stream, topic: str, **_: Any) -> Stream:
        topics.append(topic)
        return self

    monkeypatch.setattr(Stream, "to_kafka", fake_to_kafka)
    q = run(f"%%stream sunk --to-kafka out-topic\n{BOUNDED}")
    assert topics == ["out-topic"] and q.name == "sunk"
    q.wait(timeout=30)


def test_cell_to_kafka_writes_the_results_to_the_topic(run: Run, bootstrap: str) -> None:
    from confluent_kafka.admin import AdminClient

    topic = kafka.create_topic(AdminClient(kafka.client_config(bootstrap)), 1)
    try:
        run(f"%stream connect {bootstrap}")
        q = run(f"%%stream to_topic --to-kafka {topic}\n{BOUNDED}")
        assert q.wait(timeout=60)
    finally:
        kafka_client._defaults.clear()
    written = kafka.consume_all(bootstrap, topic, min_count=q.result().height, timeout=30)
    rows = pl.DataFrame([json.loads(r["value"] or b"null") for r in written])
    expected = run(BOUNDED).collect(timeout=30)
    assert rows.height == expected.height > 0
    assert sorted(rows["bids"].to_list()) == sorted(expected["bids"].to_list())


def test_cell_in_capture_mode_starts_nothing(run: Run) -> None:
    with capturing() as streams:
        run(f"%%stream captured --show\n{PACED}")
    assert list(streams) == ["captured"]
    assert streamnb_threads() == []


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        (f"%%stream\n{PACED}", "required: name"),
        (f"%%stream a b\n{PACED}", "unrecognized arguments"),
        (f"%%stream a --bogus\n{PACED}", "unrecognized arguments"),
        (f"%%stream a --to-kafka\n{PACED}", "expected one argument"),
        (f"%%stream a --chart 'alt.Chart(('\n{PACED}", "not a Python expression"),
        ("%%stream a\n", "empty"),
        ("%%stream a\nx = 1", "got a statement (Assign"),
        ("%%stream a\n1 + 1", "must be a Stream, got int"),
        ("%%stream a\nsn.nexmark().window(sn.Tumbling('1s'))", "WindowedStream"),
        ("%%stream a\nsn.nexmark().group_by('auction')", "GroupedStream"),
    ],
)
def test_cell_usage_errors(shell: InteractiveShell, cell: str, message: str) -> None:
    result = shell.run_cell(cell)
    assert isinstance(result.error_in_exec, UsageError)
    assert message in str(result.error_in_exec)
    if "Stream" not in message and "empty" not in message and "statement" not in message:
        assert "usage: %%stream NAME" in str(result.error_in_exec)
    assert sn.queries() == []


# -- %stream ---------------------------------------------------------------------------------


def test_list_status_and_stop(run: Run) -> None:
    empty = run("%stream list")
    assert isinstance(empty, pl.DataFrame) and empty.height == 0
    assert {"name", "state", "records_in", "watermark", "late", "errors"} <= set(empty.columns)
    run(f"%%stream one\n{PACED}")
    run(f"%%stream two\n{PACED}")
    listed = run("%stream list")
    assert listed["name"].to_list() == ["one", "two"]
    assert set(listed["state"]) == {"running"}
    status = run("%stream status one")
    assert status["name"] == "one" and status["state"] == "running"
    run("%stream stop one")
    assert run("%stream status one")["state"] == "stopped"  # still known after it ended
    assert run("%stream list")["name"].to_list() == ["two"]
    run("%stream stop --all")
    assert run("%stream list").height == 0


def test_connect_topics_peek_call_the_kafka_api(
    run: Run, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[str, Any]] = []
    monkeypatch.setattr(
        sn.kafka,
        "connect",
        lambda b, config=None, schema_registry=None: calls.append(("connect", b)) or ["t"],
    )
    monkeypatch.setattr(sn.kafka, "topics", lambda: calls.append(("topics", None)) or "T")
    monkeypatch.setattr(
        sn.kafka, "peek", lambda t, n, format=None: calls.append(("peek", (t, n))) or "P"
    )
    run("%stream connect 127.0.0.1:9092")
    assert "connected to 127.0.0.1:9092: 1 topics" in capsys.readouterr().out
    assert run("%stream topics") == "T"
    assert run("%stream peek bids") == "P"
    assert run("%stream peek bids -n 3") == "P"
    assert calls == [
        ("connect", "127.0.0.1:9092"),
        ("topics", None),
        ("peek", ("bids", 10)),
        ("peek", ("bids", 3)),
    ]


def test_connect_passes_client_settings_and_prints_no_secret(
    run: Run, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(
        sn.kafka,
        "connect",
        lambda b, config=None, schema_registry=None: calls.append((b, config)) or ["t", "u"],
    )
    run(
        "%stream connect broker:9093 --config security.protocol=SASL_SSL "
        "--config sasl.password=hunter2 --config 'sasl.jaas.config=a b=c' --config ssl.ca.location="
    )
    assert calls == [
        (
            "broker:9093",
            {
                "security.protocol": "SASL_SSL",
                "sasl.password": "hunter2",
                "sasl.jaas.config": "a b=c",
                "ssl.ca.location": "",
            },
        )
    ]
    out = capsys.readouterr().out
    assert "connected to broker:9093, security.protocol=SASL_SSL, sasl.password=***" in out
    assert "2 topics" in out and "hunter2" not in out


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("connect b:1 --config nokey", "--config 'nokey': expected KEY=VALUE"),
        ("connect b:1 --config =v", "--config '=v': expected KEY=VALUE"),
        ("connect b:1 --config", "expected one argument"),
        ("connect b:1 --config sasl.password:hunter2", "--config ***: expected KEY=VALUE"),
    ],
)
def test_connect_config_usage_errors(shell: InteractiveShell, line: str, message: str) -> None:
    result = shell.run_cell(f"%stream {line}")
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    assert message in str(result.error_in_exec)
    assert "usage: %stream connect BOOTSTRAP [--config KEY=VALUE ...]" in str(result.error_in_exec)
    assert "hunter2" not in str(result.error_in_exec)


def test_connect_with_settings_against_a_broker(run: Run, bootstrap: str) -> None:
    try:
        run(f"%stream connect {bootstrap} --config client.id=magic --config socket.timeout.ms=4000")
        assert kafka_client._defaults["config"] == {
            "client.id": "magic",
            "socket.timeout.ms": "4000",
        }
        assert "topic" in run("%stream topics").columns  # topics() uses those settings
        with pytest.raises(UsageError, match=r"no\.such\.setting"):
            run(f"%stream connect {bootstrap} --config no.such.setting=1")
    finally:
        kafka_client._defaults.clear()


def test_connect_topics_peek_against_a_broker(run: Run, bootstrap: str) -> None:
    from confluent_kafka.admin import AdminClient

    topic = kafka.create_topic(AdminClient(kafka.client_config(bootstrap)), 2)
    kafka.produce(bootstrap, topic, [{"id": i, "word": f"w{i}"} for i in range(6)])
    try:
        run(f"%stream connect {bootstrap}")
        listed = run("%stream topics")
        assert listed.filter(pl.col("topic") == topic)["records"].to_list() == [6]
        peeked = run(f"%stream peek {topic} -n 2")
        assert peeked.height <= 4 and {"id", "word", "_partition", "_offset"} <= set(peeked.columns)
    finally:
        kafka_client._defaults.clear()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "a subcommand is needed"),
        ("nope", "unknown subcommand 'nope'"),
        ("list extra", "unrecognized arguments"),
        ("topics extra", "unrecognized arguments"),
        ("stop", "NAME or --all"),
        ("stop one --all", "NAME or --all"),
        ("stop ghost", "no query named 'ghost'"),
        ("stop 'unbalanced", "cannot split"),
        ("status", "required: name"),
        ("status ghost", "no query named 'ghost'"),
        ("connect", "required: bootstrap"),
        ("peek", "required: topic"),
        ("peek t -n x", "invalid int value"),
        ("peek t -n 0", "must be ≥ 1"),
        ("promote", "required"),
        ("promote q", "required: --to"),
        ("promote ghost --to job.py", "no %%stream cell defined query 'ghost'"),
    ],
)
def test_line_usage_errors(shell: InteractiveShell, line: str, message: str) -> None:
    result = shell.run_cell(f"%stream {line}")
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    assert message in str(result.error_in_exec)
    assert "usage: %stream" in str(result.error_in_exec)


# -- promote ---------------------------------------------------------------------------------


def test_promote_writes_the_export_job_and_it_runs(run: Run, tmp_path: Path) -> None:
    run("import math\nsize = '1s'  # a name the %%stream cell takes from another cell")
    q = run(f"%%stream promoted\n{BOUNDED.replace(repr('1s'), 'size')}  # note")
    assert q.wait(timeout=30)
    run("after = 1  # cells after the query's own are not part of the job")
    job = tmp_path / "job.py"
    run(f"%stream promote promoted --to {job}")
    text = job.read_text()
    assert "`streamnb export` / `%stream promote`" in text  # the same job writer as export
    assert "import math" in text and "size = '1s'" in text and "after = 1" not in text
    done = subprocess.run(
        [sys.executable, str(job)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    final = json.loads(done.stderr.strip().splitlines()[-1])
    assert final["name"] == "promoted" and final["state"] == "finished"
    assert final["records_in"] == q.status()["records_in"]
    assert final["records_out"] == q.status()["records_out"] > 0


def test_promote_writes_a_hostile_query_name_as_a_literal(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = 'x""" and __import__("pathlib").Path("INJECTED").touch() or """'
    quoted = "'" + name + "'"  # one word for the magic's shell-like split
    run(f"%%stream {quoted}\n{BOUNDED}").wait(timeout=30)
    # an earlier promote's rebuild ran this session's `%stream connect` cells in this process:
    # without that default, the session's to-kafka cells fail here too and are left out
    monkeypatch.setattr(kafka_client, "_defaults", {})
    job = tmp_path / "job.py"
    run(f"%stream promote {quoted} --to {job}")
    monkeypatch.chdir(tmp_path)
    done = subprocess.run(
        [sys.executable, str(job)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "INJECTED").exists()
    assert json.loads(done.stderr.strip().splitlines()[-1])["name"] == name


def test_promote_keeps_the_kafka_sink(
    run: Run, tmp_path: Path, bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from confluent_kafka.admin import AdminClient

    from streamnb.plan import SinkNode
    from streamnb.promote import load_attribute

    topic = kafka.create_topic(AdminClient(kafka.client_config(bootstrap)), 1)
    monkeypatch.setenv("STREAMNB_KAFKA_BOOTSTRAP", bootstrap)
    run(f"%%stream sink --to-kafka {topic}\n{BOUNDED}").wait(timeout=30)
    run(f"%stream promote sink --to {tmp_path / 'job.py'}")
    stream = load_attribute(f"{tmp_path / 'job.py'}:STREAM")
    root = stream.plan.root
    assert isinstance(root, SinkNode) and isinstance(root.sink, KafkaSink)
    assert (root.sink.topic, root.sink.bootstrap) == (topic, bootstrap)


def test_promote_translates_ipython_syntax(run: Run, tmp_path: Path) -> None:
    run(f"%%stream magic\nx = !echo 1\n{BOUNDED}").wait(timeout=30)
    run(f"%stream promote magic --to {tmp_path / 'job.py'}")
    from streamnb.promote import load_attribute

    stream = load_attribute(f"{tmp_path / 'job.py'}:STREAM")  # `x = !echo 1` ran headless
    assert_frame_equal(stream.collect(timeout=30), run(BOUNDED).collect(timeout=30))


# -- loading ---------------------------------------------------------------------------------


def test_unload_stops_the_magics_queries_and_leaves_no_thread(
    run: Run, shell: InteractiveShell
) -> None:
    run(f"%%stream a\n{PACED}")
    run(f"%%stream b --show\n{PACED}")
    assert len(streamnb_threads()) == 3  # two queries, one view
    shell.run_line_magic("unload_ext", "streamnb")
    assert streamnb_threads() == []
    assert "StreamMagics" not in shell.magics_manager.registry
    assert not any(isinstance(c, StreamMagics) for c in shell.configurables)
    result = shell.run_cell("%stream list")
    assert isinstance(result.error_in_exec, UsageError)  # the magic is gone
    shell.run_line_magic("load_ext", "streamnb")  # and comes back
    assert run("%stream list").height == 0


def test_package_hooks_register_and_remove_the_magics(shell: InteractiveShell) -> None:
    shell.run_line_magic("unload_ext", "streamnb")
    assert "stream" not in shell.magics_manager.magics["cell"]
    sn.load_ipython_extension(shell)  # what %load_ext streamnb calls
    assert {"stream"} <= set(shell.magics_manager.magics["cell"])
    assert {"stream"} <= set(shell.magics_manager.magics["line"])
    sn.unload_ipython_extension(shell)
    assert "stream" not in shell.magics_manager.magics["line"]
    shell.run_line_magic("load_ext", "streamnb")  # as the fixture expects to find it
