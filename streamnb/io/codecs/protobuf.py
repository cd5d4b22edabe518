"""Protobuf values framed with a Schema Registry id → polars rows (DECODE side).

Python has no columnar Protobuf decoder: each message is parsed by the protobuf runtime
(upb, C) and turned into a dict by a converter planned once per message type, then the batch
becomes one frame in one ``pl.from_dicts`` call. The message class is built from the
registry's schema with confluent-kafka's own pieces (the descriptor pool with the well-known
types, the schema's references, the message indexes after the schema id).

Types: messages → Struct, repeated → List, maps → ``List(Struct{key, value})``, enums →
String (their names), ``google.protobuf.Timestamp`` → Datetime UTC (µs).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import polars as pl

from streamnb.exceptions import ConfigError, DecodeError
from streamnb.io.codecs.framed import Writer, zigzag
from streamnb.io.codecs.json import ErrorSink

_SCALARS: dict[int, pl.DataType] = {
    1: pl.Float64(),  # double
    2: pl.Float32(),  # float
    3: pl.Int64(),  # int64
    4: pl.UInt64(),  # uint64
    5: pl.Int32(),  # int32
    6: pl.UInt64(),  # fixed64
    7: pl.UInt32(),  # fixed32
    8: pl.Boolean(),  # bool
    9: pl.String(),  # string
    12: pl.Binary(),  # bytes
    13: pl.UInt32(),  # uint32
    15: pl.Int32(),  # sfixed32
    16: pl.Int64(),  # sfixed64
    17: pl.Int32(),  # sint32
    18: pl.Int64(),  # sint64
}
_MESSAGE, _ENUM = 11, 14
TIMESTAMP = "google.protobuf.Timestamp"


def protobuf_writer(schema: Any, registry: Any) -> Writer:
    """The registry's Protobuf ``schema`` as a :class:`Writer` of its root message: the one
    top-level message no other message of the file uses as a field (the first, if several
    are); values whose message indexes name another message are errors."""
    from confluent_kafka.schema_registry._sync.protobuf import _resolve_named_schema
    from confluent_kafka.schema_registry.common.protobuf import _init_pool, _str_to_proto
    from google.protobuf.descriptor_pool import DescriptorPool
    from google.protobuf.message_factory import GetMessageClass

    pool = DescriptorPool()
    _init_pool(pool)
    _resolve_named_schema(schema, registry, pool)
    fd_proto = _str_to_proto("default", schema.schema_str)
    pool.Add(fd_proto)
    if not fd_proto.message_type:
        raise ConfigError("the Protobuf schema declares no message")
    index = _root(fd_proto)
    name = fd_proto.message_type[index].name
    desc = pool.FindMessageTypeByName(f"{fd_proto.package}.{name}" if fd_proto.package else name)
    prefix = b"\x00" if index == 0 else b"\x02" + zigzag(index)  # its message indexes
    message_class = GetMessageClass(desc)
    dtype = _struct(desc)
    convert = _converter(desc)
    schema_pl = pl.Schema({f.name: f.dtype for f in dtype.fields})

    def decode(bodies: list[bytes], on_error: ErrorSink) -> tuple[pl.DataFrame, list[int]]:
        parse = message_class.FromString
        rows: list[dict[str, Any]] = []
        kept: list[int] = []
        for i, body in enumerate(bodies):
            try:
                message = body[len(prefix) :] if body.startswith(prefix) else _payload(body, index)
                rows.append(convert(parse(message)))
            except Exception as exc:  # truncated or foreign bytes, another message index
                on_error(i, body, f"not Protobuf of its schema: {exc!r}")
                continue
            kept.append(i)
        frame = pl.from_dicts(rows, schema=schema_pl) if rows else schema_pl.to_frame()
        return frame, kept

    return Writer(schema_pl, decode)


def _root(fd_proto: Any) -> int:
    """The index of the file's root message (see :func:`protobuf_writer`)."""
    used = {
        f.type_name.rsplit(".", 1)[-1]
        for m in fd_proto.message_type
        for f in m.field
        if f.type == _MESSAGE
    }
    roots = [i for i, m in enumerate(fd_proto.message_type) if m.name not in used]
    return roots[0] if roots else 0


def _payload(body: bytes, index: int) -> bytes:
    """The message after message indexes written in another form than the usual one; they
    must name the root message ``[index]``."""
    import io

    from confluent_kafka.schema_registry.common.serde import SchemaId

    buffer = io.BytesIO(body)
    indexes = SchemaId._read_index_array(buffer, zigzag=True)
    if indexes != [index]:
        raise DecodeError(f"message index {indexes}: the schema's root message is [{index}]")
    return body[buffer.tell() :]


def _struct(desc: Any) -> pl.Struct:
    return pl.Struct({f.name: _dtype(f) for f in desc.fields})


def _is_map(fd: Any) -> bool:
    return bool(fd.type == _MESSAGE and fd.message_type.GetOptions().map_entry)


def _is_repeated(fd: Any) -> bool:
    if hasattr(fd, "is_repeated"):  # protobuf ≥ 5.28; ``label`` is gone from upb's
        return bool(fd.is_repeated)
    return bool(fd.label == fd.LABEL_REPEATED)


def _dtype(fd: Any) -> pl.DataType:
    if _is_map(fd):
        entry = fd.message_type
        key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
        return pl.List(pl.Struct({"key": _single(key), "value": _single(value)}))
    single = _single(fd)
    return pl.List(single) if _is_repeated(fd) else single


def _single(fd: Any) -> pl.DataType:
    if fd.type == _ENUM:
        return pl.String()
    if fd.type == _MESSAGE:
        if fd.message_type.full_name == TIMESTAMP:
            return pl.Datetime("us", "UTC")
        return _struct(fd.message_type)
    if fd.type in _SCALARS:
        return _SCALARS[fd.type]
    raise ConfigError(f"Protobuf field {fd.name!r}: type {fd.type} is not supported")


def _converter(desc: Any) -> Callable[[Any], dict[str, Any]]:
    """A function from a message of ``desc`` to a dict of Python values (planned once)."""
    plan = [(fd.name, _field_value(fd)) for fd in desc.fields]

    def convert(message: Any) -> dict[str, Any]:
        return {name: value(message) for name, value in plan}

    return convert


def _field_value(fd: Any) -> Callable[[Any], Any]:
    name = fd.name
    if _is_map(fd):
        value_fd = fd.message_type.fields_by_name["value"]
        item = _item(value_fd)
        return lambda m: [{"key": k, "value": item(v)} for k, v in getattr(m, name).items()]
    item = _item(fd)
    if _is_repeated(fd):
        return lambda m: [item(v) for v in getattr(m, name)]
    if fd.type == _MESSAGE or fd.has_presence:  # absent → null
        return lambda m: item(getattr(m, name)) if m.HasField(name) else None
    if fd.type in (_MESSAGE, _ENUM):
        return lambda m: item(getattr(m, name))
    return lambda m: getattr(m, name)


def _item(fd: Any) -> Callable[[Any], Any]:
    """One value of field ``fd`` (an element, for a repeated field) as a Python value."""
    if fd.type == _ENUM:
        names = {v.number: v.name for v in fd.enum_type.values}
        return lambda v: names.get(v, str(v))
    if fd.type == _MESSAGE:
        if fd.message_type.full_name == TIMESTAMP:
            return lambda v: datetime.fromtimestamp(v.seconds, timezone.utc).replace(
                microsecond=v.nanos // 1000
            )
        return _converter(fd.message_type)
    return lambda v: v
