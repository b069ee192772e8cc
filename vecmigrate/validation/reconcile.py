"""Reconcile: compare a source and a target shard by shard, record by record, and repair what
differs by copying it again.

Each side of one shard is read once into a table of its records' labels with two 64-bit hashes
each: one of the id and vectors, one of the id and payload (the hashes of
:mod:`vecmigrate.records.checksums`, so a record compares equal exactly when its checksum
would). The source is seen as the target should hold it (see
:class:`~vecmigrate.data.backfill.TargetView`): records the target cannot hold are left out
(the quarantine's, never "missing"), the rest passed through the migration's transform. Memory
is bounded by one shard: 24 bytes and an id per record.

A record is ``missing`` (in the source, not the target), ``extra`` (in the target, not the
source), or on both sides with its ``vector`` or its ``payload`` different. When the migration
re-embeds (a new model), vectors cannot be compared with the source's: ids and payload are, and
the result says so (``vectors_compared``). The repair copies the missing and differing records
again from the source through the copy's own path and deletes the extra ones; a second pass
must then find nothing.

A migration's reconciler is also handed what the copy streamed (``streamed``, see
:func:`vecmigrate.validation.stream.vouch`): a shard whose figures vouch for it (the stores
still match them, both versions' figures agree) is not read in full; only the records written
during the migration, which the figures leave out, are read from both sides and compared. Any
difference, or figures that do not vouch, and the shard is read in full as above.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from vecmigrate.catalog.catalog import Catalog, now
from vecmigrate.catalog.changelog import ChangeLog
from vecmigrate.data import capture
from vecmigrate.data.backfill import (
    TargetView,
    Throttle,
    open_source,
    same_records,
    settle_from_log,
    target_scope,
)
from vecmigrate.data.budget import BudgetPacer
from vecmigrate.model.gates import DIFF_KINDS, DiffCounts, ShardReconcile
from vecmigrate.model.records import IdKind
from vecmigrate.model.spec import MigrationSpec
from vecmigrate.model.tasks import ShardRef
from vecmigrate.records.batch import Records
from vecmigrate.records.checksums import Words, record_hashes
from vecmigrate.records.ids import id_array, labels
from vecmigrate.records.screening import screen
from vecmigrate.records.vectors import Ids
from vecmigrate.stores import VectorStore, open_store
from vecmigrate.stores.base import Batch

# The router logs a write, then makes it in each version, one after the other: the change log's
# head when a pass starts can name a write not yet in both stores (the source read without it,
# the target with it, the pass would call the record extra and the repair delete it). Writes
# logged this long before a pass are counted as made during it (left out, like the later ones);
# the router makes its stores' writes within milliseconds of the entry.
WRITE_GRACE_SECONDS = 60.0


def volatile_mark(
    log: ChangeLog, tenant: str, collection: str, grace: float = WRITE_GRACE_SECONDS
) -> int:
    """The change-log position after which a pass starting now counts records as written
    during it: the newest entry logged more than ``grace`` seconds ago."""
    return log.head(tenant, collection, before=now() - timedelta(seconds=grace))


def changed_since(log: ChangeLog, spec: MigrationSpec, after: int | None) -> Callable[[], Ids]:
    """The records either version may differ in, as of each call: those written through the
    router after the change-log position ``after`` (none without one) and those written to the
    source with plain SQL whose capture is not replayed yet."""

    def changed() -> Ids:
        captured = capture.captured_ids(spec)
        if after is None:
            return captured
        return np.union1d(log.changed_ids(spec.tenant, spec.collection, after), captured)

    return changed


def during_writes(catalog: Catalog, spec: MigrationSpec, *, settle: bool = True) -> dict[str, Any]:
    """A reconciler's options for a pass that starts now while the application writes: the
    records written since a minute before it (the change log's, see :func:`volatile_mark`) and
    those written to the source with plain SQL whose capture is not replayed yet are left out,
    since the two sides may differ there for a moment; with ``settle``, a record the repair
    touched that turns out written meanwhile gets its last write again from the log (for the
    migration's own target, which the router's dual-write keeps: see
    :func:`~vecmigrate.data.backfill.settle_from_log`)."""
    log = ChangeLog(catalog)
    after = volatile_mark(log, spec.tenant, spec.collection)
    options: dict[str, Any] = {"volatile": changed_since(log, spec, after)}
    if settle:
        options["settle"] = lambda ids: settle_from_log(catalog, spec, log, after, ids)
    return options


# Called after every batch read with where the pass stands: the shard, the pass (1 or 2), the
# side and the records read so far (the activity heartbeats it).
Progress = Callable[[dict[str, Any]], None]


@dataclass
class _Side:
    """One side of a shard: each record's label, id, and its vector and payload hashes."""

    labels: list[Ids] = field(default_factory=list)
    ids: list[pa.Array] = field(default_factory=list)
    vectors: list[Words] = field(default_factory=list)
    payloads: list[Words] = field(default_factory=list)
    # Records read that no store can hold (a NaN, a wrong dimension, a repeated id): their ids.
    broken: list[str] = field(default_factory=list)

    def add(self, records: Records, compare_vectors: bool) -> None:
        labels_ = records.labels
        self.labels.append(labels_)
        self.ids.append(records.ids)
        if compare_vectors:
            schema = records.schema
            ordered = [schema.primary.name, *sorted(v.name for v in schema.vectors[1:])]
            self.vectors.append(record_hashes(labels_, [records.vectors(n) for n in ordered]))
        else:
            self.vectors.append(np.zeros(len(records), np.uint64))
        self.payloads.append(records.payload_only_hashes())

    def table(self) -> tuple[Ids, pa.Array | None, Words, Words]:
        """Labels (sorted), ids, vector hashes and payload hashes, in label order."""
        if not self.labels:
            empty = np.empty(0, np.uint64)
            return np.empty(0, np.int64), None, empty, empty
        lab = np.concatenate(self.labels)
        order = np.argsort(lab, kind="stable")
        ids = pa.concat_arrays([a.cast(self.ids[0].type) for a in self.ids]).take(pa.array(order))
        return (
            lab[order],
            ids,
            np.concatenate(self.vectors)[order],
            np.concatenate(self.payloads)[order],
        )


@dataclass
class _Ids:
    """A side's ids by label: sorted labels and the ids in that order (and a few more, by
    label, that the table lacks: the target's broken records)."""

    labels: Ids
    ids: pa.Array | None
    more: dict[int, Any] = field(default_factory=dict)

    def of(self, wanted: Ids, kind: Any) -> pa.Array:
        """The ids of ``wanted`` labels, as an Arrow array of ``kind``."""
        known = np.isin(wanted, self.labels)
        values: list[Any] = []
        if known.any() and self.ids is not None:
            rows = np.searchsorted(self.labels, wanted[known])
            values += self.ids.take(pa.array(rows)).to_pylist()
        values += [self.more[int(x)] for x in wanted[~known]]
        return id_array(values, kind)


@dataclass
class ShardDiff:
    """What differs in one shard, by label; ids as each side holds them, for the repair."""

    missing: Ids
    extra: Ids
    vector: Ids
    payload: Ids
    source: _Ids
    target: _Ids
    source_records: int
    target_records: int
    quarantined: int
    excluded: int

    def counts(self) -> DiffCounts:
        return DiffCounts(**{k: int(getattr(self, k).size) for k in DIFF_KINDS})


@dataclass(frozen=True)
class Vouched:
    """A shard the copy's streamed figures vouch for (see
    :func:`vecmigrate.validation.stream.vouch`): the stores checked out against them and both
    versions' figures agree, but for ``changed``, the shard's records written during the
    migration (labels), which they leave out; the stores' counts as checked."""

    changed: Ids
    source_records: int
    target_records: int
    quarantined: int


# A shard's streamed figures, if they vouch for it, else why not.
Vouch = Callable[[ShardRef], tuple[Vouched | None, str]]


@dataclass
class Reconciler:
    """Compares (and repairs) ``target`` against ``source`` shard by shard.

    ``view`` is how the copy writes source records into the target (what the target should
    hold, and the path the repair writes through); ``compare_vectors`` is False when vectors
    were re-embedded. ``volatile`` names the records written since a point before the pass
    (the change log's): they are left out, not repaired (dual-write keeps them). A record the
    repair wrote or deleted that turns out written meanwhile is handed to ``settle`` (labels),
    which gives it its last write again: the repair's copy, read from the source a moment
    before, may have landed after that write. At most ``max_records_per_second`` records are
    read per second (both sides counted); a ``pacer`` (the spec's latency budget) adds the
    copy's pauses between batches, read or repaired.
    """

    source: VectorStore
    target: VectorStore
    view: TargetView
    compare_vectors: bool = True
    batch_size: int = 10_000
    max_records_per_second: float | None = None
    volatile: Callable[[], Ids] | None = None
    settle: Callable[[Ids], object] | None = None
    pacer: BudgetPacer | None = None
    streamed: Vouch | None = None
    on_progress: Progress | None = None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    _throttle: Throttle | None = None

    def _batches(self, store: VectorStore, shard: ShardRef, only: Ids | None) -> Iterator[Batch]:
        """The shard's records in batches: all of them, or those of the labels ``only`` (of a
        store with integer ids, whose labels are the ids)."""
        if only is None:
            yield from store.iter_shard(shard, self.batch_size, read_ahead=True)
            return
        if only.size and store.schema.id_kind != IdKind.INT:
            raise ValueError("records are read by label only from a store of integer ids")
        for start in range(0, only.size, self.batch_size):
            chunk = only[start : start + self.batch_size]
            found = store.fetch_records(id_array(chunk, IdKind.INT))
            yield Batch(found, None)

    def _read(
        self, shard: ShardRef, side: str, pass_: int, only: Ids | None = None
    ) -> tuple[_Side, int]:
        store = self.source if side == "source" else self.target
        out, quarantined, read = _Side(), 0, 0
        if self._throttle is None:
            self._throttle = Throttle(self.clock)
        for batch in self._batches(store, shard, only):
            records = batch.records
            if side == "source":
                records, bad = screen(records, self.view.limits)
                bad.extend(batch.faults)
                quarantined += len(set(bad.ids))
                if self.compare_vectors and self.view.transform_name != "identity" and len(records):
                    records = records.with_vectors(self.view.transform(records.vectors()))
                if self.compare_vectors:
                    records = records.conform(self.view.schema)
            else:
                out.broken.extend(batch.faults.ids)
            out.add(records, self.compare_vectors)
            read += len(batch.records) + len(batch.faults)
            if self.on_progress is not None:
                cursor = batch.next_cursor.model_dump() if batch.next_cursor else None
                self.on_progress(
                    {
                        "shard": shard.index,
                        "pass": pass_,
                        "side": side,
                        "read": read,
                        "cursor": cursor,
                    }
                )
            wait = self._throttle.delay(self.max_records_per_second, len(batch.records))
            if self.pacer is not None:  # the latency budget's pause, if longer
                wait = max(wait, self.pacer.pause(len(batch.records)))
            if wait > 0:
                self.sleep(wait)
        return out, quarantined

    def diff(self, shard: ShardRef, pass_: int = 1, only: Ids | None = None) -> ShardDiff:
        """Compare one shard of both sides (with ``only``, those records of it: labels of a
        collection of integer ids)."""
        src, quarantined = self._read(shard, "source", pass_, only)
        dst, _ = self._read(shard, "target", pass_, only)
        s_lab, s_ids, s_vec, s_pay = src.table()
        t_lab, t_ids, t_vec, t_pay = dst.table()
        common, si, ti = np.intersect1d(s_lab, t_lab, assume_unique=True, return_indices=True)
        missing = np.setdiff1d(s_lab, t_lab, assume_unique=True)
        extra = np.setdiff1d(t_lab, s_lab, assume_unique=True)
        vector = common[s_vec[si] != t_vec[ti]] if self.compare_vectors else common[:0]
        payload = common[s_pay[si] != t_pay[ti]]
        target = _Ids(t_lab, t_ids)
        if dst.broken:
            # Target records no store can hold: copied again when the source has them, else
            # deleted.
            kind = self.target.schema.id_kind
            arr = id_array(dst.broken, kind)
            b_lab = labels(arr, kind)
            for label, value in zip(b_lab.tolist(), arr.to_pylist(), strict=True):
                target.more.setdefault(label, value)
            in_src = np.isin(b_lab, s_lab)
            vector = np.union1d(vector, b_lab[in_src])
            missing = np.setdiff1d(missing, b_lab)
            extra = np.union1d(extra, b_lab[~in_src])
        excluded = 0
        if self.volatile is not None:
            changed = self.volatile()
            if changed.size:
                seen = np.union1d(s_lab, t_lab)
                excluded = int(np.isin(seen, changed).sum())
                missing, extra, vector, payload = (
                    a[~np.isin(a, changed)] for a in (missing, extra, vector, payload)
                )
        return ShardDiff(
            missing=missing,
            extra=extra,
            vector=vector,
            payload=payload,
            source=_Ids(s_lab, s_ids),
            target=target,
            source_records=int(s_lab.size),
            target_records=int(t_lab.size),
            quarantined=quarantined,
            excluded=excluded,
        )

    def repair(self, diff: ShardDiff) -> DiffCounts:
        """Copy the missing and differing records again from the source (through the copy's
        path) and delete the extra ones; the records repaired, per kind."""
        again = np.union1d(np.union1d(diff.missing, diff.vector), diff.payload)
        written: list[Ids] = []
        kind = self.source.schema.id_kind
        for start in range(0, again.size, self.batch_size):
            chunk = again[start : start + self.batch_size]
            ids = diff.source.of(chunk, kind)
            records, _ = self.view.records(self.source.fetch_records(ids))
            if len(records):
                self.target.write(records)
                written.append(records.labels)
            wait = (
                self._throttle.delay(self.max_records_per_second, len(chunk))
                if self._throttle
                else 0.0
            )
            if self.pacer is not None:  # the latency budget's pause, if longer
                wait = max(wait, self.pacer.pause(len(chunk)))
            if wait > 0:
                self.sleep(wait)
        done = np.concatenate(written) if written else np.empty(0, np.int64)
        deleted = 0
        if diff.extra.size:
            t_kind = self.target.schema.id_kind
            self.target.delete(diff.target.of(diff.extra, t_kind))
            deleted = int(diff.extra.size)
        if self.settle is not None and self.volatile is not None:
            raced = np.intersect1d(np.union1d(done, diff.extra), self.volatile())
            if raced.size:
                self.settle(raced)
        return DiffCounts(
            missing=int(np.isin(diff.missing, done).sum()),
            extra=deleted,
            vector=int(np.isin(diff.vector, done).sum()),
            payload=int(np.isin(diff.payload, done).sum()),
        )

    def shard(self, shard: ShardRef, repair: bool = True) -> ShardReconcile:
        """Compare one shard; with ``repair``, repair what differs and compare it again.
        Versions that read the same records (``records: shared``) are not read at all; a shard
        the copy's streamed figures vouch for (``streamed``) is compared by reading the records
        written during the migration alone, and read in full when one of them differs."""
        began = self.clock()

        def done(**figures: Any) -> ShardReconcile:
            return ShardReconcile(
                shard=shard.index,
                vectors_compared=self.compare_vectors,
                seconds=round(self.clock() - began, 3),
                **figures,
            )

        if same_records(self.source, self.target):
            held = self.target.count(shard)
            return done(source_records=held, target_records=held, shared=True)
        basis = "read"
        if self.streamed is not None:
            vouched, why = self.streamed(shard)
            if vouched is not None:
                written = self.diff(shard, 1, only=vouched.changed)
                differ = written.counts().total()
                if not differ:
                    return done(
                        source_records=vouched.source_records,
                        target_records=vouched.target_records,
                        quarantined=vouched.quarantined,
                        excluded=written.excluded,
                        basis="streamed",
                    )
                why = f"{differ} records written during the migration differ between the versions"
            basis = f"read: {why}"
        first = self.diff(shard, 1)
        found = first.counts()
        repaired, again = DiffCounts(), None
        if repair and found.total():
            repaired = self.repair(first)
            again = self.diff(shard, 2).counts()
        return done(
            found=found,
            repaired=repaired,
            again=again,
            source_records=first.source_records,
            target_records=first.target_records,
            quarantined=first.quarantined,
            excluded=first.excluded,
            basis=basis,
        )


def open_existing_target(spec: MigrationSpec) -> VectorStore:
    """The target version's store, which must exist (a reconcile never creates one).

    Raises:
        NotFoundError: the target has not been created (nothing was copied yet).
    """
    return open_store(
        spec.target.store, target_scope(spec), metric=str(spec.target.embedding.metric)
    )


def for_migration(
    catalog: Catalog,
    spec: MigrationSpec,
    source: VectorStore | None = None,
    target: VectorStore | None = None,
    **options: Any,
) -> Reconciler:
    """A reconciler of ``spec``'s target against its source, seen through the migration (its
    quarantine rules, its transform, and its new model's re-embedding for the repair)."""
    source = source or open_source(spec)
    target = target or open_existing_target(spec)
    options.setdefault("batch_size", spec.batch_size)
    options.setdefault("pacer", BudgetPacer(catalog, spec))
    return Reconciler(
        source,
        target,
        TargetView.of(catalog, spec, target),
        compare_vectors=vectors_comparable(spec.model_change),
        **options,
    )


def vectors_comparable(model_change: bool) -> bool:
    """Whether a target's vectors can be compared with the source's seen through the
    migration's transform: not when a new model embedded them."""
    return not model_change


__all__ = [
    "Reconciler",
    "ShardDiff",
    "Vouch",
    "Vouched",
    "changed_since",
    "for_migration",
    "open_existing_target",
    "vectors_comparable",
    "volatile_mark",
]
