"""Shared test configuration."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

# One real Kafka broker per test session, shared by every test that asks for it
# (tests/io/kafka, tests/ui/notebook, tests/worker, ...); it starts only when a test needs it.
pytest_plugins = ["tests.io.kafka.fixtures"]

# 200 random cases per property in CI (the acceptance bar); STREAMNB_QUICK=1 for a fast loop.
settings.register_profile(
    "default", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "quick", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("quick" if os.environ.get("STREAMNB_QUICK") else "default")


@pytest.fixture(scope="module", params=["small", "keyed"])
def state_modes(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a module's tests twice: with keyed state where it pays (the default), and with
    keyed state from the first record on (``streamnb.engine.state.worth_keying`` always
    true), so that every oracle test checks both representations of operator state."""
    from streamnb.engine import state

    saved = state.KEYED_MIN, state.KEYED_FROM
    if request.param == "keyed":
        state.KEYED_MIN, state.KEYED_FROM = -1, 0
    yield request.param
    state.KEYED_MIN, state.KEYED_FROM = saved
