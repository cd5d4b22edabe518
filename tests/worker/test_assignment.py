"""Which errors reading the group's committed offsets waits out: those a group coordinator
gives while it moves or restarts (the broker-restart tests of test_exactly_once.py hit them
under load), and no other."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from streamnb.worker.assignment import _passing


@pytest.mark.parametrize(
    "code",
    [
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError._WAIT_COORD,
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
    ],
)
def test_a_moving_coordinator_is_waited_out(code: int) -> None:
    assert _passing(KafkaException(KafkaError(code)))


@pytest.mark.parametrize(
    "code",
    [KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError.INVALID_GROUP_ID, KafkaError._FATAL],
)
def test_other_errors_fail_at_once(code: int) -> None:
    assert not _passing(KafkaException(KafkaError(code)))


def test_an_exception_without_a_kafka_error_fails_at_once() -> None:
    assert not _passing(KafkaException("no KafkaError inside"))
