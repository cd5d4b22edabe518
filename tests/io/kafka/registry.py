"""A real Schema Registry for the tests: Apicurio Registry (its Confluent-compatible API),
started by ``scripts/schema-registry-local`` (jars from Maven Central, in-memory storage),
or an existing registry named by ``STREAMNB_TEST_SCHEMA_REGISTRY=http://…``.
``fixtures.py`` turns it into the ``schema_registry`` fixture.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "schema-registry-local"
# Generous enough for a first run, which builds the registry from Maven Central (~1 minute).
START_TIMEOUT_S = 600


class SchemaRegistry:
    """A registry's Confluent-compatible base URL, and the state dir it runs from (None: not
    ours to stop)."""

    def __init__(self, url: str, state_dir: Path | None = None) -> None:
        self.url, self.state_dir = url, state_dir

    @classmethod
    def launch(cls, state_dir: Path) -> SchemaRegistry:
        out = _script("start", "--dir", str(state_dir), "--watch-pid", str(os.getpid()))
        urls = [line.split("=", 1)[1] for line in out.splitlines() if line.startswith("SCHEMA_")]
        if not urls:
            pytest.fail(f"scripts/schema-registry-local start printed no URL:\n{out}")
        registry = cls(urls[-1], state_dir)
        # Confluent's registry checks new versions for BACKWARD compatibility by default;
        # Apicurio's ccompat API defaults to NONE
        registry.request("PUT", "/config", {"compatibility": "BACKWARD"})
        return registry

    def request(self, method: str, path: str, body: object | None = None) -> object:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def close(self) -> None:
        if self.state_dir is not None:
            _script("stop", "--dir", str(self.state_dir))


def _script(*args: str) -> str:
    try:
        done = subprocess.run(
            [str(SCRIPT), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"scripts/schema-registry-local {' '.join(args)} took over {START_TIMEOUT_S} s")
    if done.returncode != 0:
        pytest.fail(
            f"scripts/schema-registry-local {' '.join(args)} failed (exit {done.returncode}); "
            "the tests need a real Schema Registry: Java 17+ and Maven, or "
            f"STREAMNB_TEST_SCHEMA_REGISTRY=http://….\n{done.stderr}",
            pytrace=False,
        )
    return done.stdout
