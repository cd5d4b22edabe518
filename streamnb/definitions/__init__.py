"""Definitions: windows, aggregations, durations and event time (checked when written)."""
