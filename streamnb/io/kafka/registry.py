"""Schema Registry: where it is, a client for it, and the Confluent framing of values.

A framed value (what Confluent's serializers write, for Avro, Protobuf and JSON Schema
alike) is one magic byte ``0``, the schema id as a 4-byte big-endian integer, then the
encoded value (Protobuf puts its message indexes between the id and the message). The
schemas live in a Confluent-compatible Schema Registry, reached with confluent-kafka's
``schema_registry`` client (``pip install 'streamnb[registry]'``).

``schema_registry=`` of ``from_kafka`` / ``to_kafka`` / ``peek`` takes the registry's URL or a
client config dict (``{"url": ..., "basic.auth.user.info": "user:secret", ...}``); without
it, ``STREAMNB_SCHEMA_REGISTRY`` or what ``sn.kafka.connect(..., schema_registry=...)``
(``%stream connect --schema-registry``) set is used. Credentials never appear in output:
:func:`redact_registry`.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from streamnb.exceptions import ConfigError
from streamnb.io._extras import require

__all__ = [
    "REGISTRY_FORMATS",
    "check_registry",
    "client",
    "frame_header",
    "redact_registry",
    "redact_url",
    "resolve_registry",
    "scrub",
    "set_default_registry",
    "split_framed",
    "subject_name",
]

REGISTRY_FORMATS = ("avro", "protobuf", "jsonschema")
"""The formats whose values are framed with a schema id from the registry."""

MAGIC = 0
HEADER = 5  # the magic byte and the 4-byte schema id

REGISTRY_SECRETS = (
    "basic.auth.user.info",
    "token",
    "ssl.key",
    "password",
    "secret",
    "sasl.oauthbearer.config",
)
"""Config keys whose values never appear in logs, reprs or errors: a key holding one of these
is secret. They cover the registry's (``basic.auth.user.info``, ``bearer.auth.token``,
``bearer.auth.client.secret``, ``ssl.key.password``) and Kafka's (``sasl.password``,
``ssl.key.pem``, ``sasl.oauthbearer.*``), since either kind may end up in the other's config."""

_USER_INFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")

_defaults: dict[str, Any] = {}  # "registry": set by connect(..., schema_registry=...)
_clients: dict[tuple[tuple[str, str], ...], Any] = {}
_lock = threading.Lock()


def set_default_registry(schema_registry: str | Mapping[str, Any] | None) -> None:
    """Make ``schema_registry`` the default of later calls (``None`` clears it)."""
    if schema_registry is None:
        _defaults.pop("registry", None)
    else:
        _defaults["registry"] = _as_config(schema_registry)


def resolve_registry(
    schema_registry: str | Mapping[str, Any] | None, *, required: bool = False, what: str = ""
) -> dict[str, Any] | None:
    """The registry's client config: the argument, else ``STREAMNB_SCHEMA_REGISTRY``, else
    ``connect()``'s. ``required``: raise :class:`ConfigError` (naming ``what`` needs it)
    when there is none."""
    if schema_registry is not None:
        return _as_config(schema_registry)
    env = os.environ.get("STREAMNB_SCHEMA_REGISTRY")
    if env:
        return _as_config(env)
    if "registry" in _defaults:
        return dict(_defaults["registry"])
    if required:
        raise ConfigError(
            f"{what or 'this format'} needs a Schema Registry: pass schema_registry='http://…' "
            "(or a client config dict), set STREAMNB_SCHEMA_REGISTRY, or call "
            "sn.kafka.connect(..., schema_registry=...) (%stream connect --schema-registry)"
        )
    return None


def _as_config(schema_registry: str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(schema_registry, str):
        if not schema_registry.startswith(("http://", "https://")):
            raise ConfigError(
                f"schema_registry={schema_registry!r} must be an http(s):// URL or a client "
                "config dict with 'url'"
            )
        return {"url": schema_registry}
    if isinstance(schema_registry, Mapping):
        config = dict(schema_registry)
        if not isinstance(config.get("url"), str):
            raise ConfigError(
                f"schema_registry={redact_registry(config)!r} needs 'url' (the registry's "
                "http(s):// URL)"
            )
        return config
    raise ConfigError(
        f"schema_registry={schema_registry!r} must be an http(s):// URL or a client config dict"
    )


def redact_registry(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with secret values replaced (and a URL's user info), for output."""
    return {
        k: "***"
        if any(s in k.lower() for s in REGISTRY_SECRETS)
        else (redact_url(v) if isinstance(v, str) else v)
        for k, v in config.items()
    }


def redact_url(text: str) -> str:
    """``text`` with the user info of every URL in it (``https://user:pw@host``) replaced."""
    return _USER_INFO.sub(r"\g<scheme>***@", text)


def scrub(text: str, config: Mapping[str, Any]) -> str:
    """``text`` (an error message, say) without any secret of ``config`` in it: the secret
    values, their parts (``user:pw`` as ``pw``) and the user info of URLs."""
    secrets = set()
    for k, v in config.items():
        if isinstance(v, str) and v and any(s in k.lower() for s in REGISTRY_SECRETS):
            secrets.add(v)
            secrets.update(part for part in v.split(":", 1)[1:] if part)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return redact_url(text)


def client(config: Mapping[str, Any]) -> Any:
    """A ``SchemaRegistryClient`` for ``config`` (one per config in a process: it caches
    the schemas it has fetched)."""
    require("confluent_kafka.schema_registry", "registry", feature="a Schema Registry format")
    from confluent_kafka.schema_registry import SchemaRegistryClient

    key = tuple(sorted((k, repr(v)) for k, v in config.items()))
    with _lock:
        found = _clients.get(key)
        if found is None:
            try:
                found = _clients[key] = SchemaRegistryClient(dict(config))
            except Exception as exc:  # a bad setting: name it, without its secrets
                raise ConfigError(
                    f"schema_registry={redact_registry(config)!r}: {scrub(str(exc), config)}"
                ) from None
        return found


def check_registry(config: Mapping[str, Any]) -> list[str]:
    """The registry's subjects, asked for to check that it answers (and takes the
    credentials); a registry that does not raises :class:`ConfigError` naming its URL
    (redacted) and why."""
    try:
        return list(client(config).get_subjects())
    except ConfigError:
        raise
    except Exception as exc:  # transport (refused, TLS, timeout) or HTTP (401, 403, 404)
        raise ConfigError(
            f"the Schema Registry at {redact_url(str(config.get('url')))} does not answer "
            f"GET /subjects: {scrub(str(exc), config)}; check the URL (Confluent-compatible "
            "API, e.g. http://host:8081 or …/apis/ccompat/v7) and its credentials "
            "(basic.auth.user.info, bearer.auth.*)"
        ) from None


def split_framed(values: Sequence[bytes | None]) -> tuple[np.ndarray, list[bytes]]:
    """Each framed value's schema id (``-1`` where the value is not framed: empty, too
    short, or a magic byte other than ``0``) and its body (what follows the header)."""
    n = len(values)
    heads = b"".join(
        v[:HEADER] if v is not None and len(v) >= HEADER else b"\xff\xff\xff\xff\xff"
        for v in values
    )
    raw = np.frombuffer(heads, dtype=np.uint8).reshape(n, HEADER)
    ids = raw[:, 1:].copy().view(">u4").reshape(n).astype(np.int64)
    ids[raw[:, 0] != MAGIC] = -1
    bodies = [v[HEADER:] if v is not None else b"" for v in values]
    return ids, bodies


def frame_header(schema_id: int) -> bytes:
    """The 5 bytes that precede a value written with schema ``schema_id``."""
    return bytes([MAGIC]) + int(schema_id).to_bytes(4, "big")


def subject_name(
    topic: str, *, is_key: bool = False, strategy: str = "topic", record_name: str | None = None
) -> str:
    """The subject a topic's values (or keys) are registered under: ``<topic>-value``
    (``topic``, the default), ``<record name>`` (``record``) or ``<topic>-<record name>``
    (``topic_record``)."""
    if strategy == "topic":
        return f"{topic}-{'key' if is_key else 'value'}"
    if record_name is None:
        raise ConfigError(f"subject strategy {strategy!r} needs the record's full name")
    if strategy == "record":
        return record_name
    if strategy == "topic_record":
        return f"{topic}-{record_name}"
    raise ConfigError(f"subject_strategy={strategy!r} must be 'topic', 'record' or 'topic_record'")
