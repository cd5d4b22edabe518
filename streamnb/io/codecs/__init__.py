"""Codecs: record bytes to polars frames and back (JSON lines, Avro)."""
