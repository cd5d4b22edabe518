"""``%stream connect --schema-registry``, ``%stream peek`` and ``%stream topics`` on framed
topics, through a real IPython shell, against the real broker and Schema Registry."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import polars as pl
import pytest
from confluent_kafka.admin import AdminClient
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from streamnb.io.kafka import client as kafka_client
from streamnb.io.kafka import registry as registry_module
from tests.io.kafka import broker as kafka
from tests.io.kafka.registry import SchemaRegistry
from tests.io.kafka.test_registry_explore import TRADES, schema_id, serialize

Run = Callable[[str], Any]


@pytest.fixture(autouse=True)
def no_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMNB_SCHEMA_REGISTRY", raising=False)
    monkeypatch.setattr(kafka_client, "_defaults", {})
    monkeypatch.setattr(registry_module, "_defaults", {})


def test_connect_with_a_registry_then_peek_and_topics_decode_framed_values(
    run: Run,
    bootstrap: str,
    schema_registry: SchemaRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = kafka.create_topic(AdminClient(kafka.client_config(bootstrap)), 1)
    values = serialize(schema_registry.url, topic, "avro", TRADES)
    kafka.produce(bootstrap, topic, values)
    # the test registry takes no credentials: this one is only to be kept out of the output
    run(
        f"%stream connect {bootstrap} --schema-registry {schema_registry.url} "
        "--registry-config basic.auth.user.info=alice:s3cr3t-pw"
    )
    out = capsys.readouterr().out
    assert f"schema registry {schema_registry.url}, basic.auth.user.info=***" in out
    assert "s3cr3t" not in out
    assert registry_module._defaults["registry"]["url"] == schema_registry.url

    peeked = run(f"%stream peek {topic} -n 2")
    assert peeked.select("id", "symbol").rows() == [(2, "INIT"), (3, "ACME")]
    assert peeked.select("_subject", "_schema_id", "_version").unique().rows() == [
        (f"{topic}-value", schema_id(values[0]), 1)
    ]
    assert run(f"%stream peek {topic} --format protobuf")["_error"].to_list() == [
        f"schema {schema_id(values[0])} is AVRO, not PROTOBUF (format='protobuf')"
    ] * len(TRADES)
    listing = run("%stream topics").filter(pl.col("topic") == topic)
    assert listing["subject"].to_list() == [f"{topic}-value"]


def test_an_unreachable_registry_is_named_without_its_secret(
    shell: InteractiveShell, bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = shell.run_cell(
        f"%stream connect {bootstrap} --schema-registry http://alice:s3cr3t-pw@127.0.0.1:{port} "
        "--registry-config max.retries=0"
    )
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    message = str(result.error_in_exec)
    assert f"http://***@127.0.0.1:{port}" in message and "s3cr3t" not in message
    shown = capsys.readouterr()
    assert f"127.0.0.1:{port}" in shown.out + shown.err
    assert "s3cr3t" not in shown.out + shown.err
    assert registry_module._defaults == {} and kafka_client._defaults == {}


def test_registry_settings_need_a_registry(shell: InteractiveShell) -> None:
    result = shell.run_cell("%stream connect b:1 --registry-config basic.auth.user.info=a:pw")
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    assert "--registry-config needs --schema-registry" in str(result.error_in_exec)
    assert "a:pw" not in str(result.error_in_exec)
