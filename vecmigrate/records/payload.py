"""Payload values: one canonical form per kind, conversions to and from what engines hand out,
and the payload's share of a record's hash.

Canonical forms (what a record batch holds, and what the checksum hashes): ``bool``, ``int``
(64-bit), ``float`` (64-bit), ``text`` (UTF-8), ``timestamp`` (microseconds since 1970-01-01
UTC) and ``json`` (compact JSON text with sorted keys, so the same value has the same bytes
whichever engine held it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa

from vecmigrate.errors import DataError
from vecmigrate.model.records import FieldKind, PayloadField, RecordSchema, Scalar
from vecmigrate.records.checksums import Words, hash_bytes, mix, mixed, name_salt

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NULL = np.uint64(0x6E756C6C6E756C6C)  # "nullnull"
_EXTRA = "\x00extra"

ARROW_TYPES: dict[FieldKind, pa.DataType] = {
    FieldKind.BOOL: pa.bool_(),
    FieldKind.INT: pa.int64(),
    FieldKind.FLOAT: pa.float64(),
    FieldKind.TEXT: pa.string(),
    FieldKind.TIMESTAMP: pa.timestamp("us", tz="UTC"),
    FieldKind.JSON: pa.string(),
}


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys; integers of any size and non-ASCII text kept as they are.

    Raises:
        DataError: the value is not JSON (NaN, a set, bytes).
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        pass  # integers past 64 bits: the standard library writes any integer
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise DataError(f"payload value {value!r:.80} is not JSON: {exc}") from None


def canonical_json_text(text: str | bytes) -> str:
    """JSON text rewritten in canonical form."""
    try:
        return canonical_json(orjson.loads(text))
    except orjson.JSONDecodeError:
        return canonical_json(json.loads(text))


def timestamp_micros(value: Any) -> int:
    """Microseconds since 1970 (UTC) of a datetime, an RFC 3339 text or a number of them.

    A datetime without a time zone is taken as UTC.

    Raises:
        DataError: not a timestamp.
    """
    if isinstance(value, bool):
        raise DataError(f"{value!r} is not a timestamp")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise DataError(f"{value!r} is not an RFC 3339 timestamp") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        delta = value - _EPOCH
        micros: int = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        return micros
    raise DataError(f"{value!r} is not a timestamp")


def rfc3339(micros: int) -> str:
    """A timestamp as RFC 3339 text in UTC with microseconds (what Qdrant's datetime index
    reads)."""
    return (_EPOCH + timedelta(microseconds=micros)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def scalar_value(value: Any, kind: FieldKind) -> Scalar | None:
    """A value as the canonical value of a scalar ``kind`` (a timestamp in microseconds), or
    None where it is no value of that kind (a bool is no number).

    Raises:
        DataError: a timestamp that cannot be read.
    """
    if kind == FieldKind.TIMESTAMP:
        return timestamp_micros(value)
    if kind == FieldKind.BOOL and isinstance(value, bool):
        return value
    if kind == FieldKind.INT and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == FieldKind.FLOAT and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind == FieldKind.TEXT and isinstance(value, str):
        return value
    return None


def _python_value(value: Any, kind: FieldKind, name: str) -> Any:
    """One value as the canonical Python value of ``kind`` (None stays None)."""
    if value is None:
        return None
    if kind == FieldKind.JSON:
        return canonical_json(value)
    out = scalar_value(value, kind)
    if out is None:
        raise DataError(
            f"field {name!r} holds {type(value).__name__} {value!r:.60} where the schema says "
            f"{kind}; declare the field json in the spec to carry any value"
        )
    if kind == FieldKind.INT and not -(1 << 63) <= value < 1 << 63:
        raise DataError(f"field {name!r}: {value} does not fit a 64-bit integer")
    return out


def canonical_value(value: Any, field: PayloadField) -> Any:
    """A value as engines return it, as the canonical value of its field's kind (a timestamp
    in microseconds, JSON as canonical text; None stays None).

    Raises:
        DataError: a value that is not of the field's kind.
    """
    return _python_value(value, field.kind, field.name)


def canonical_column(values: Sequence[Any], kind: FieldKind) -> pa.Array:
    """A payload column from values already in canonical form."""
    if kind == FieldKind.TIMESTAMP:
        return pa.array(values, pa.int64()).cast(ARROW_TYPES[kind])
    return pa.array(values, ARROW_TYPES[kind])


def column(values: Sequence[Any], field: PayloadField) -> pa.Array:
    """A payload column of canonical values from Python values as engines return them.

    Raises:
        DataError: a value that is not of the field's kind.
    """
    return canonical_column([canonical_value(v, field) for v in values], field.kind)


def python_values(arr: pa.Array, kind: FieldKind, *, timestamps: str = "rfc3339") -> list[Any]:
    """A payload column as Python values to hand to an engine's client: JSON parsed back into
    objects, timestamps as RFC 3339 text (``timestamps="rfc3339"``) or as microseconds
    (``"micros"``)."""
    if kind == FieldKind.TIMESTAMP:
        micros: list[Any] = arr.cast(pa.int64()).to_pylist()
        if timestamps == "micros":
            return micros
        return [None if m is None else rfc3339(m) for m in micros]
    values: list[Any] = arr.to_pylist()
    if kind == FieldKind.JSON:
        return [None if v is None else orjson.loads(v) for v in values]
    return values


def infer_kind(values: Iterable[Any]) -> FieldKind:
    """The narrowest kind that holds every value of a sample (None ignored): integers and floats
    together are ``float``, RFC 3339 texts ``timestamp``, anything mixed or nested ``json``."""
    kinds: set[FieldKind] = set()
    for v in values:
        if v is None:
            continue
        if isinstance(v, bool):
            kinds.add(FieldKind.BOOL)
        elif isinstance(v, int):
            kinds.add(FieldKind.INT)
        elif isinstance(v, float):
            kinds.add(FieldKind.FLOAT if math.isfinite(v) else FieldKind.JSON)
        elif isinstance(v, str):
            kinds.add(FieldKind.TIMESTAMP if _looks_like_timestamp(v) else FieldKind.TEXT)
        else:
            kinds.add(FieldKind.JSON)
    if kinds == {FieldKind.INT, FieldKind.FLOAT}:
        return FieldKind.FLOAT
    if kinds == {FieldKind.TIMESTAMP, FieldKind.TEXT}:
        return FieldKind.TEXT
    if len(kinds) == 1:
        return kinds.pop()
    return FieldKind.JSON if kinds else FieldKind.TEXT


def _looks_like_timestamp(text: str) -> bool:
    if len(text) < 20 or text[4] != "-" or text[10] not in "Tt ":
        return False
    try:
        return datetime.fromisoformat(text).tzinfo is not None
    except ValueError:
        return False


def value_bytes(arr: pa.Array, kind: FieldKind) -> npt.NDArray[np.int64]:
    """Bytes each value takes in its canonical form (0 for a null), for size limits."""
    if kind in (FieldKind.TEXT, FieldKind.JSON):
        lengths = pa.compute.binary_length(arr).fill_null(0)
        return np.asarray(lengths.to_numpy(zero_copy_only=False), np.int64)
    width = 1 if kind == FieldKind.BOOL else 8
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), bool)
    return valid.astype(np.int64) * width


def _column_hashes(arr: pa.Array, kind: FieldKind) -> Words:
    """A 64-bit hash of each value of a payload column, in its canonical form (nulls all alike,
    and unlike any value)."""
    n = len(arr)
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), bool)
    if kind in (FieldKind.TEXT, FieldKind.JSON):
        filled = arr.fill_null("").cast(pa.large_string())
        _, offset_buf, data_buf = filled.buffers()
        offsets = np.frombuffer(offset_buf, np.int64)[filled.offset : filled.offset + n + 1]
        data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.empty(0, np.uint8)
        out = hash_bytes(offsets - offsets[0], data[offsets[0] : offsets[-1]])
    else:
        if kind == FieldKind.BOOL:
            raw = np.asarray(arr.fill_null(False).to_numpy(zero_copy_only=False), np.uint64)
        elif kind == FieldKind.FLOAT:
            floats = np.asarray(arr.fill_null(0.0).to_numpy(zero_copy_only=False), np.float64)
            floats = np.where(np.isnan(floats), np.float64("nan"), floats)  # one NaN
            raw = floats.view(np.uint64)
        else:  # int, timestamp
            raw = np.asarray(
                arr.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False), np.int64
            ).view(np.uint64)
        out = mixed(raw ^ name_salt(str(kind)))
    return np.where(valid, out, _NULL)


def payload_hashes(
    schema: RecordSchema, fields: dict[str, pa.Array], extra: pa.Array | None
) -> Words:
    """Each record's payload hash: its fields' value hashes folded in by field name (the
    ``extra`` object as one more field), for :func:`~vecmigrate.records.checksums.record_hashes`.
    """
    n = len(extra) if extra is not None else len(next(iter(fields.values()))) if fields else 0
    acc = np.full(n, np.uint64(0x70A1_10AD_0000_0001), np.uint64)
    tmp = np.empty(n, np.uint64)
    parts = [(f.name, fields[f.name], f.kind) for f in schema.payload]
    if extra is not None:
        parts.append((_EXTRA, extra, FieldKind.JSON))
    for name, arr, kind in sorted(parts, key=lambda p: p[0]):
        np.bitwise_xor(acc, _column_hashes(arr, kind), out=acc)
        np.bitwise_xor(acc, name_salt(name), out=acc)
        mix(acc, tmp)
    return acc
