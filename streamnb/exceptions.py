"""The exceptions streamnb raises.

::

    StreamnbError                 every streamnb error
    ├── ConfigError (ValueError)  a query definition or argument is wrong; raised at once
    ├── SourceError               a source cannot be read (missing file, unreachable broker)
    ├── SinkError                 a sink cannot deliver (records not acknowledged by Kafka)
    ├── DecodeError               a record cannot be decoded (kept in ``errors()``, raised only
    │                             with ``errors="fail"``)
    └── QueryFailed               a running query stopped on an error; ``__cause__`` holds it

``ConfigError`` is also a ``ValueError`` so that code written against plain Python
conventions (``except ValueError``) keeps working.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DecodeError",
    "QueryFailed",
    "SinkError",
    "SourceError",
    "StreamnbError",
]


class StreamnbError(Exception):
    """Base class of every error raised by streamnb."""


class ConfigError(StreamnbError, ValueError):
    """A query definition or an argument is invalid; the message names what is wrong."""


class SourceError(StreamnbError):
    """A source cannot be opened or read."""


class SinkError(StreamnbError):
    """A sink cannot deliver its output (the worker then commits nothing past it)."""


class DecodeError(StreamnbError):
    """A record cannot be decoded or lacks what the query needs."""


class QueryFailed(StreamnbError):
    """A query stopped because of an error; the original error is ``__cause__``."""
