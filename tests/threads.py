"""What tests of running queries share: waiting for a condition, and leaving no thread behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import streamnb as sn


def streamnb_threads(prefix: str = "streamnb") -> list[threading.Thread]:
    """Live threads of queries (``streamnb:``) and, by default, of views (``streamnb-ui:``)."""
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def stop_all_and_check_no_thread_left() -> None:
    """Stop every running query; then no streamnb thread may be alive (after a short join)."""
    for q in sn.queries():
        q.stop()
    for t in streamnb_threads():
        t.join(10)
    assert streamnb_threads() == [], [(t.name, t.is_alive()) for t in streamnb_threads()]
