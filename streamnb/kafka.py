"""``sn.kafka``: look at a Kafka cluster from the notebook (topics, a peek at records, connect).

The functions live in :mod:`streamnb.io.kafka.client`; this module is their public face.
"""

from __future__ import annotations

from streamnb.io.kafka.client import client_config, connect, peek, resolve_bootstrap, topics

__all__ = ["client_config", "connect", "peek", "resolve_bootstrap", "topics"]
