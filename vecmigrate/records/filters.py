"""Payload filters checked against a schema, and evaluated over a batch of records.

One meaning for every engine: a condition on a field never holds for a record whose field is
null (``is_null`` excepted), and ``not`` holds wherever its filter does not (a null field
included), as Qdrant's ``must_not`` does. Each engine's translation keeps this meaning
(PostgreSQL's ``NOT`` is written ``IS NOT TRUE`` for it).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from vecmigrate.errors import DataError
from vecmigrate.model.records import (
    AndFilter,
    FieldCondition,
    FieldKind,
    Filter,
    NotFilter,
    OrFilter,
    RecordSchema,
    Scalar,
    fold_filter,
)
from vecmigrate.records.batch import Records
from vecmigrate.records.payload import scalar_value

Mask = npt.NDArray[np.bool_]


def _value(value: Scalar, kind: FieldKind, name: str) -> Scalar:
    """A filter value as the field's canonical value (a timestamp in microseconds)."""
    out = scalar_value(value, kind)
    if out is None:
        raise DataError(f"filter on {name!r} compares a {kind} field with {value!r}")
    return out


def normalize(flt: Filter, schema: RecordSchema) -> Filter:
    """``flt`` checked against ``schema``, its values in canonical form.

    Raises:
        DataError: an unknown field, a JSON field (not filterable), a value of the wrong kind, or
            a range on a field without order (text, bool).
    """
    return fold_filter(flt, lambda cond: _normalize_condition(cond, schema), _not, _and, _or)


def _not(inner: Filter) -> Filter:
    return NotFilter(**{"not": inner})


def _and(parts: Sequence[Filter]) -> Filter:
    return AndFilter(**{"and": tuple(parts)})


def _or(parts: Sequence[Filter]) -> Filter:
    return OrFilter(**{"or": tuple(parts)})


def _normalize_condition(flt: FieldCondition, schema: RecordSchema) -> FieldCondition:
    f = schema.field(flt.field)
    if f.kind == FieldKind.JSON:
        raise DataError(f"field {f.name!r} holds JSON documents; filter on scalar fields only")
    if flt.is_null is not None:
        return flt
    if flt.eq is not None:
        return flt.model_copy(update={"eq": _value(flt.eq, f.kind, f.name)})
    if flt.in_ is not None:
        return flt.model_copy(update={"in_": tuple(_value(v, f.kind, f.name) for v in flt.in_)})
    if f.kind in (FieldKind.TEXT, FieldKind.BOOL):
        raise DataError(f"field {f.name!r} is {f.kind}: ranges apply to numbers and timestamps")
    bounds = {k: _value(v, f.kind, f.name) for k, v in flt.bounds.items()}
    return flt.model_copy(update=bounds)


def _condition(cond: FieldCondition, records: Records) -> Mask:
    kind = records.schema.field(cond.field).kind
    col = records.payload(cond.field)
    if kind == FieldKind.TIMESTAMP:
        col = col.cast(pa.int64())
    if cond.is_null is not None:
        nulls = np.asarray(col.is_null().to_numpy(zero_copy_only=False), bool)
        return nulls if cond.is_null else ~nulls
    if cond.eq is not None:
        hit = pc.equal(col, pa.scalar(cond.eq, col.type))
    elif cond.in_ is not None:
        hit = pc.is_in(col, value_set=pa.array(list(cond.in_), col.type))
        hit = pc.and_(hit, col.is_valid())
    else:
        hit = pa.array(np.ones(len(col), bool))
        ops = {"gt": pc.greater, "gte": pc.greater_equal, "lt": pc.less, "lte": pc.less_equal}
        for name, bound in cond.bounds.items():
            hit = pc.and_(hit, ops[name](col, pa.scalar(bound, col.type)))
    return np.asarray(hit.fill_null(False).to_numpy(zero_copy_only=False), bool)


def evaluate(flt: Filter, records: Records) -> Mask:
    """Which records match ``flt`` (normalised against their schema first)."""
    return _evaluate(normalize(flt, records.schema), records)


def _all_of(masks: Sequence[Mask]) -> Mask:
    return functools.reduce(np.logical_and, masks)


def _any_of(masks: Sequence[Mask]) -> Mask:
    return functools.reduce(np.logical_or, masks)


def _evaluate(flt: Filter, records: Records) -> Mask:
    return fold_filter(
        flt, lambda cond: _condition(cond, records), np.logical_not, _all_of, _any_of
    )
