"""Tests against a real Apache Kafka broker (see conftest.py)."""
