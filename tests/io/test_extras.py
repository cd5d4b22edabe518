"""A missing optional extra raises ``ConfigError`` naming the command that installs it."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import polars as pl
import pytest

import streamnb as sn
from streamnb.io._extras import require
from streamnb.io.codecs import avro

SCHEMA = {"type": "record", "name": "R", "fields": [{"name": "k", "type": "long"}]}
INSTALL = "pip install 'streamnb[avro]'"


@pytest.fixture
def no_fastavro(monkeypatch: pytest.MonkeyPatch) -> None:
    """fastavro as if not installed: ``import fastavro`` raises ModuleNotFoundError."""
    monkeypatch.setitem(sys.modules, "fastavro", None)


def test_avro_works_with_the_extra() -> None:
    parsed = avro.parse_schema(SCHEMA)
    rows = pl.DataFrame({"k": [1, 2]})
    values, unfit = avro.encode(rows, parsed)
    frame, kept = avro.decode(values, parsed, pl.Schema({"k": pl.Int64}), print)
    assert frame["k"].to_list() == [1, 2] and kept == [0, 1] and unfit == []


@pytest.mark.usefixtures("no_fastavro")
def test_to_kafka_avro_without_fastavro_names_the_extra() -> None:
    stream = sn.from_records([{"k": 1}])
    with pytest.raises(sn.ConfigError, match=r"format='avro' needs fastavro") as info:
        stream.to_kafka("out", format="avro", schema=SCHEMA, bootstrap_servers="127.0.0.1:9")
    assert INSTALL in str(info.value)
    assert "installed but" not in str(info.value)


@pytest.mark.usefixtures("no_fastavro")
@pytest.mark.parametrize(
    "call",
    [
        lambda: avro.parse_schema(SCHEMA),
        lambda: avro.decode([b"\x02"], SCHEMA, pl.Schema({"k": pl.Int64}), print),
        lambda: avro.encode(pl.DataFrame({"k": [1]}), SCHEMA),
    ],
    ids=["parse_schema", "decode", "encode"],
)
def test_avro_codec_without_fastavro_names_the_extra(call: Callable[[], Any]) -> None:
    with pytest.raises(sn.ConfigError, match=r"needs fastavro") as info:
        call()
    assert INSTALL in str(info.value)


def test_require_returns_the_module_or_names_the_extra() -> None:
    assert require("json", "json") is sys.modules["json"]
    with pytest.raises(sn.ConfigError) as info:
        require("streamnb_no_such_module.sub", "demo")
    assert str(info.value) == (
        "streamnb[demo] needs streamnb_no_such_module.sub: pip install 'streamnb[demo]'"
    )


def test_require_tells_a_broken_install_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed but failing to import (here: a dependency of its own is missing)."""

    class Finder:
        def find_spec(self, name: str, *args: object) -> None:
            if name == "streamnb_broken_extra":
                raise ModuleNotFoundError("No module named 'its_dependency'", name="its_dependency")

    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    with pytest.raises(sn.ConfigError) as info:
        require("streamnb_broken_extra", "demo", feature="the demo")
    message = str(info.value)
    assert message.startswith("the demo needs streamnb_broken_extra: pip install 'streamnb[demo]'")
    assert "installed but does not import" in message and "its_dependency" in message
