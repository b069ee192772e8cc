"""Writes made to an adopted PostgreSQL source with plain SQL, brought onto the target.

The capture itself (a trigger into a change table) is :mod:`vecmigrate.stores.pgcapture`; this
is the migration's side of it: install it before the snapshot, replay it through the same path
the copy takes (the source's current rows, screened, transformed and written to the target; the
ids the source no longer holds deleted from it), tell where it stands, and remove it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from vecmigrate.data.backfill import as_target, open_source, open_target, target_limits
from vecmigrate.data.transforms import make_transform
from vecmigrate.errors import PreconditionError
from vecmigrate.model.records import IdKind
from vecmigrate.model.spec import MigrationSpec
from vecmigrate.model.tasks import CaptureResult
from vecmigrate.records.batch import Records
from vecmigrate.records.ids import id_array
from vecmigrate.records.vectors import Ids
from vecmigrate.stores import pgcapture
from vecmigrate.stores.pgvector import PgvectorStore


def captured_source(spec: MigrationSpec) -> PgvectorStore:
    """The source table whose writes the migration captures.

    Raises:
        PreconditionError: the spec captures nothing, or its source is not a PostgreSQL table.
    """
    if not spec.captures_writes:
        raise PreconditionError(
            f"{spec.migration_id} does not capture writes to its source (see online.capture)"
        )
    source = open_source(spec)
    if not isinstance(source, PgvectorStore):
        raise PreconditionError(f"{source.scope} is not a PostgreSQL table: nothing to capture")
    return source


def install(spec: MigrationSpec) -> CaptureResult:
    """Start capturing the source's writes (idempotent)."""
    source = captured_source(spec)
    return _result(source, pgcapture.install(source, spec.migration_id))


def replay(
    spec: MigrationSpec,
    *,
    seconds: float,
    on_progress: Callable[[int], None] | None = None,
    batch: int = 1_000,
) -> CaptureResult:
    """Replay what was captured onto the target for at most ``seconds`` (see
    :func:`pgcapture.replay`); idempotent."""
    began = time.monotonic()
    source = captured_source(spec)
    target = open_target(spec, source)
    limits = target_limits(spec, target)
    name, made = make_transform(spec.source.embedding, spec.target.embedding)
    transform = None if name == "identity" else made
    counts = {"upserted": 0, "deleted": 0, "left_out": 0}

    def apply(texts: list[str]) -> None:
        ids = _ids(texts, source.schema.id_kind)
        current = source.fetch_records(ids)
        good, faults = as_target(current, target, limits, transform)
        held = {str(v) for v in good.id_values()}
        gone = [t for t in (str(v) for v in ids.to_pylist()) if t not in held]
        if len(good):
            target.write(good)
        if gone:
            target.delete(_ids(gone, source.schema.id_kind))
        counts["upserted"] += len(good)
        counts["deleted"] += len(gone) - len(faults)
        counts["left_out"] += len(faults)

    done = pgcapture.replay(
        source, spec.migration_id, apply, seconds=seconds, batch=batch, on_batch=on_progress
    )
    result = _result(source, pgcapture.find(source.engine, spec.migration_id))
    return result.model_copy(
        update={
            "applied": done.applied,
            "drained": done.drained,
            "seconds": round(time.monotonic() - began, 3),
            **counts,
        }
    )


def remove(
    spec: MigrationSpec,
    *,
    replay_first: bool,
    on_progress: Callable[[int], None] | None = None,
) -> CaptureResult:
    """Stop capturing, replay what is left when ``replay_first`` (the finalize: the target
    ends current), then drop the change table. Idempotent."""
    source = captured_source(spec)
    pgcapture.stop(source, spec.migration_id)
    result = _result(source, pgcapture.find(source.engine, spec.migration_id))
    if replay_first:
        # Nothing is captured any more: replay until the table is empty.
        while not (result := replay(spec, seconds=60.0, on_progress=on_progress)).drained:
            pass
    pgcapture.remove(source, spec.migration_id)
    return result.model_copy(update={"removed": True, "lag": 0 if replay_first else result.lag})


def captured_ids(spec: MigrationSpec) -> Ids:
    """Labels of the records with a captured change not yet replayed (empty when the spec
    captures nothing or the capture is gone): the validation leaves them out, as it does the
    change log's, since the two sides may differ there until the next replay."""
    if not spec.captures_writes:
        return np.empty(0, np.int64)
    source = captured_source(spec)
    texts = pgcapture.pending_ids(source.engine, spec.migration_id)
    if not texts:
        return np.empty(0, np.int64)
    ids = _ids(texts, source.schema.id_kind)
    return Records(source.schema, pa.RecordBatch.from_arrays([ids], names=["id"])).labels


def _ids(texts: list[str], kind: IdKind) -> Any:
    """Captured ids (text, as the trigger wrote them) as ids of the table's kind."""
    return id_array([int(t) for t in texts] if kind == IdKind.INT else texts, kind)


def _result(source: PgvectorStore, capture: pgcapture.Capture | None) -> CaptureResult:
    if capture is None:
        return CaptureResult(table="", drained=True, removed=True)
    return CaptureResult(
        table=capture.table,
        captured=capture.captured,
        lag=capture.pending,
        bytes=capture.bytes,
        created_at=capture.created_at.isoformat(),
    )
