"""What a record is, as data: the kinds of ids, vectors and payload fields a collection holds, and
payload filters.

A record is an id as the source has it (an integer, a string or a UUID), one or more named dense
vectors, and a payload: the source's other fields with their kinds and nulls. A
:class:`RecordSchema` says which, for one version of a collection; every store adapter reads and
writes records through it, and the checksums, profiles and filters follow it. Pure data, so specs,
the catalog and the activities share it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vecmigrate.errors import DataError
from vecmigrate.model.base import FrozenModel as _Model

FIELD_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
FieldName = Annotated[str, Field(pattern=FIELD_PATTERN)]


class IdKind(StrEnum):
    """How a collection identifies its records."""

    INT = "int"  # a signed 64-bit integer
    STRING = "string"  # any text (UTF-8)
    UUID = "uuid"  # a UUID, written in its canonical lower-case form


class FieldKind(StrEnum):
    """The kinds of payload values, each with one canonical form (the checksum hashes it).

    Engine types map onto these: PostgreSQL ``integer`` and Milvus ``INT32`` are ``int``, ``real``
    and ``double precision`` are ``float``, ``varchar`` and ``uuid`` are ``text``, ``jsonb``,
    arrays and Milvus ``ARRAY`` are ``json`` (compact JSON with sorted keys), ``timestamptz``
    is ``timestamp`` (microseconds since 1970-01-01 UTC).
    """

    BOOL = "bool"
    INT = "int"
    FLOAT = "float"
    TEXT = "text"
    TIMESTAMP = "timestamp"
    JSON = "json"


class VectorField(_Model):
    """One named dense vector of a record."""

    name: FieldName
    dimension: int = Field(ge=1, le=65536)
    # float16 is kept where both sides hold it (pgvector halfvec, Qdrant float16, Milvus
    # FLOAT16_VECTOR); elsewhere it is widened to float32, which holds every float16 exactly.
    dtype: Literal["float32", "float16"] = "float32"
    # The distance the source indexes this vector with (targets index it the same way).
    metric: Literal["l2", "ip", "cosine"] | None = None


class PayloadField(_Model):
    """One payload field: its name, its kind, and what the source declared it as."""

    name: FieldName
    kind: FieldKind
    # The engine's own type where the source declared one (``numeric(10,2)``, ``varchar(200)``,
    # ``VARCHAR(512)``): a target in the same engine declares the same.
    native: str | None = None
    nullable: bool = True
    # Whether the source keeps an index on it (Qdrant payload index, Milvus scalar index,
    # PostgreSQL btree or GIN index): the target gets one too.
    indexed: bool = False


class RecordSchema(_Model):
    """The shape of every record of one version: id kind, named vectors, payload fields.

    ``vectors[0]`` is the primary vector: the one the version's embedding and index describe,
    that searches and gates use; the others are carried byte for byte. ``extra`` names the field
    that holds payload keys outside ``payload`` as one JSON object (schemaless sources, such as
    Qdrant payloads and Milvus dynamic fields, can hold keys no sample saw: they are kept there,
    never dropped).
    """

    id_kind: IdKind = IdKind.INT
    id_name: FieldName = "id"
    vectors: tuple[VectorField, ...] = Field(min_length=1)
    payload: tuple[PayloadField, ...] = ()
    extra: FieldName | None = None

    @model_validator(mode="after")
    def _distinct_names(self) -> Self:
        names = [self.id_name, *(v.name for v in self.vectors), *(f.name for f in self.payload)]
        if self.extra is not None:
            names.append(self.extra)
        repeated = sorted(n for n, times in Counter(names).items() if times > 1)
        if repeated:
            raise ValueError(f"field names {repeated} are used twice; each field needs its own")
        return self

    @classmethod
    def plain(cls, dimension: int, vector: str = "embedding") -> RecordSchema:
        """Integer ids and one float32 vector, no payload (what ``seed`` makes)."""
        return cls(vectors=(VectorField(name=vector, dimension=dimension),))

    @property
    def primary(self) -> VectorField:
        """The vector the version's embedding and index describe."""
        return self.vectors[0]

    @property
    def has_payload(self) -> bool:
        """Whether records carry anything beside their id and vectors."""
        return bool(self.payload) or self.extra is not None

    @property
    def is_plain(self) -> bool:
        """Integer ids, one float32 vector, no payload: the layout of ``seed``'s stores."""
        return (
            self.id_kind == IdKind.INT
            and len(self.vectors) == 1
            and self.vectors[0].dtype == "float32"
            and not self.has_payload
        )

    def shape(self) -> RecordSchema:
        """This schema without the vectors' metrics (which belong to a version's embedding, not
        to its records): two stores hold the same records when their shapes are equal."""
        return self.model_copy(
            update={"vectors": tuple(v.model_copy(update={"metric": None}) for v in self.vectors)}
        )

    def field(self, name: str) -> PayloadField:
        """The payload field called ``name``.

        Raises:
            DataError: there is none.
        """
        for f in self.payload:
            if f.name == name:
                return f
        known = ", ".join(f.name for f in self.payload) or "none"
        raise DataError(f"no payload field {name!r} (fields: {known})")

    def vector(self, name: str | None) -> VectorField:
        """The vector called ``name`` (the primary one for ``None``).

        Raises:
            DataError: there is none.
        """
        if name is None:
            return self.primary
        for v in self.vectors:
            if v.name == name:
                return v
        raise DataError(f"no vector {name!r} (vectors: {', '.join(v.name for v in self.vectors)})")


# -- payload filters ----------------------------------------------------------------------------

Scalar = bool | int | float | str


class FieldCondition(_Model):
    """A condition on one payload field: equality, set membership, a range, or null-ness.

    Range bounds of a ``timestamp`` field are RFC 3339 strings or microseconds since 1970.
    """

    field: FieldName
    eq: Scalar | None = None
    in_: tuple[Scalar, ...] | None = Field(default=None, alias="in")
    gt: float | int | str | None = None
    gte: float | int | str | None = None
    lt: float | int | str | None = None
    lte: float | int | str | None = None
    is_null: bool | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_test(self) -> Self:
        ranged = any(b is not None for b in (self.gt, self.gte, self.lt, self.lte))
        tests = sum([self.eq is not None, self.in_ is not None, ranged, self.is_null is not None])
        if tests != 1:
            raise ValueError(
                f"a condition on {self.field!r} needs exactly one test: eq, in, a range "
                "(gt/gte/lt/lte) or is_null"
            )
        if self.in_ is not None and not self.in_:
            raise ValueError(f"'in' on {self.field!r} lists no value; give at least one")
        return self

    @property
    def bounds(self) -> dict[str, float | int | str]:
        """The range bounds that are set, by name (gt, gte, lt, lte)."""
        out = {"gt": self.gt, "gte": self.gte, "lt": self.lt, "lte": self.lte}
        return {k: v for k, v in out.items() if v is not None}


class AndFilter(_Model):
    """Every one of the filters holds."""

    and_: tuple[Filter, ...] = Field(alias="and", min_length=1)
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class OrFilter(_Model):
    """At least one of the filters holds."""

    or_: tuple[Filter, ...] = Field(alias="or", min_length=1)
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class NotFilter(_Model):
    """The filter does not hold."""

    not_: Filter = Field(alias="not")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


Filter = FieldCondition | AndFilter | OrFilter | NotFilter


def parse_filter(data: Any) -> Filter:
    """A filter from its JSON form.

    ``{"field": "lang", "eq": "en"}``, ``{"field": "year", "gte": 2020, "lt": 2024}``,
    ``{"field": "tag", "in": ["a", "b"]}``, ``{"field": "deleted_at", "is_null": true}``, and
    ``{"and": [...]}``, ``{"or": [...]}``, ``{"not": {...}}`` around them.

    Raises:
        DataError: naming what is wrong with it.
    """
    if not isinstance(data, dict):
        raise DataError(f"a filter is a JSON object, not {type(data).__name__}")
    keys = set(data)
    model: type[BaseModel]
    if "field" in keys:
        model = FieldCondition
    elif keys == {"and"}:
        model = AndFilter
    elif keys == {"or"}:
        model = OrFilter
    elif keys == {"not"}:
        model = NotFilter
    else:
        raise DataError(
            f"a filter has 'field' (a condition) or exactly one of 'and', 'or', 'not'; got "
            f"{sorted(keys)}"
        )
    try:
        if model is FieldCondition:
            return FieldCondition.model_validate(data)
        if model is NotFilter:
            return NotFilter(**{"not": parse_filter(data["not"])})
        items = data["and" if model is AndFilter else "or"]
        if not isinstance(items, list) or not items:
            raise DataError(f"'{next(iter(keys))}' takes a non-empty list of filters")
        parts = tuple(parse_filter(item) for item in items)
        return AndFilter(**{"and": parts}) if model is AndFilter else OrFilter(**{"or": parts})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'filter'}: "
            f"{e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise DataError(f"invalid filter: {problems}") from None


_T = TypeVar("_T")


def fold_filter(
    flt: Filter,
    leaf: Callable[[FieldCondition], _T],
    negate: Callable[[_T], _T],
    all_of: Callable[[Sequence[_T]], _T],
    any_of: Callable[[Sequence[_T]], _T],
) -> _T:
    """``flt`` folded bottom-up: each condition through ``leaf``, each ``not`` through ``negate``
    and each ``and``/``or`` through ``all_of``/``any_of`` (its parts' results in their order)."""

    def fold(f: Filter) -> _T:
        if isinstance(f, FieldCondition):
            return leaf(f)
        if isinstance(f, NotFilter):
            return negate(fold(f.not_))
        if isinstance(f, AndFilter):
            return all_of([fold(p) for p in f.and_])
        return any_of([fold(p) for p in f.or_])

    return fold(flt)


def _union(parts: Sequence[set[str]]) -> set[str]:
    return set().union(*parts)


def filter_fields(flt: Filter) -> set[str]:
    """Every payload field a filter tests."""
    return fold_filter(flt, lambda c: {c.field}, lambda s: s, _union, _union)


AndFilter.model_rebuild()
OrFilter.model_rebuild()
NotFilter.model_rebuild()
