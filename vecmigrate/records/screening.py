"""What a target cannot hold, checked record by record before a copy writes a batch.

Each store declares its :class:`Limits` (Qdrant's point ids are unsigned integers or UUIDs,
PostgreSQL's text cannot hold a NUL character, Milvus's VARCHAR fields have a maximum length, a
spec may cap a record's payload). :func:`screen` keeps the records within them and names the
others, with the reason, for the quarantine: bad data is reported, never dropped in silence and
never half-written.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import numpy.typing as npt
import pyarrow.compute as pc

from vecmigrate.model.records import FieldKind, IdKind
from vecmigrate.records.batch import (
    ID_UNSTORABLE,
    PAYLOAD_TOO_LARGE,
    VALUE_UNSTORABLE,
    Check,
    Faults,
    Records,
)
from vecmigrate.records.payload import value_bytes

_UINT64_MAX = (1 << 64) - 1
# Text ids a Qdrant point id holds as they are: Qdrant hands ids back in its canonical form
# (a lower-case 8-4-4-4-12 UUID, a number without leading zeros), so any other spelling of the
# same value would come back as another id.
_UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_NUMBER_PATTERN = r"^(0|[1-9][0-9]{0,19})$"


@dataclass(frozen=True)
class Limits:
    """The records a store cannot hold."""

    # "any": every id of the schema's kind; "point": Qdrant's unsigned integers or UUIDs.
    ids: Literal["any", "point"] = "any"
    # Longest id in bytes (a VARCHAR primary key).
    max_id_bytes: int | None = None
    # Longest value per text or JSON field, in bytes.
    max_value_bytes: dict[str, int] = field(default_factory=dict)
    # Longest extra object, in bytes (Milvus's dynamic field is one JSON value).
    max_extra_bytes: int | None = None
    # Whether text and JSON may hold the NUL character (PostgreSQL's cannot).
    nul: bool = True
    # Largest payload of one record (all fields together), in bytes.
    max_payload_bytes: int | None = None

    def with_payload_cap(self, cap: int | None) -> Limits:
        """These limits, with a record's payload also capped at ``cap`` bytes (the lower cap
        wins)."""
        if cap is None:
            return self
        mine = self.max_payload_bytes
        return replace(self, max_payload_bytes=cap if mine is None else min(mine, cap))


def _unstorable_ids(records: Records, limits: Limits) -> tuple[npt.NDArray[np.bool_], str]:
    ids = records.ids
    bad = np.zeros(len(records), bool)
    why = ""
    if limits.ids == "point":
        kind = records.schema.id_kind
        if kind == IdKind.INT:
            bad = np.asarray(ids.to_numpy(zero_copy_only=False)) < 0
            why = "Qdrant point ids are unsigned: a negative id cannot be stored"
        elif kind == IdKind.STRING:
            uuid_like = np.asarray(
                pc.match_substring_regex(ids, _UUID_PATTERN).to_numpy(zero_copy_only=False), bool
            )
            digits = np.asarray(
                pc.match_substring_regex(ids, _NUMBER_PATTERN).to_numpy(zero_copy_only=False), bool
            )
            small = np.array(
                [d and int(v) <= _UINT64_MAX for d, v in zip(digits, ids.to_pylist(), strict=True)],
                bool,
            )
            bad = ~(uuid_like | small)
            why = (
                "Qdrant point ids are unsigned integers or UUIDs, written back in canonical "
                "form (no leading zero; lower-case 8-4-4-4-12): another spelling would change"
            )
    if limits.max_id_bytes is not None and records.schema.id_kind != IdKind.INT:
        longer = (
            np.asarray(pc.binary_length(ids).to_numpy(zero_copy_only=False)) > limits.max_id_bytes
        )
        if longer.any():
            bad |= longer
            why = why or f"the id is longer than the target's {limits.max_id_bytes} bytes"
    return bad, why


def screen(records: Records, limits: Limits) -> tuple[Records, Faults]:
    """The records a store with ``limits`` can hold, and the others as faults."""
    faults = Faults()
    n = len(records)
    if n == 0:
        return records, faults
    checks: list[Check] = []
    ids_bad, why = _unstorable_ids(records, limits)
    checks.append((ids_bad, ID_UNSTORABLE, why))
    sizes = np.zeros(n, np.int64)
    schema = records.schema
    columns = [(f.name, f.kind, records.payload(f.name)) for f in schema.payload]
    if records.extra is not None:
        columns.append((schema.extra or "extra", FieldKind.JSON, records.extra))
    for name, kind, arr in columns:
        size = value_bytes(arr, kind)
        sizes += size
        if kind not in (FieldKind.TEXT, FieldKind.JSON):
            continue
        cap = limits.max_extra_bytes if name == schema.extra else limits.max_value_bytes.get(name)
        if cap is not None:
            checks.append(
                (
                    size > cap,
                    VALUE_UNSTORABLE,
                    f"field {name!r} is longer than the target's {cap} bytes",
                )
            )
        if not limits.nul:
            # In JSON text a NUL is written as the escape \u0000, which PostgreSQL's jsonb
            # refuses as well.
            needle = "\\u0000" if kind == FieldKind.JSON else "\x00"
            nul = np.asarray(
                pc.match_substring(arr, needle).fill_null(False).to_numpy(zero_copy_only=False),
                bool,
            )
            checks.append(
                (
                    nul,
                    VALUE_UNSTORABLE,
                    f"field {name!r} holds a NUL character, which PostgreSQL text cannot",
                )
            )
    if limits.max_payload_bytes is not None:
        checks.append(
            (
                sizes > limits.max_payload_bytes,
                PAYLOAD_TOO_LARGE,
                f"the payload is larger than the target allows ({limits.max_payload_bytes} bytes)",
            )
        )
    bad = faults.flag(records.ids, checks)
    return (records.filter(~bad) if bad.any() else records), faults


def payload_sizes(records: Records) -> npt.NDArray[np.int64]:
    """Bytes of each record's payload in its canonical form."""
    sizes = np.zeros(len(records), np.int64)
    for f in records.schema.payload:
        sizes += value_bytes(records.payload(f.name), f.kind)
    if records.extra is not None:
        sizes += value_bytes(records.extra, FieldKind.JSON)
    return sizes
