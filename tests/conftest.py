"""Shared test configuration."""

from __future__ import annotations

import os

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
