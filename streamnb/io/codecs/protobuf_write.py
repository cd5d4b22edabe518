"""Writing Protobuf values: a proto3 message for a stream's columns, and rows as messages.

The message is built as a ``FileDescriptorProto`` (no ``protoc`` needed) in a pool of its
own, so two queries' messages of the same name never clash. Every scalar field is a proto3
``optional`` (a polars null stays unset, not zero); structs are nested messages, lists
repeated fields. Types Protobuf lacks travel as numbers or text: a datetime as an int64 of
its unit since the epoch, a date as int32 days, a decimal as its text.

Protobuf has no batch writer in Python: each row becomes one message (``Message(**row)``,
the C implementation's constructor) and ``SerializeToString``; the type conversions before
that are one polars cast per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import polars as pl

from streamnb.exceptions import ConfigError
from streamnb.io._extras import require

__all__ = ["ProtobufWriter", "message_indexes"]

_SCALARS: dict[type[pl.DataType], tuple[str, pl.DataType | None]] = {
    # polars type: (the field's Protobuf type, the polars type it is cast to first)
    pl.Boolean: ("bool", None),
    pl.Int8: ("int32", pl.Int32()),
    pl.Int16: ("int32", pl.Int32()),
    pl.Int32: ("int32", None),
    pl.UInt8: ("uint32", pl.UInt32()),
    pl.UInt16: ("uint32", pl.UInt32()),
    pl.UInt32: ("uint32", None),
    pl.Int64: ("int64", None),
    pl.UInt64: ("uint64", None),
    pl.Float32: ("float", None),
    pl.Float64: ("double", None),
    pl.String: ("string", None),
    pl.Categorical: ("string", pl.String()),
    pl.Enum: ("string", pl.String()),
    pl.Decimal: ("string", pl.String()),
    pl.Binary: ("bytes", None),
    pl.Datetime: ("int64", pl.Int64()),
    pl.Duration: ("int64", pl.Int64()),
    pl.Time: ("int64", pl.Int64()),
    pl.Date: ("int32", pl.Int32()),
}


def _descriptor_pb2() -> Any:
    require("google.protobuf", "registry", feature="format='protobuf'")
    from google.protobuf import descriptor_pb2

    return descriptor_pb2


@dataclass(frozen=True)
class ProtobufWriter:
    """A message class and how rows become its messages (``cast``: the polars types the
    columns are cast to first, ``None`` for a user's class, whose fields take the values as
    they are)."""

    message: Any
    cast: pl.Schema | None

    @classmethod
    def for_columns(
        cls, columns: pl.Schema, name: str, package: str = "streamnb"
    ) -> ProtobufWriter:
        """A proto3 message named ``package.name`` with one field per column."""
        pb2 = _descriptor_pb2()
        from google.protobuf import descriptor_pool, message_factory

        file = pb2.FileDescriptorProto(
            name=f"{package}/{name}.proto", package=package, syntax="proto3"
        )
        casts = _message(file.message_type.add(name=name), columns, f".{package}.{name}")
        pool = descriptor_pool.DescriptorPool()
        try:
            pool.Add(file)
            descriptor = pool.FindMessageTypeByName(f"{package}.{name}")
        except Exception as exc:  # a column name Protobuf does not take as a field name
            raise ConfigError(f"no Protobuf message for these columns: {exc}") from None
        return cls(message_factory.GetMessageClass(descriptor), pl.Schema(casts))

    @classmethod
    def for_class(cls, message: Any) -> ProtobufWriter:
        """A user's generated message class (``schema=``); it may import no other .proto
        file (the registry would need each import registered as a reference)."""
        descriptor = getattr(message, "DESCRIPTOR", None)
        if descriptor is None or not hasattr(descriptor, "file"):
            raise ConfigError(
                "format='protobuf' takes schema= a generated message class (from protoc's "
                "*_pb2.py), or none: a message is then made from the stream's columns"
            )
        if descriptor.file.dependencies:
            imports = [d.name for d in descriptor.file.dependencies]
            raise ConfigError(
                f"schema={descriptor.full_name}: its .proto imports {imports}; messages whose "
                "file imports others are not supported yet"
            )
        return cls(message, None)

    @property
    def full_name(self) -> str:
        return str(self.message.DESCRIPTOR.full_name)

    def file_text(self) -> str:
        """The schema as the registry keeps it from confluent-kafka's serializer: the base64
        of the serialized ``FileDescriptorProto``."""
        import base64

        pb2 = _descriptor_pb2()
        file = pb2.FileDescriptorProto()
        self.message.DESCRIPTOR.file.CopyToProto(file)
        return base64.standard_b64encode(file.SerializeToString()).decode()

    def encode(
        self, rows: pl.DataFrame, *, prefix: bytes = b""
    ) -> tuple[list[bytes], list[tuple[int, str]]]:
        """Each row as ``prefix`` and its serialized message; a row that does not fit the
        message is listed with its reason (index, reason) and its place holds ``b""``."""
        if self.cast is not None:
            rows = rows.select(pl.col(c).cast(t) for c, t in self.cast.items())
        message = self.message
        out: list[bytes] = []
        failed: list[tuple[int, str]] = []
        for i, row in enumerate(rows.iter_rows(named=True)):
            try:
                body = message(**{k: v for k, v in row.items() if v is not None})
                out.append(prefix + body.SerializeToString())
            except Exception as exc:  # a value of the wrong type for its field
                failed.append((i, f"does not fit the Protobuf message: {exc!r}"))
                out.append(b"")
        return out, failed


def message_indexes(descriptor: Any) -> bytes:
    """The message indexes that follow a framed Protobuf value's schema id: the path of the
    message in its file (``[0]``, the first message, is the single byte 0), zigzag varints
    as confluent-kafka's serializer writes them."""
    path: list[int] = []
    while descriptor.containing_type is not None:
        parent = descriptor.containing_type
        path.append(list(parent.nested_types).index(descriptor))
        descriptor = parent
    path.append(list(descriptor.file.message_types_by_name.values()).index(descriptor))
    path.reverse()
    if path == [0]:
        return b"\x00"
    return b"".join(_varint(n << 1) for n in [len(path), *path])  # zigzag of n >= 0 is 2n


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _message(message: Any, columns: pl.Schema, full_name: str) -> dict[str, pl.DataType]:
    """Fill ``message`` (a ``DescriptorProto``) with a field per column; returns the polars
    type each column is cast to before it is written."""
    pb2 = _descriptor_pb2()
    field_type = pb2.FieldDescriptorProto
    casts: dict[str, pl.DataType] = {}
    for number, (column, dtype) in enumerate(columns.items(), start=1):
        repeated = isinstance(dtype, (pl.List, pl.Array))
        inner = cast(pl.DataType, dtype.inner) if repeated else dtype  # type: ignore[attr-defined]
        field = message.field.add(
            name=column,
            number=number,
            label=field_type.LABEL_REPEATED if repeated else field_type.LABEL_OPTIONAL,
        )
        if isinstance(inner, pl.Struct):
            nested = message.nested_type.add(name=f"{column[:1].upper()}{column[1:]}Type")
            inner_cast = _message(
                nested, pl.Schema(inner.to_schema()), f"{full_name}.{nested.name}"
            )
            field.type = field_type.TYPE_MESSAGE
            field.type_name = f"{full_name}.{nested.name}"
            cast_inner: pl.DataType = pl.Struct(inner_cast)
        elif type(inner) in _SCALARS:
            kind, to = _SCALARS[type(inner)]
            field.type = getattr(field_type, f"TYPE_{kind.upper()}")
            cast_inner = to or inner
            if not repeated:  # proto3 optional: a synthetic oneof of its own
                field.proto3_optional = True
                field.oneof_index = len(message.oneof_decl)
                message.oneof_decl.add(name=f"_{column}")
        else:
            raise ConfigError(
                f"column {column!r}: polars type {dtype} has no Protobuf form here; cast it, "
                "or pass schema= a generated message class"
            )
        casts[column] = pl.List(cast_inner) if repeated else cast_inner
    return casts
