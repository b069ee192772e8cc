"""Ids of any kind, and the 64-bit label every part of vecmigrate knows a record by.

An integer id is its own label. A string or UUID id is labelled by a 64-bit hash of its
canonical bytes (UTF-8 for a string, the 16 bytes for a UUID): shard keys, checksums, index
artifacts (FAISS and hnswlib label vectors with 64-bit integers) and exact search all work on
labels, so they work the same for every kind of id. Two ids share a label with probability
2**-64 per pair; stores created by vecmigrate refuse a second id with a label already taken
rather than mix the two records up.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from vecmigrate.errors import DataError
from vecmigrate.model.records import IdKind
from vecmigrate.records.checksums import hash_bytes
from vecmigrate.records.vectors import MAX_ID, Ids

# The label search answers pad with where they found fewer than k records.
NO_RESULT = -1
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
_HEX_VALUE = np.full(256, 255, np.uint8)
_HEX_VALUE[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)
_HEX_VALUE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint8)
# Where the 32 hex digits sit in a canonical UUID (8-4-4-4-12).
_DIGITS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])


def arrow_type(kind: IdKind) -> pa.DataType:
    """How ids of ``kind`` are held in a record batch (a UUID as its canonical text)."""
    return pa.int64() if kind == IdKind.INT else pa.string()


def _string_buffers(arr: pa.Array) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
    """Offsets (relative to the data) and bytes of a string array, without copying the bytes."""
    arr = arr.cast(pa.large_string()) if arr.type != pa.large_string() else arr
    _, offset_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offset_buf, np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.empty(0, np.uint8)
    return offsets, data


def uuid_bytes(arr: pa.Array) -> npt.NDArray[np.uint8]:
    """The 16 bytes of each canonical UUID text (``n x 16``), decoded for all rows at once.

    Raises:
        DataError: a value that is not a canonical UUID.
    """
    n = len(arr)
    offsets, data = _string_buffers(arr)
    if n == 0:
        return np.empty((0, 16), np.uint8)
    if not (np.diff(offsets) == 36).all():
        bad = [v for v in arr.to_pylist() if v is None or len(v) != 36][:3]
        raise DataError(f"ids {bad} are not UUIDs in the canonical 8-4-4-4-12 form")
    text = data[offsets[0] : offsets[0] + 36 * n].reshape(n, 36)
    nibbles = _HEX_VALUE[text[:, _DIGITS]]
    if (nibbles == 255).any():
        bad_rows = np.flatnonzero((nibbles == 255).any(axis=1))[:3]
        raise DataError(f"ids {[arr[int(i)].as_py() for i in bad_rows]} are not UUIDs")
    return (nibbles[:, 0::2] << 4 | nibbles[:, 1::2]).astype(np.uint8)


def uuid_texts(raw: npt.NDArray[np.uint8]) -> pa.Array:
    """Canonical UUID texts of ``n x 16`` bytes (lower-case 8-4-4-4-12), for all rows at once."""
    n = int(raw.shape[0])
    text = np.full((n, 36), ord("-"), np.uint8)
    digits = np.empty((n, 32), np.uint8)
    digits[:, 0::2] = _HEX[raw >> 4]
    digits[:, 1::2] = _HEX[raw & 15]
    text[:, _DIGITS] = digits
    offsets = np.arange(0, 36 * (n + 1), 36, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text.tobytes()))


def labels(arr: pa.Array, kind: IdKind) -> Ids:
    """The label of each id (see the module docstring)."""
    if kind == IdKind.INT:
        return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.int64)
    if kind == IdKind.UUID:
        raw = uuid_bytes(arr)
        offsets = np.arange(0, 16 * (raw.shape[0] + 1), 16, dtype=np.int64)
        hashed = hash_bytes(offsets, raw.reshape(-1)).view(np.int64)
    else:
        offsets, data = _string_buffers(arr)
        hashed = hash_bytes(offsets - offsets[0], data[offsets[0] : offsets[-1]]).view(np.int64)
    # -1 marks "no result" in every search answer: a hash that lands on it moves one down.
    out: Ids = np.where(hashed == NO_RESULT, NO_RESULT - 1, hashed)
    return out


def canonical_uuid(value: Any) -> str:
    """The canonical text of a UUID given as text, bytes or a ``uuid.UUID``.

    Raises:
        DataError: not a UUID.
    """
    try:
        if isinstance(value, uuid.UUID):
            return str(value)
        if isinstance(value, bytes | bytearray):
            return str(uuid.UUID(bytes=bytes(value)))
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise DataError(f"id {value!r} is not a UUID") from None


def id_array(values: Sequence[Any] | npt.NDArray[Any] | pa.Array, kind: IdKind) -> pa.Array:
    """Ids of ``kind`` as an Arrow array, each in its canonical form.

    Raises:
        DataError: a value that is not an id of this kind (a UUID that does not parse, a
            string given for integer ids, an integer out of the signed 64-bit range).
    """
    if isinstance(values, pa.Array | pa.ChunkedArray):
        arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        if arr.null_count:
            raise DataError("an id is null; every record needs an id")
        if kind == IdKind.INT:
            if not pa.types.is_integer(arr.type):
                raise DataError(f"ids must be integers for this collection, got {arr.type}")
            return arr.cast(pa.int64())
        arr = arr.cast(pa.string())
        if kind == IdKind.UUID:
            return uuid_texts(uuid_bytes(arr.cast(pa.large_string()).cast(pa.string())))
        return arr
    if kind == IdKind.INT:
        ints = np.asarray(values)
        if ints.size and not np.issubdtype(ints.dtype, np.integer):
            raise DataError(f"ids must be integers for this collection, got {ints.dtype}")
        ids64 = ints.astype(np.int64)
        if ids64.size and (ids64.min() < -MAX_ID or ids64.max() > MAX_ID):
            raise DataError(f"ids must lie within +-{MAX_ID}")
        return pa.array(ids64, pa.int64())
    if kind == IdKind.UUID:
        return pa.array([canonical_uuid(v) for v in values], pa.string())
    if any(not isinstance(v, str) for v in values):
        bad = next(v for v in values if not isinstance(v, str))
        raise DataError(f"ids are strings for this collection, got {bad!r}")
    return pa.array(list(values), pa.string())


def id_text(value: Any) -> str:
    """An id as text, for reports and the quarantine (an integer in decimal)."""
    return str(value)
