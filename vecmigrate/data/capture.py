"""Writes made to an adopted PostgreSQL source with plain SQL, brought onto the target.

The capture itself (a trigger into a change table) is :mod:`vecmigrate.stores.pgcapture`; this
is the migration's side of it: install it before the snapshot, replay it through the same path
the copy takes (the source's current rows, screened, transformed and written to the target; the
ids the source no longer holds deleted from it), tell where it stands, and remove it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.data.backfill import (
    TargetView,
    open_source,
    open_target,
    target_limits,
    target_scope,
)
from vecmigrate.data.budget import BudgetPacer
from vecmigrate.data.transforms import identity, make_transform
from vecmigrate.errors import NotFoundError, PreconditionError
from vecmigrate.model.records import IdKind
from vecmigrate.model.spec import MigrationSpec
from vecmigrate.model.tasks import CaptureResult
from vecmigrate.records.batch import Faults, Records
from vecmigrate.records.ids import id_array
from vecmigrate.records.vectors import Ids
from vecmigrate.stores import VectorStore, open_store, pgcapture
from vecmigrate.stores.pgvector import PgvectorStore


class ReplayWriter(Protocol):
    """Writes a replay's batch onto the target and keeps figures of its own current with it
    (the streamed shard checks, see ``vecmigrate.validation.stream.StreamedReplay``)."""

    def write(self, ids: pa.Array, current: Records) -> tuple[Records, Faults, pa.Array]: ...


# Opens the writer of a replay onto the target, given the source, the target and the view the
# copy writes through. None: the replay writes the target itself and keeps no figures.
WriterOpener = Callable[[VectorStore, VectorStore, TargetView], ReplayWriter]


class _PlainWriter:
    """A replay's batch written as it is: the records ``view`` lets through written to
    ``store``, the ids with none deleted from it (no figures kept)."""

    def __init__(self, store: VectorStore, view: TargetView, kind: IdKind) -> None:
        self.store, self.view, self.kind = store, view, kind

    def write(self, ids: pa.Array, current: Records) -> tuple[Records, Faults, pa.Array]:
        good, faults = self.view.records(current)
        held = {str(v) for v in good.id_values()}
        gone = _ids([t for t in (str(v) for v in ids.to_pylist()) if t not in held], self.kind)
        if len(good):
            self.store.write(good)
        if len(gone):
            self.store.delete(gone)
        return good, faults, gone


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


def two_way(spec: MigrationSpec) -> bool:
    """Whether the migration also captures the writes applications make to the target by the
    stable name once the cut-over pointed it there, and replays them onto the source (so a
    rollback after the cut-over loses none of them)."""
    return spec.captures_writes and spec.cutover.stable_name is not None


def _pair(spec: MigrationSpec) -> tuple[PgvectorStore, PgvectorStore]:
    source = captured_source(spec)
    target = open_target(spec, source)
    if not isinstance(target, PgvectorStore):
        raise PreconditionError(f"{target.scope} is not a PostgreSQL table: nothing to capture")
    return source, target


def _existing_target(spec: MigrationSpec) -> PgvectorStore | None:
    """The target table when it exists (a rollback before the copy made it makes nothing)."""
    try:
        found = open_store(spec.target.store, target_scope(spec))
    except NotFoundError:
        return None
    return found if isinstance(found, PgvectorStore) else None


def install_back(spec: MigrationSpec) -> CaptureResult:
    """Start capturing the target table's writes, replayed onto the source (idempotent)."""
    _, target = _pair(spec)
    found = pgcapture.install(target, spec.migration_id, pgcapture.BACK)
    return _result(target, found)


def _applier(
    spec: MigrationSpec,
    read: PgvectorStore,
    write: PgvectorStore,
    counts: dict[str, int],
    follow: WriterOpener | None = None,
) -> Callable[[list[str]], None]:
    """What a replay does with a batch of captured ids: write the rows ``read`` holds now to
    ``write`` (screened, transformed when going to the target), and delete from ``write`` the
    ids ``read`` no longer holds. With ``follow``, a replay onto the target writes through the
    writer it opens (which keeps the shard checks the copy streamed current)."""
    # Back onto the source, rows map back as they are: a spec that transforms vectors does not
    # capture in both directions (see MigrationSpec._check_stable_name).
    transform = (
        ("identity", identity)
        if _is_source(spec, write)
        else make_transform(spec.source.embedding, spec.target.embedding)
    )
    view = TargetView(write, target_limits(spec, write), transform)
    kind = read.schema.id_kind
    # Onto the target, the streamed shard checks of the shards the replay touches are kept
    # current with it (see vecmigrate.validation.stream.StreamedReplay); back onto the source
    # there is nothing to keep.
    writer: ReplayWriter = (
        _PlainWriter(write, view, kind)
        if follow is None or _is_source(spec, write)
        else follow(read, write, view)
    )

    def apply(texts: list[str]) -> None:
        ids = _ids(texts, kind)
        good, faults, gone = writer.write(ids, read.fetch_records(ids))
        counts["upserted"] += len(good)
        counts["deleted"] += len(gone) - len(faults)
        counts["left_out"] += len(faults)

    return apply


def _is_source(spec: MigrationSpec, store: PgvectorStore) -> bool:
    return store.scope.version == spec.source.name


def replay(
    spec: MigrationSpec,
    *,
    seconds: float,
    on_progress: Callable[[int], None] | None = None,
    batch: int = 1_000,
    catalog: Catalog | None = None,
    sleep: Callable[[float], None] = time.sleep,
    follow: WriterOpener | None = None,
) -> CaptureResult:
    """Replay what was captured onto the target for at most ``seconds`` (see
    :func:`pgcapture.replay`), and, once the cut-over captures the target's writes too
    (:func:`two_way`), those onto the source; idempotent. With ``catalog``, under the spec's
    latency budget, it pauses between batches as the copy does (once each batch's transaction
    has committed: nothing is held while it waits). With ``follow``, what it writes onto the
    target goes through the writer it opens (the activity's keeps the shard checks the copy
    streamed current: see ``vecmigrate.validation.stream.StreamedReplay``)."""
    began = time.monotonic()
    source, target = _pair(spec)
    pacer = BudgetPacer(catalog, spec)

    def batch_done(applied: int) -> None:
        if on_progress is not None:
            on_progress(applied)
        wait = pacer.pause(applied)
        if wait > 0:
            sleep(min(wait, max(0.0, seconds - (time.monotonic() - began))))

    counts = {"upserted": 0, "deleted": 0, "left_out": 0}
    applied, drained = 0, True
    sides = [(source, target, "")]
    if pgcapture.find(target.engine, spec.migration_id, pgcapture.BACK) is not None:
        sides.append((target, source, pgcapture.BACK))
    for frm, to, suffix in sides:
        done = pgcapture.replay(
            frm,
            spec.migration_id,
            _applier(spec, frm, to, counts, follow),
            seconds=max(1.0, seconds - (time.monotonic() - began)) if suffix else seconds,
            batch=batch,
            on_batch=batch_done,
            suffix=suffix,
        )
        applied, drained = applied + done.applied, drained and done.drained
    result = _result(source, pgcapture.find(source.engine, spec.migration_id))
    back = pgcapture.find(target.engine, spec.migration_id, pgcapture.BACK)
    if back is not None:
        result = result.model_copy(
            update={
                "lag": result.lag + back.pending,
                "captured": result.captured + back.captured,
                "bytes": result.bytes + back.bytes,
            }
        )
    return result.model_copy(
        update={
            "applied": applied,
            "drained": drained,
            "seconds": round(time.monotonic() - began, 3),
            **counts,
        }
    )


def drain(spec: MigrationSpec, toward: str) -> int:
    """Replay every change captured on the side the stable name leaves onto the side it goes
    to (``toward``: "target" replays the source's writes, "source" the target's), until none
    is left: what the switch does while it holds the lock that keeps writers out. The number
    of changes replayed."""
    source, target = _pair(spec)
    counts = {"upserted": 0, "deleted": 0, "left_out": 0}
    if toward == "target":
        frm, to, suffix = source, target, ""
    else:
        frm, to, suffix = target, source, pgcapture.BACK
    apply = _applier(spec, frm, to, counts)
    applied = 0
    while True:
        done = pgcapture.replay(frm, spec.migration_id, apply, seconds=60.0, suffix=suffix)
        applied += done.applied
        if done.drained:
            return applied


def remove(
    spec: MigrationSpec,
    *,
    replay_first: bool,
    on_progress: Callable[[int], None] | None = None,
) -> CaptureResult:
    """Stop capturing (in both directions), replay what is left when ``replay_first`` (the
    finalize: the target ends current), then drop the change tables. Idempotent."""
    source = captured_source(spec)
    target = _existing_target(spec) if two_way(spec) else None
    pgcapture.stop(source, spec.migration_id)
    if target is not None:
        pgcapture.stop(target, spec.migration_id, pgcapture.BACK)
    result = _result(source, pgcapture.find(source.engine, spec.migration_id))
    if replay_first:
        # Nothing is captured any more: replay until the tables are empty.
        while not (result := replay(spec, seconds=60.0, on_progress=on_progress)).drained:
            pass
    if target is not None:
        pgcapture.remove(target, spec.migration_id, pgcapture.BACK)
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
