"""``streamnb.__all__`` lists exactly the public names of the package (the httpx pattern)."""

from __future__ import annotations

import importlib
import types

import pytest

import streamnb


def _public_names(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }


def test_all_lists_exactly_the_public_names() -> None:
    assert sorted(streamnb.__all__) == sorted(_public_names(streamnb))


def test_all_has_no_duplicates() -> None:
    assert len(streamnb.__all__) == len(set(streamnb.__all__))


def test_the_documented_api_is_exported() -> None:
    documented = {
        "from_records", "nexmark", "from_files", "Stream", "WindowedStream", "GroupedStream",
        "Tumbling", "Hopping", "Session", "Query", "queries", "ConfigError", "QueryFailed",
    }  # fmt: skip
    assert documented <= set(streamnb.__all__)


@pytest.mark.parametrize("name", streamnb.__all__)
def test_every_exported_name_is_importable(name: str) -> None:
    module = importlib.import_module("streamnb")
    member = getattr(module, name)
    namespace: dict[str, object] = {}
    exec(f"from streamnb import {name}", namespace)
    assert namespace[name] is member
    if hasattr(member, "__module__"):
        assert member.__module__.startswith("streamnb")
