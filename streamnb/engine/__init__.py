"""The engine: compiles a plan into operators and runs them in micro-batches.

Its results are those of record-at-a-time processing (docs/semantics.md).
"""
