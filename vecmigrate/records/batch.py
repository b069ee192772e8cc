"""Records in a batch: ids, named vectors and payload as one Arrow record batch.

Columns are laid out from the :class:`~vecmigrate.model.records.RecordSchema`: ``id``, one
fixed-size list column per vector (``v:<name>``), one column per payload field (``p:<name>``) and
``x`` for the extra object. Arrow keeps payload-heavy records in a few contiguous buffers, so a
batch moves between engines without a Python object per value where the engines allow it, and
numpy reads its ids and vectors without copying.

Building a batch from what an engine returned also screens it (:func:`assemble`): a record with a
null vector, a vector of another dimension, NaN or infinity, or an id that occurs twice is not a
record any store can hold. It is left out of the batch and named in its :class:`Faults`, with the
reason, for the quarantine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from vecmigrate.errors import DataError
from vecmigrate.model.records import RecordSchema
from vecmigrate.records import ids as id_codec
from vecmigrate.records.checksums import Words, record_hashes
from vecmigrate.records.payload import (
    ARROW_TYPES,
    canonical_column,
    canonical_json,
    canonical_value,
    payload_hashes,
)
from vecmigrate.records.vectors import Ids, Vectors, record_norms

# Why a record was left out of a migration. The first four make a record no store can hold;
# the others are about the target (see ``vecmigrate.records.screening``).
NULL_VECTOR = "null_vector"
WRONG_DIMENSION = "wrong_dimension"
NONFINITE = "nonfinite"
DUPLICATE_ID = "duplicate_id"
ID_UNSTORABLE = "id_unstorable"
VALUE_UNSTORABLE = "value_unstorable"
PAYLOAD_TOO_LARGE = "payload_too_large"
REASONS = (
    NULL_VECTOR,
    WRONG_DIMENSION,
    NONFINITE,
    DUPLICATE_ID,
    ID_UNSTORABLE,
    VALUE_UNSTORABLE,
    PAYLOAD_TOO_LARGE,
)


def vector_column(name: str) -> str:
    """The batch column holding vector ``name``."""
    return f"v:{name}"


def payload_column(name: str) -> str:
    """The batch column holding payload field ``name``."""
    return f"p:{name}"


def arrow_schema(schema: RecordSchema) -> pa.Schema:
    """The Arrow schema of a batch of records of ``schema``."""
    fields = [pa.field("id", id_codec.arrow_type(schema.id_kind), nullable=False)]
    for v in schema.vectors:
        value = pa.float16() if v.dtype == "float16" else pa.float32()
        fields.append(pa.field(vector_column(v.name), pa.list_(value, v.dimension)))
    fields += [pa.field(payload_column(f.name), ARROW_TYPES[f.kind]) for f in schema.payload]
    if schema.extra is not None:
        fields.append(pa.field("x", pa.string()))
    return pa.schema(fields)


def fixed_list(values: npt.NDArray[Any], dtype: str) -> pa.FixedSizeListArray:
    """A 2-D array as a fixed-size list column (no copy when it is contiguous and of ``dtype``)."""
    arr = np.ascontiguousarray(values, dtype=np.float16 if dtype == "float16" else np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), int(arr.shape[1]))


def list_values(col: pa.Array, dimension: int) -> npt.NDArray[Any]:
    """A fixed-size list column as a 2-D numpy array (without copying where Arrow allows)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    n = len(col)
    if n == 0:
        return np.empty((0, dimension), np.float32)
    flat = col.values.slice(col.offset * dimension, n * dimension)
    return np.asarray(flat.to_numpy(zero_copy_only=False)).reshape(n, dimension)


class Records:
    """A batch of records of one :class:`RecordSchema`."""

    def __init__(self, schema: RecordSchema, batch: pa.RecordBatch) -> None:
        self.schema = schema
        self.batch = batch

    # -- building -------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        schema: RecordSchema,
        ids: pa.Array,
        vectors: Mapping[str, npt.NDArray[Any] | pa.Array],
        payload: Mapping[str, pa.Array] | None = None,
        extra: pa.Array | None = None,
    ) -> Records:
        """Records from columns that are already canonical and clean (see :func:`assemble`)."""
        columns: list[pa.Array] = [ids]
        for v in schema.vectors:
            values = vectors[v.name]
            columns.append(values if isinstance(values, pa.Array) else fixed_list(values, v.dtype))
        given = payload or {}
        for f in schema.payload:
            # A field left out is null in every record (a write of vectors alone).
            columns.append(given.get(f.name, pa.nulls(len(ids), ARROW_TYPES[f.kind])))
        if schema.extra is not None:
            columns.append(extra if extra is not None else pa.nulls(len(ids), pa.string()))
        return cls(schema, pa.RecordBatch.from_arrays(columns, schema=arrow_schema(schema)))

    @classmethod
    def from_numpy(cls, ids: Ids, vectors: Vectors, schema: RecordSchema | None = None) -> Records:
        """Records of integer ids and one float32 vector each, no payload."""
        if schema is None:
            schema = RecordSchema.plain(int(vectors.shape[1]))
        return cls.build(
            schema, pa.array(np.asarray(ids, np.int64)), {schema.primary.name: vectors}
        )

    @classmethod
    def empty(cls, schema: RecordSchema) -> Records:
        """No records."""
        layout = arrow_schema(schema)
        return cls(
            schema,
            pa.RecordBatch.from_arrays([pa.array([], f.type) for f in layout], schema=layout),
        )

    @staticmethod
    def concat(parts: Sequence[Records], schema: RecordSchema) -> Records:
        """One batch of several (in their order)."""
        batches = [p.batch for p in parts if len(p)]
        if not batches:
            return Records.empty(schema)
        if len(batches) == 1:
            return Records(schema, batches[0])
        return Records(schema, pa.concat_batches(batches))

    # -- reading --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.batch.num_rows)

    @property
    def nbytes(self) -> int:
        """Bytes of the records' columns: ids, vectors and payload."""
        return int(self.batch.nbytes)

    @property
    def ids(self) -> pa.Array:
        """The ids as the source has them (integers, or canonical text)."""
        return self.batch.column(0)

    @cached_property
    def labels(self) -> Ids:
        """Each record's 64-bit label (its id, for integer ids)."""
        return id_codec.labels(self.ids, self.schema.id_kind)

    def vector_arrow(self, name: str | None = None) -> pa.FixedSizeListArray:
        """Vector ``name`` (the primary one by default) as its Arrow column."""
        return self.batch.column(vector_column(self.schema.vector(name).name))

    def vectors(self, name: str | None = None) -> Vectors:
        """Vector ``name`` (the primary one by default) as float32 rows."""
        field_ = self.schema.vector(name)
        raw = list_values(self.vector_arrow(field_.name), field_.dimension)
        return np.asarray(raw, dtype=np.float32)

    def raw_vectors(self, name: str | None = None) -> npt.NDArray[Any]:
        """Vector ``name`` in the dtype it is held in (float16 stays float16)."""
        field_ = self.schema.vector(name)
        return list_values(self.vector_arrow(field_.name), field_.dimension)

    def payload(self, name: str) -> pa.Array:
        """Payload field ``name``."""
        return self.batch.column(payload_column(self.schema.field(name).name))

    @property
    def extra(self) -> pa.Array | None:
        """The extra object of each record (canonical JSON, null when it has no extra key)."""
        return self.batch.column("x") if self.schema.extra is not None else None

    def payload_columns(self) -> dict[str, pa.Array]:
        """Every payload field's column, by name."""
        return {f.name: self.payload(f.name) for f in self.schema.payload}

    def id_values(self) -> list[Any]:
        """The ids as Python values (``int`` or ``str``)."""
        values: list[Any] = self.ids.to_pylist()
        return values

    def hashes(self) -> Words:
        """Each record's checksum hash (id, every vector, payload), read-only.

        Computed once per batch: the copy's checksum, the shard's streamed profiles and its
        read-back sample all take the same batch's hashes (the batch is immutable Arrow).
        """
        return self._hashes

    @cached_property
    def _hashes(self) -> Words:
        ordered = [self.schema.primary.name, *sorted(v.name for v in self.schema.vectors[1:])]
        vectors = [self.vectors(name) for name in ordered]
        payload = self._payload_hashes if self.schema.has_payload else None
        hashes = record_hashes(self.labels, vectors, payload)
        hashes.flags.writeable = False
        return hashes

    def norms(self) -> npt.NDArray[np.float64]:
        """Each record's primary vector norm as a shard profile counts it (NaN for a vector
        that is not finite), read-only; computed once per batch, like :meth:`hashes`: both
        profiles of a streamed shard check and each record's share of them take it."""
        return self._norms

    @cached_property
    def _norms(self) -> npt.NDArray[np.float64]:
        norms = record_norms(self.vectors())
        norms.flags.writeable = False
        return norms

    def payload_only_hashes(self) -> Words:
        """Each record's payload hash alone (zero without payload), read-only.

        Computed once per batch, like :meth:`hashes` (which folds it in): the copy's checksum,
        the streamed profiles and each record's share of them all take it.
        """
        if not self.schema.has_payload:
            return np.zeros(len(self), np.uint64)
        return self._payload_hashes

    @cached_property
    def _payload_hashes(self) -> Words:
        hashes = payload_hashes(self.schema, self.payload_columns(), self.extra)
        hashes.flags.writeable = False
        return hashes

    # -- deriving -------------------------------------------------------------------------------

    def filter(self, keep: npt.NDArray[np.bool_]) -> Records:
        """The records where ``keep`` is true, in order."""
        if keep.all():
            return self
        out = Records(self.schema, self.batch.filter(pa.array(keep)))
        if "labels" in self.__dict__:
            out.__dict__["labels"] = self.labels[keep]
        return out

    def take(self, rows: npt.NDArray[np.int64]) -> Records:
        """The records at ``rows``, in that order."""
        out = Records(self.schema, self.batch.take(pa.array(rows)))
        if "labels" in self.__dict__:
            out.__dict__["labels"] = self.labels[rows]
        return out

    def slice(self, start: int, stop: int) -> Records:
        """Records ``start`` to ``stop``."""
        out = Records(self.schema, self.batch.slice(start, stop - start))
        if "labels" in self.__dict__:
            out.__dict__["labels"] = self.labels[start:stop]
        return out

    def with_vectors(self, values: Vectors, name: str | None = None) -> Records:
        """The same records with vector ``name`` (the primary one) replaced by ``values``
        (float32: a transform's or a model's output is not narrowed)."""
        field_ = self.schema.vector(name)
        schema = self.schema
        if field_.dtype != "float32" or field_.dimension != values.shape[1]:
            replaced = field_.model_copy(update={"dtype": "float32", "dimension": values.shape[1]})
            schema = schema.model_copy(
                update={
                    "vectors": tuple(
                        replaced if v.name == field_.name else v for v in schema.vectors
                    )
                }
            )
        columns = list(self.batch.columns)
        columns[self.batch.schema.get_field_index(vector_column(field_.name))] = fixed_list(
            values, "float32"
        )
        out = Records(schema, pa.RecordBatch.from_arrays(columns, schema=arrow_schema(schema)))
        if "labels" in self.__dict__:
            out.__dict__["labels"] = self.labels
        return out

    def conform(self, schema: RecordSchema) -> Records:
        """These records in ``schema``'s layout: same fields, vectors widened to float32 where
        ``schema`` holds float32 (float16 values are kept exactly).

        Raises:
            DataError: ``schema`` lacks a field these records have, or differs in kind.
        """
        if schema == self.schema:
            return self
        if schema.id_kind != self.schema.id_kind:
            raise DataError(
                f"records have {self.schema.id_kind} ids; the store holds {schema.id_kind}"
            )
        vectors: dict[str, pa.Array] = {}
        for v in schema.vectors:
            mine = self.schema.vector(v.name)
            if mine.dimension != v.dimension:
                raise DataError(
                    f"vector {v.name!r} has dimension {mine.dimension}; the store holds "
                    f"{v.dimension}"
                )
            col = self.vector_arrow(v.name)
            vectors[v.name] = (
                col if mine.dtype == v.dtype else fixed_list(self.raw_vectors(v.name), v.dtype)
            )
        payload = {}
        for f in schema.payload:
            mine_f = self.schema.field(f.name)
            if mine_f.kind != f.kind:
                raise DataError(f"field {f.name!r} is {mine_f.kind} here and {f.kind} in the store")
            payload[f.name] = self.payload(f.name)
        missing = {f.name for f in self.schema.payload} - {f.name for f in schema.payload}
        if missing or (self.schema.extra is not None and schema.extra is None):
            raise DataError(
                f"the store has no place for fields {sorted(missing) or ['extra']}; create the "
                "target from the source's schema"
            )
        return Records.build(schema, self.ids, vectors, payload, self.extra)


# A screening check: which records fail it, the reason they are left out, and what was found.
Check = tuple[npt.NDArray[np.bool_], str, str]


@dataclass
class Faults:
    """Records left out of a batch: each one's id (as text), reason and what was found."""

    ids: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, record_id: Any, reason: str, detail: str) -> None:
        """Note one record."""
        self.ids.append(id_codec.id_text(record_id))
        self.reasons.append(reason)
        self.details.append(detail)

    def flag(self, ids: pa.Array, checks: Sequence[Check]) -> npt.NDArray[np.bool_]:
        """Note every record a check's mask marks, under the first check that marks it (the
        reason and detail it names); which records were noted."""
        bad = np.zeros(len(ids), bool)
        for mask, reason, detail in checks:
            hit = mask & ~bad
            if hit.any():
                for i in np.flatnonzero(hit).tolist():
                    self.add(ids[i].as_py(), reason, detail)
                bad |= hit
        return bad

    def extend(self, other: Faults) -> None:
        """Note every record of ``other``."""
        self.ids += other.ids
        self.reasons += other.reasons
        self.details += other.details

    def counts(self) -> dict[str, int]:
        """Ids left out per reason (an id that occurs twice counts once, as the quarantine
        lists it once)."""
        out: dict[str, int] = {}
        for r, _ in set(zip(self.reasons, self.ids, strict=True)):
            out[r] = out.get(r, 0) + 1
        return out


RawVectors = npt.NDArray[Any] | Sequence[Any]


def _vector_rows(
    raw: RawVectors, dimension: int, dtype: str
) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
    """Rows of one vector field as a 2-D array, which rows are null, and each row's length
    (rows that are null or of another length are zero in the array)."""
    np_dtype = np.float16 if dtype == "float16" else np.float32
    if isinstance(raw, np.ndarray) and raw.ndim == 2:
        n = raw.shape[0]
        if raw.shape[1] == dimension:
            return (
                np.ascontiguousarray(raw, dtype=np_dtype),
                np.zeros(n, bool),
                np.full(n, dimension, np.int64),
            )
        return np.zeros((n, dimension), np_dtype), np.zeros(n, bool), np.full(n, raw.shape[1])
    n = len(raw)
    out = np.zeros((n, dimension), np_dtype)
    null = np.zeros(n, bool)
    lengths = np.zeros(n, np.int64)
    for i, row in enumerate(raw):
        if row is None:
            null[i] = True
            continue
        values = np.asarray(row, dtype=np_dtype) if not isinstance(row, np.ndarray) else row
        lengths[i] = values.shape[0] if values.ndim == 1 else -1
        if lengths[i] == dimension:
            out[i] = values
    return out, null, lengths


def assemble(
    schema: RecordSchema,
    ids: pa.Array,
    vectors: Mapping[str, RawVectors],
    payload: Mapping[str, pa.Array] | None = None,
    extra: pa.Array | None = None,
) -> tuple[Records, Faults]:
    """Records from what an engine returned, screened: a record with a null vector, one of the
    wrong dimension, a NaN or infinite value, or an id that occurs more than once in the batch
    is left out and named in the faults (scans keep every row of an id in one batch, so an id
    repeated anywhere in a shard is caught).

    ``vectors`` holds, per vector field, a 2-D array or one row per record (``None`` for a null
    vector).
    """
    n = len(ids)
    clean: dict[str, npt.NDArray[Any]] = {}
    reasons: list[Check] = []
    for v in schema.vectors:
        rows, null, lengths = _vector_rows(vectors[v.name], v.dimension, v.dtype)
        wrong = ~null & (lengths != v.dimension)
        finite = np.isfinite(rows).all(axis=1)
        nonfinite = ~null & ~wrong & ~finite
        reasons += [
            (null, NULL_VECTOR, f"vector {v.name!r} is null"),
            (wrong, WRONG_DIMENSION, f"vector {v.name!r} has another dimension than {v.dimension}"),
            (nonfinite, NONFINITE, f"vector {v.name!r} holds NaN or infinity"),
        ]
        clean[v.name] = rows
    if n > 1:
        label = id_codec.labels(ids, schema.id_kind)
        order = np.argsort(label, kind="stable")
        ranked = label[order]
        same = ranked[1:] == ranked[:-1]
        repeated = np.zeros(n, bool)
        repeated[order[1:][same]] = True
        repeated[order[:-1][same]] = True
        reasons.append((repeated, DUPLICATE_ID, "the id occurs more than once in the source"))
    faults = Faults()
    bad = faults.flag(ids, reasons)
    records = Records.build(schema, ids, clean, payload, extra)
    if bad.any():
        records = records.filter(~bad)
    return records, faults


def assemble_rows(
    schema: RecordSchema,
    ids: Sequence[Any],
    vectors: Mapping[str, RawVectors],
    payloads: Sequence[Mapping[str, Any] | None],
    *,
    hidden: frozenset[str] = frozenset(),
) -> tuple[Records, Faults]:
    """Records from JSON-like payload objects (Qdrant points, Milvus rows), screened like
    :func:`assemble`.

    Each declared field takes its value from the object (missing is null); every other key
    (except ``hidden`` ones, such as a shard key the store keeps) goes into the extra object,
    or, when the schema has none, makes the record a fault: nothing is dropped in silence. A
    value that is not of its field's kind makes the record a fault too.
    """
    n = len(ids)
    declared = {f.name for f in schema.payload}
    bad: dict[int, str] = {}
    extras: list[str | None] = []
    columns: dict[str, list[Any]] = {f.name: [None] * n for f in schema.payload}
    for i, obj in enumerate(payloads):
        found = obj or {}
        rest = {k: v for k, v in found.items() if k not in declared and k not in hidden}
        if rest and schema.extra is None:
            bad[i] = f"payload keys {sorted(rest)[:5]} are not fields of the schema"
        extras.append(canonical_json(rest) if rest else None)
        for f in schema.payload:
            value = found.get(f.name)
            if value is None:
                continue
            try:
                columns[f.name][i] = canonical_value(value, f)
            except DataError as exc:
                bad.setdefault(i, str(exc))
    faults = Faults()
    for i, detail in sorted(bad.items()):
        faults.add(ids[i], VALUE_UNSTORABLE, detail)
    rows = [i for i in range(n) if i not in bad]
    kept_vectors = {
        name: (raw[rows] if isinstance(raw, np.ndarray) else [raw[i] for i in rows])
        for name, raw in vectors.items()
    }
    payload_arrays = {
        f.name: canonical_column([columns[f.name][i] for i in rows], f.kind) for f in schema.payload
    }
    extra = pa.array([extras[i] for i in rows], pa.string()) if schema.extra is not None else None
    kept_ids = id_codec.id_array([ids[i] for i in rows], schema.id_kind)
    records, more = assemble(schema, kept_ids, kept_vectors, payload_arrays, extra)
    faults.extend(more)
    return records, faults
