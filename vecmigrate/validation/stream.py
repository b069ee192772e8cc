"""Streaming verification: the shard checks' figures computed by the copy, on the batches it
already holds, instead of a second full read of both versions after the build.

As a shard is copied, :class:`ShardStream` folds every batch into the shard's profiles (the
source as seen through the transform, the target as written: the same :class:`ShardProfile`
fields the gates judge), into the exact search of the gate's queries over the written target
vectors, and into a read-back sample (the ``READBACK`` records of the shard with the smallest
hash of their id, with the checksum hash each was written with). Its state is persisted with
the shard's journal entry in the transaction that moves the copy's cursor, so a copy killed
mid-shard resumes with figures that count every batch up to its cursor exactly once.

The query sample must be fixed before the copy searches it: :func:`fixed_queries` draws it once
(as :func:`~vecmigrate.validation.run.gate_queries` does, from ``gates.seed``) and stores it in
the catalog, keyed by migration and spec hash; every copy and check of the migration uses the
stored one.

The shard check then trusts the stream only after checking the target store itself, cheaply:
its count for the shard must be what the copy wrote, and the read-back sample must come back
with the same checksum hashes (see :func:`verify`). When it cannot (the store lost or changed a
record, a record of the shard changed during the migration, the copy kept no state, the spec
asks for ``gates.deep``), the check reads both versions in full as before and says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from vecmigrate.catalog.journal import Journal, StreamRow
from vecmigrate.model.gates import ShardCheck
from vecmigrate.model.records import IdKind
from vecmigrate.model.spec import MigrationSpec
from vecmigrate.model.tasks import ShardRef
from vecmigrate.records.batch import Faults, Records
from vecmigrate.records.checksums import Words, mixed
from vecmigrate.records.ids import id_array
from vecmigrate.records.vectors import Distances, ExactKnn, Ids
from vecmigrate.stores import VectorStore
from vecmigrate.stores.base import in_shard
from vecmigrate.validation.profile import ProfileBuilder
from vecmigrate.validation.run import GateQueries, check_shard, fold_truth, gate_queries

# Records of each shard read back from the target and compared with the hash they were written
# with. The count catches a lost or added record whatever the sample; the read-back is for a
# record changed in place, which only a full read sees for certain. A shard where a fraction f
# of the records changed slips through a sample of s with probability (1 - f)^s: 1,024 catch a
# change of 0.3 % of a shard 19 times in 20 (and 1 % in all but 1 of 30,000), for one fetch of
# 1,024 records by id (0.5 MB at 128 dimensions), nothing beside a read of the whole shard.
READBACK = 1024

# Salt of the read-back sample's priority: the records chosen do not follow the id order.
_SAMPLE_SALT = np.uint64(0x5EED5A3B1EC0FFEE)


def streamable(spec: MigrationSpec) -> str:
    """Why the copy cannot stream this migration's checks ("" when it can)."""
    if spec.gates.deep:
        return "gates.deep asks for the full re-read"
    if spec.model_change:
        return (
            "a migration to a new model profiles the source as it is and draws its queries "
            "from the target's vectors: read in full"
        )
    return ""


# -- the fixed query sample -------------------------------------------------------------------


def stored_queries(journal: Journal, spec: MigrationSpec) -> GateQueries | None:
    """The query sample stored for this migration and spec, or None."""
    row = journal.gate_sample(spec.migration_id, spec.spec_hash())
    if row is None:
        return None
    meta, ids, source, target = row
    rows = int(meta["rows"])
    return GateQueries(
        None if ids is None else np.frombuffer(ids, np.int64).copy(),
        np.frombuffer(source, np.float32).reshape(rows, int(meta["source_dim"])).copy(),
        np.frombuffer(target, np.float32).reshape(rows, int(meta["target_dim"])).copy(),
        str(meta["kind"]),
        int(meta["ask"]),
        {int(k): int(v) for k, v in meta["per_shard"].items()},
    )


def fixed_queries(
    journal: Journal, spec: MigrationSpec, source: VectorStore, target: VectorStore
) -> GateQueries:
    """The gate's query sample of this migration: the stored one, or drawn now and stored (when
    two copies draw at once, the first stored wins and both use it)."""
    found = stored_queries(journal, spec)
    if found is not None:
        return found
    q = gate_queries(spec, source, target)
    journal.set_gate_sample(
        spec.migration_id,
        spec.spec_hash(),
        {
            "kind": q.kind,
            "ask": q.ask,
            "rows": int(q.source.shape[0]),
            "source_dim": int(q.source.shape[1]),
            "target_dim": int(q.target.shape[1]),
            "per_shard": {str(k): v for k, v in q.per_shard.items()},
        },
        None if q.ids is None else np.ascontiguousarray(q.ids, np.int64).tobytes(),
        np.ascontiguousarray(q.source, np.float32).tobytes(),
        np.ascontiguousarray(q.target, np.float32).tobytes(),
    )
    stored = stored_queries(journal, spec)
    assert stored is not None
    return stored


# -- the per-shard stream ----------------------------------------------------------------------


def _priority(labels: Ids) -> Words:
    """Each record's place in the read-back sample (smallest first): a hash of its id."""
    return mixed(np.ascontiguousarray(labels, np.int64).view(np.uint64) ^ _SAMPLE_SALT)


class ShardStream:
    """What a shard's copy has seen so far: both profiles, the exact search of the gate's
    queries over what it wrote, and the read-back sample."""

    def __init__(
        self, spec: MigrationSpec, shard: ShardRef, queries: GateQueries | None = None
    ) -> None:
        tol = spec.gates.integrity.unit_norm_tolerance
        self.shard = shard.index
        self.spec_hash = spec.spec_hash()
        self.digest = "" if queries is None else queries.digest()
        self.source = ProfileBuilder(tol, track_ids=False)
        self.target = ProfileBuilder(tol, track_ids=False)
        self.knn: ExactKnn | None = None if queries is None else queries.exact_search(spec)
        self.sample_ids: list[Any] = []  # as the store has them (integers or text)
        self.sample_labels = np.empty(0, np.int64)
        self.sample_hashes = np.empty(0, np.uint64)
        self.int_ids = True  # integer ids: the sample's ids are its labels
        self.complete = False

    def add(self, seen: Records, faults: Faults, written: Records) -> None:
        """Fold in one batch: ``seen``, the source's records the target can hold as the
        transform makes them, ``faults`` the ones it cannot, ``written`` what the target got."""
        self.source.add_records(seen, faults, quarantined=True)
        self.target.add_records(written)
        if not len(written):
            return
        labels = written.labels
        if self.knn is not None:
            self.knn.add(labels, written.vectors())
        pri = _priority(labels)
        if len(self.sample_labels) >= READBACK:
            worst = _priority(self.sample_labels).max()
            rows = np.flatnonzero(pri < worst)
        else:
            rows = np.arange(len(labels))
        if not rows.size:
            return
        chosen = written.take(rows.astype(np.int64))
        self.int_ids = written.schema.id_kind == IdKind.INT
        ids = self.sample_ids + chosen.id_values()
        all_labels = np.concatenate([self.sample_labels, labels[rows]])
        hashes = np.concatenate([self.sample_hashes, written.hashes()[rows]])
        keep = np.argsort(_priority(all_labels), kind="stable")[:READBACK]
        self.sample_ids = [ids[i] for i in keep.tolist()]
        self.sample_labels = all_labels[keep]
        self.sample_hashes = hashes[keep]

    def truth(self) -> tuple[Distances, Ids] | None:
        """The exact search of the gate's queries over everything written, or None."""
        return None if self.knn is None else self.knn.result()

    def row(self) -> StreamRow:
        """The state to persist with the copy's cursor."""
        state = {
            "spec_hash": self.spec_hash,
            "digest": self.digest,
            "complete": self.complete,
            "source": self.source.state(),
            "target": self.target.state(),
            # Integer ids are their labels (kept in the blob); text ids are listed.
            "sample_ids": None if self.int_ids else self.sample_ids,
        }
        sample = (
            np.ascontiguousarray(self.sample_labels, np.int64).tobytes()
            + np.ascontiguousarray(self.sample_hashes, np.uint64).tobytes()
        )
        truth = self.truth()
        if truth is None:
            return StreamRow(state, None, None, sample)
        d, i = truth
        return StreamRow(
            state,
            np.ascontiguousarray(d, np.float32).tobytes(),
            np.ascontiguousarray(i, np.int64).tobytes(),
            sample,
        )

    @classmethod
    def resume(
        cls,
        spec: MigrationSpec,
        shard: ShardRef,
        row: StreamRow,
        queries: GateQueries | None,
    ) -> ShardStream | None:
        """The stream as ``row`` left it, or None when it was kept for another spec or another
        query sample (it cannot go on then)."""
        s = cls(spec, shard, queries)
        state = row.state
        if state.get("spec_hash") != s.spec_hash or state.get("digest") != s.digest:
            return None
        s.complete = bool(state["complete"])
        s.source = ProfileBuilder.from_state(state["source"])
        s.target = ProfileBuilder.from_state(state["target"])
        words = np.frombuffer(row.sample or b"", np.int64)
        half = words.size // 2
        s.sample_labels = words[:half].copy()
        s.sample_hashes = words[half:].view(np.uint64).copy()
        listed = state.get("sample_ids")
        s.int_ids = listed is None
        s.sample_ids = s.sample_labels.tolist() if listed is None else list(listed)
        if s.knn is not None:
            if row.distances is None or row.ids is None:
                return None
            rows, ask = s.knn.d.shape
            s.knn.d = np.frombuffer(row.distances, np.float32).reshape(rows, ask).copy()
            s.knn.i = np.frombuffer(row.ids, np.int64).reshape(rows, ask).copy()
        return s

    def check(self, seconds: float = 0.0) -> ShardCheck:
        """The shard check the stream makes (nothing left out: see :func:`usable`)."""
        return ShardCheck(
            shard=self.shard,
            source=self.source.result(),
            target=self.target.result(),
            seconds=seconds,
            basis="streamed",
        )


def open_stream(
    journal: Journal,
    spec: MigrationSpec,
    shard: ShardRef,
    fresh: bool,
    source: VectorStore,
    target: VectorStore,
) -> ShardStream | None:
    """The stream a copy of ``shard`` goes on with: new when the copy starts from the beginning
    (``fresh``), else the one persisted with its cursor; None when the copy cannot stream (see
    :func:`streamable`) or resumes without a state it can go on from (it is dropped: the check
    reads the shard in full)."""
    if streamable(spec):
        return None
    queries = fixed_queries(journal, spec, source, target) if _searches(spec) else None
    if fresh:
        return ShardStream(spec, shard, queries)
    row = journal.stream(spec.migration_id, shard.index)
    found = None if row is None else ShardStream.resume(spec, shard, row, queries)
    if found is None and row is not None:
        journal.drop_stream(spec.migration_id, shard.index)
    return found


def _searches(spec: MigrationSpec) -> bool:
    """Whether the stream runs the gate's exact search (as the shard checks would fold it)."""
    return fold_truth(spec) and spec.gates.queries > 0


def usable(
    journal: Journal,
    spec: MigrationSpec,
    shard: ShardRef,
    queries: GateQueries | None,
    changed: Ids | None,
) -> tuple[ShardStream | None, str]:
    """The shard's finished stream, if the check may use it, else why not.

    ``changed`` names the records written since the migration began (the change log's and the
    capture's): a shard holding one is read in full, its figures taken without them."""
    why = streamable(spec)
    if why:
        return None, why
    row = journal.stream(spec.migration_id, shard.index)
    if row is None:
        return None, "the copy kept no streamed figures for this shard"
    stream = ShardStream.resume(spec, shard, row, queries if _searches(spec) else None)
    if stream is None:
        return None, "the streamed figures were kept for another spec or query sample"
    if not stream.complete:
        return None, "the shard's copy has not finished"
    if changed is not None and changed.size:
        n = int(in_shard(np.unique(changed), shard).sum())
        if n:
            return None, f"{n} records of the shard changed during the migration"
    return stream, ""


def verify(
    spec: MigrationSpec,
    source: VectorStore,
    target: VectorStore,
    shard: ShardRef,
    stream: ShardStream,
) -> str:
    """Check the stores against what the copy read and wrote, cheaply: the source's count for
    the shard (a record written behind the change log's back since), the target's, and the
    read-back sample's checksum hashes. "" when it holds; else what differs."""
    read = stream.source.count + sum(stream.source.left_out.values())
    have = source.count(shard)
    if have != read:
        return f"the source holds {have} records of the shard where the copy read {read}"
    held = target.count(shard)
    wrote = stream.target.count
    if held != wrote:
        return f"the target holds {held} records of the shard where the copy wrote {wrote}"
    if not stream.sample_ids:
        return ""
    found = target.fetch_records(id_array(stream.sample_ids, target.schema.id_kind))
    got = dict(zip(found.labels.tolist(), found.hashes().tolist(), strict=True))
    missing = [int(x) for x in stream.sample_labels.tolist() if x not in got]
    if missing:
        return f"{len(missing)} sampled records are missing from the target (label {missing[0]})"
    differ = [
        int(x)
        for x, h in zip(stream.sample_labels.tolist(), stream.sample_hashes.tolist(), strict=True)
        if got[x] != h
    ]
    if differ:
        return (
            f"{len(differ)} of {len(stream.sample_ids)} sampled records differ in the target "
            f"from what the copy wrote (label {differ[0]})"
        )
    return ""


def shard_check(
    journal: Journal,
    spec: MigrationSpec,
    source: VectorStore,
    target: VectorStore,
    shard: ShardRef,
    queries: GateQueries | None,
    volatile: Callable[[], Ids] | None = None,
    round_: int = 0,
) -> tuple[ShardCheck, tuple[Distances, Ids] | None]:
    """One shard's check and the exact search of ``queries`` over its target records: from the
    figures its copy streamed when the stores check out against them (see :func:`usable` and
    :func:`verify`) in the first validation round, else from a full read of both versions
    (:func:`~vecmigrate.validation.run.check_shard`), its ``basis`` saying why."""
    began = time.monotonic()
    if round_ > 0:
        # Measured again after a failed gate: whatever was fixed since is seen in full.
        found, why = None, "a validation round after a failed gate reads in full"
    else:
        changed = None if volatile is None else volatile()
        found, why = usable(journal, spec, shard, queries, changed)
    if found is not None:
        why = verify(spec, source, target, shard, found)
        if not why:
            return found.check(round(time.monotonic() - began, 3)), found.truth()
    knn = queries.exact_search(spec) if queries is not None else None
    check = check_shard(spec, source, target, shard, volatile, truth=knn)
    check.basis = f"read: {why}"
    return check, None if knn is None else knn.result()
