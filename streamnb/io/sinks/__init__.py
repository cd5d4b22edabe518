"""Sinks: where output rows go (Kafka, Parquet files)."""
