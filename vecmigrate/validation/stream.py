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
record, the copy kept no state, the spec asks for ``gates.deep``), the check reads both
versions in full as before and says why.

Writes captured from the source and replayed onto the target after the copy are followed:
:class:`StreamedReplay` takes each changed record's old contribution out of the figures and
puts its new one in (the profiles' sums are undone exactly, the exact search keeps twice the
neighbours asked for so a deleted one is replaced by the next), written ahead of the target's
write and settled after it.

Writes through the router (dual-write overwrites the target behind the figures, so what they
counted for a record is then in neither store) are left out at the check instead, as the full
read leaves them out: the copy also writes each record's share of both profiles, as it counted
it, to a file of its own per batch (:class:`Counted`, in the target's artifact directory, named
in the state kept with the cursor), and the check takes the shares of the records the change
log names out of both profiles and out of the kept neighbours (see :func:`leave_out`).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import faiss
import numpy as np
import pyarrow as pa

from vecmigrate.catalog.journal import Journal, StreamRow
from vecmigrate.data.backfill import TargetView, shard_plan
from vecmigrate.data.quarantine import Quarantine
from vecmigrate.data.retention import streamed_dir
from vecmigrate.indexes.artifacts import carried
from vecmigrate.model.gates import ShardCheck
from vecmigrate.model.records import IdKind
from vecmigrate.model.spec import MigrationSpec
from vecmigrate.model.tasks import ShardRef
from vecmigrate.records.batch import DUPLICATE_ID, Faults, Records
from vecmigrate.records.checksums import Words, mixed, record_hashes
from vecmigrate.records.ids import id_array, id_text
from vecmigrate.records.ids import labels as id_labels
from vecmigrate.records.vectors import (
    Distances,
    ExactKnn,
    Ids,
    Vectors,
    faiss_metric,
    merge_topk,
    prepare_for_metric,
    to_distance,
)
from vecmigrate.stores import VectorStore
from vecmigrate.stores.base import in_shard
from vecmigrate.validation.profile import ProfileBuilder
from vecmigrate.validation.reconcile import Vouch, Vouched
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

# The streamed exact search keeps DEPTH times the neighbours the gate asks for (k + 1): a
# replayed delete or move of a kept neighbour takes the next one. A query runs short only when
# more than half of its kept neighbours go without a nearer record written in their place; the
# shard is then read in full. Twice the state: queries x 2(k + 1) x 12 bytes per shard.
DEPTH = 2


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


# -- what the copy counted, record by record -----------------------------------------------------

# A record's share of a profile as the copy counted it: its label, its checksum hash, its norm
# (NaN for a vector with a NaN or infinite value, which the profile counts as such) and, when
# the collection has payload, its share of the payload checksum. The id checksum's share is the
# label's alone: not kept. 24 bytes a record and side (32 with payload).
_SHARE = np.dtype([("label", "<i8"), ("hash", "<u8"), ("norm", "<f8")])
_SHARE_PAYLOAD = np.dtype([("label", "<i8"), ("hash", "<u8"), ("norm", "<f8"), ("payload", "<u8")])
SIDES = ("source", "target")


def shares(records: Records) -> np.ndarray:
    """Each record's share of a profile, as :meth:`ProfileBuilder.add_records` counts it."""
    labels = records.labels
    payload = records.schema.has_payload
    out = np.empty(len(records), _SHARE_PAYLOAD if payload else _SHARE)
    out["label"] = labels
    out["hash"] = records.hashes()
    if payload:
        out["payload"] = record_hashes(labels, [], records.payload_only_hashes())
    out["norm"] = records.norms()  # each the norm the profile summed
    return out


class Counted:
    """The shares of both profiles a shard's copy counted, record by record: one file per
    batch and side (``<part>.source.npy``, ``<part>.target.npy``: numpy arrays of
    :func:`shares`) under a directory of its own per copy from the shard's beginning (``gen``),
    in the target's artifact directory (``<artifacts>/<tenant>/<collection>/_streamed/<migration>/
    shard-<n>/<gen>``).

    The state kept with the copy's cursor names the directory and how many parts count: a part
    written past them (its batch written, the cursor not moved yet) is never read, and is
    written again, whole, when the resumed copy writes that batch again (each file is written
    under a temporary name and renamed). A copy started over from the shard's beginning removes
    the shard's directory and writes a new one."""

    def __init__(self, root: Path, gen: str, parts: int = 0) -> None:
        self.root, self.gen, self.parts = root, gen, parts

    @staticmethod
    def shard_root(spec: MigrationSpec, shard: int) -> Path:
        """Where the copies of ``shard`` keep what they counted."""
        return streamed_dir(spec) / f"shard-{shard}"

    @classmethod
    def fresh(cls, spec: MigrationSpec, shard: int) -> Counted:
        """A new directory for a copy from the shard's beginning (the shard's others removed)."""
        root = cls.shard_root(spec, shard)
        shutil.rmtree(root, ignore_errors=True)
        return cls(root, uuid.uuid4().hex)

    def state(self) -> dict[str, Any]:
        return {"gen": self.gen, "parts": self.parts}

    def _path(self, part: int, side: str) -> Path:
        return self.root / self.gen / f"{part:06d}.{side}.npy"

    def write(self, source: np.ndarray, target: np.ndarray) -> None:
        """Write the next part (a batch's shares on both sides)."""
        (self.root / self.gen).mkdir(parents=True, exist_ok=True)
        for side, arr in zip(SIDES, (source, target), strict=True):
            path = self._path(self.parts, side)
            tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)
            os.replace(tmp, path)
        self.parts += 1

    def read(self, side: str) -> np.ndarray:
        """Every share counted on ``side``, in the order counted.

        Raises:
            OSError: a part is missing.
            ValueError: a part is not an array of shares.
        """
        parts = [np.load(self._path(i, side), allow_pickle=False) for i in range(self.parts)]
        for p in parts:
            if p.dtype not in (_SHARE, _SHARE_PAYLOAD):
                raise ValueError(f"a part holds {p.dtype}, not shares")
        if not parts:
            return np.empty(0, _SHARE)
        if len({p.dtype for p in parts}) > 1:
            parts = [
                p[["label", "hash", "norm"]].astype(_SHARE) for p in parts
            ]  # payload's share not in every part
        return np.concatenate(parts)

    def nbytes(self) -> int:
        """The size of the parts that count."""
        return sum(self._path(i, s).stat().st_size for i in range(self.parts) for s in SIDES)


def _take_out(b: ProfileBuilder, counted: np.ndarray, left_out: dict[str, int]) -> None:
    """Take records out of a streamed profile by the shares the copy counted for them (and
    ``left_out``, records counted as left out, per reason): what
    :meth:`ProfileBuilder.remove_records` does with the records themselves.

    Raises:
        ValueError: the shares do not fit the profile.
    """
    payload = None
    if b.has_payload and len(counted):
        if "payload" not in (counted.dtype.names or ()):
            raise ValueError("the profile counts payload; the shares kept none")
        payload = counted["payload"]
    b.remove_shares(counted["label"], counted["hash"], payload, counted["norm"], left_out)


def _in_thread(fn: Callable[..., None], *args: Any) -> Future[None]:
    """Run ``fn(*args)`` in a thread of its own, with the caller's count of FAISS threads (the
    copy activity's share of the cores: libgomp keeps the count per thread, and a new thread
    would start from the process's default, every core); its outcome as a future."""
    done: Future[None] = Future()
    work = carried(fn)  # the caller's trace, for any span the work makes, and FAISS threads

    def run() -> None:
        try:
            work(*args)
        except BaseException as exc:
            done.set_exception(exc)
        else:
            done.set_result(None)

    threading.Thread(target=run, name="streamed-exact-search", daemon=True).start()
    return done


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


def _replace_neighbours(
    knn: ExactKnn,
    removed: Ids,
    labels: Ids,
    vectors: Vectors,
    total_before: int,
    total_after: int,
    ask: int,
) -> int:
    """Take the records ``removed`` out of the kept exact neighbours and merge in the records
    written (``labels``, ``vectors``); how many queries are left with fewer than ``ask`` of
    them while the shard holds more.

    Each query's list stays the exact nearest of the shard's records, m of them (m up to the
    depth kept): every record not in it is at least as far as the list's farthest was before
    the change, so a new record no farther than that belongs in the list, and one farther is
    left out (it may trail a record never kept). A list holding every record of the shard
    takes every new one."""
    valid = knn.i != -1
    held = valid.sum(axis=1)
    bound = np.max(np.where(valid, knn.d, -np.inf), axis=1)
    bound = np.where(held >= total_before, np.inf, bound)
    gone = valid & np.isin(knn.i, removed)
    parts = [(np.where(gone, np.inf, knn.d).astype(np.float32), np.where(gone, -1, knn.i))]
    if labels.size:
        kk = min(knn.k, int(labels.size))
        d, pos = faiss.knn(
            knn.queries,
            prepare_for_metric(vectors, knn.metric),
            kk,
            metric=faiss_metric(knn.metric),
        )
        d = to_distance(d, knn.metric)
        ok = (pos >= 0) & (d <= bound[:, None])
        parts.append((np.where(ok, d, np.inf), np.where(ok, labels[np.clip(pos, 0, None)], -1)))
    knn.d, knn.i = merge_topk(parts, knn.k)
    kept = (knn.i != -1).sum(axis=1)
    return int(((kept < ask) & (kept < total_after)).sum())


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
        # The exact search keeps twice the neighbours the gate asks for: a replayed delete of a
        # kept neighbour takes the next one (see :func:`_replace_neighbours`).
        self.ask = 0 if queries is None else queries.ask
        self.knn: ExactKnn | None = (
            None
            if queries is None
            else ExactKnn(queries.target, DEPTH * queries.ask, str(spec.target.embedding.metric))
        )
        self.sample_ids: list[Any] = []  # as the store has them (integers or text)
        self.sample_labels = np.empty(0, np.int64)
        self.sample_hashes = np.empty(0, np.uint64)
        self.int_ids = True  # integer ids: the sample's ids are its labels
        self.complete = False
        # Why the streamed figures can no longer be used ("" while they can): a replayed change
        # they cannot follow (see :meth:`apply`).
        self.spoiled = ""
        # Records replayed after the copy whose quarantine differs from the copy's (id text to
        # reason, "" for not left out): the copy's are in the quarantine table.
        self.requarantined: dict[str, str] = {}
        # What the copy counted, record by record (None: a copy that kept none), and whether a
        # replay changed the figures since (what they count is then no longer all in it).
        self.counted: Counted | None = None
        self.replayed = False
        # The batch being written, folded in ahead on a thread of its own (see
        # :meth:`before_write`): the batch and the fold's outcome.
        self._folding: tuple[Records, Future[None]] | None = None

    def before_write(self, seen: Records, faults: Faults, written: Records) -> None:
        """Start folding in the batch the copy is about to write (as :meth:`add` takes it) on a
        thread of its own, so that it runs while the target writes: the profiles, each
        record's share of them and the exact search are numpy and FAISS, which let go of the
        interpreter, as the store's write does. :meth:`add` of the same batch waits for it;
        the figures are those of a fold run in :meth:`add` (the same steps in the same order).
        A copy whose write fails ends without persisting them."""
        if self._folding is not None and self._folding[0] is written:
            return
        self._settle()  # the batch before, if it is still being folded in
        self._folding = (written, _in_thread(self._fold, seen, faults, written))

    def _settle(self) -> Records | None:
        """Wait for the fold :meth:`before_write` started, if any; the batch it folded in."""
        if self._folding is None:
            return None
        folded, done = self._folding
        self._folding = None
        done.result()
        return folded

    def add(self, seen: Records, faults: Faults, written: Records) -> None:
        """Fold in one batch: ``seen``, the source's records the target can hold as the
        transform makes them, ``faults`` the ones it cannot, ``written`` what the target got.

        When :meth:`before_write` was told of it, its fold goes on while the copy moves to its
        next batch (reads it, splits it), and is waited for before anything reads the figures
        (:meth:`row`, which the copy persists with its next cursor, :meth:`truth`,
        :meth:`apply`): the copy waits for the fold once, at the latest moment."""
        if self._folding is None:
            self._fold(seen, faults, written)
        elif self._folding[0] is not written:
            raise ValueError("the batch folded in ahead is another batch than the one added")

    def _fold(self, seen: Records, faults: Faults, written: Records) -> None:
        self.source.add_records(seen, faults, quarantined=True)
        self.target.add_records(written)
        if self.counted is not None and (len(seen) or len(written)):
            self.counted.write(shares(seen), shares(written))
        if not len(written):
            return
        if self.knn is not None:
            self.knn.add(written.labels, written.vectors())
        self._sample_add(written)

    def apply(
        self,
        old: Records,
        old_left: dict[str, int],
        seen: Records,
        faults: Faults,
        written: Records,
    ) -> None:
        """Fold in changes replayed onto the target after the copy. ``old`` are the records
        the target held for them before the write (what the copy, or an earlier replay,
        counted on both sides), ``old_left`` how many of them the source side counted as left
        out (per reason); ``seen``, ``faults`` and ``written`` the new state, as :meth:`add`
        takes a batch. A delete is a record of ``old`` with nothing new.

        Every profile sum is undone and redone exactly; the exact search drops the old records
        and merges the new ones. When a query's kept neighbours run short of what the gate asks
        (deletes of kept neighbours), the figures are marked :attr:`spoiled`."""
        self._settle()
        total_before = self.target.count
        self.replayed = True
        self.source.remove_records(old, old_left)
        self.target.remove_records(old)
        self.source.add_records(seen, faults, quarantined=True)
        self.target.add_records(written)
        if self.knn is not None and not self.spoiled:
            short = _replace_neighbours(
                self.knn,
                old.labels,
                written.labels,
                written.vectors(),
                total_before,
                self.target.count,
                self.ask,
            )
            if short:
                self.spoiled = (
                    f"replayed deletes or moves left {short} queries with fewer kept exact "
                    f"neighbours than the {self.ask} the gate asks"
                )
        self._sample_drop(old.labels)
        self._sample_add(written)

    def _sample_drop(self, labels: Ids) -> None:
        """Take records out of the read-back sample."""
        keep = ~np.isin(self.sample_labels, labels)
        if keep.all():
            return
        self.sample_ids = [x for x, k in zip(self.sample_ids, keep.tolist(), strict=True) if k]
        self.sample_labels = self.sample_labels[keep]
        self.sample_hashes = self.sample_hashes[keep]

    def _sample_add(self, written: Records) -> None:
        """Offer written records to the read-back sample (the smallest priorities stay)."""
        if not len(written):
            return
        labels = written.labels
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
        self._settle()
        if self.knn is None:
            return None
        d, i = self.knn.result()
        return d[:, : self.ask].copy(), i[:, : self.ask].copy()

    def row(self) -> StreamRow:
        """The state to persist with the copy's cursor."""
        self._settle()
        state = {
            "spec_hash": self.spec_hash,
            "digest": self.digest,
            "complete": self.complete,
            "source": self.source.state(),
            "target": self.target.state(),
            # Integer ids are their labels (kept in the blob); text ids are listed.
            "sample_ids": None if self.int_ids else self.sample_ids,
            "spoiled": self.spoiled,
            "requarantined": dict(self.requarantined),
            "counted": None if self.counted is None else self.counted.state(),
            "replayed": self.replayed,
        }
        sample = (
            np.ascontiguousarray(self.sample_labels, np.int64).tobytes()
            + np.ascontiguousarray(self.sample_hashes, np.uint64).tobytes()
        )
        if self.knn is None:
            return StreamRow(state, None, None, sample)
        d, i = self.knn.result()
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
        s.spoiled = str(state.get("spoiled", ""))
        s.requarantined = {str(k): str(v) for k, v in state.get("requarantined", {}).items()}
        counted = state.get("counted")
        if counted is not None:
            root = Counted.shard_root(spec, shard.index)
            s.counted = Counted(root, str(counted["gen"]), int(counted["parts"]))
        s.replayed = bool(state.get("replayed", False))
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
            rows, depth = s.knn.d.shape
            if len(row.ids) != rows * depth * 8:
                return None  # kept to another depth (before replays could update it)
            s.knn.d = np.frombuffer(row.distances, np.float32).reshape(rows, depth).copy()
            s.knn.i = np.frombuffer(row.ids, np.int64).reshape(rows, depth).copy()
        return s

    def check(self, seconds: float = 0.0) -> ShardCheck:
        """The shard check the stream makes (nothing left out: see :func:`usable`)."""
        self._settle()
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
        started = ShardStream(spec, shard, queries)
        started.counted = Counted.fresh(spec, shard.index)
        return started
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

    ``changed`` names the records written since the migration began through the change log
    and those captured but not replayed yet: a shard holding one is read in full, its figures
    taken without them (:func:`shard_check` passes none and leaves them out of the figures
    instead, see :func:`leave_out`). Captured writes once replayed are in the streamed figures
    (see :class:`StreamedReplay`)."""
    why = streamable(spec)
    if why:
        return None, why
    row = journal.stream(spec.migration_id, shard.index)
    if row is None:
        return None, "the copy kept no streamed figures for this shard"
    stream = ShardStream.resume(spec, shard, row, queries if _searches(spec) else None)
    if stream is None:
        return None, (
            "the streamed figures were kept for another spec or query sample (or by a copy "
            "that kept fewer exact neighbours)"
        )
    if not stream.complete:
        return None, "the shard's copy has not finished"
    if stream.spoiled:
        return None, stream.spoiled
    if stream.source.bounds_lost or stream.target.bounds_lost:
        return None, "a replayed change took out the record of the shard's smallest or largest norm"
    if journal.pending_stream(spec.migration_id, shard.index) is not None:
        return None, "a replay into the shard is under way"
    if changed is not None and changed.size:
        n = int(in_shard(np.unique(changed), shard).sum())
        if n:
            # Written through the router (dual-write reaches the target behind the streamed
            # figures), or captured and not replayed yet.
            return None, f"{n} records of the shard changed during the migration"
    return stream, ""


def leave_out(
    journal: Journal,
    spec: MigrationSpec,
    source: VectorStore,
    target: VectorStore,
    stream: ShardStream,
    changed: Ids,
) -> tuple[str, int, int, int]:
    """Leave the records ``changed`` names (the shard's, written through the router since the
    migration began or captured and not replayed yet) out of the streamed figures, as the full
    read leaves them out of both profiles: their shares as the copy counted them (:class:`Counted`)
    taken out of both, and the quarantine the copy noted for them; the source's quarantine of
    them now counted (the full read counts it). Their kept exact neighbours go, and the target's
    records for them now are merged in (the full read searches them). They go from the read-back
    sample too.

    Returns why the figures cannot leave them out ("" when they can; the shard is then read in
    full), the records of them the source holds now that the target can (left out of the source
    profile) and the target holds now (left out of the target's), for :func:`verify`, and how
    many of them either holds (the check's ``excluded``)."""
    said = f"{changed.size} records of the shard changed during the migration"
    if target.schema.id_kind != IdKind.INT:
        return f"{said} (ids that are not integers: the change log names them by label)", 0, 0, 0
    if stream.counted is None:
        return f"{said}; the copy kept no file of what it counted", 0, 0, 0
    if stream.replayed:
        return f"{said}; replayed captures changed what the copy counted", 0, 0, 0
    if stream.source.repeats or stream.target.repeats:
        return f"{said}; the shard holds repeated ids", 0, 0, 0
    # Read first, right after the caller counted the stores: a write landing in between would
    # make the counts and these records disagree (the caller tries again).
    ids = id_array(changed, IdKind.INT)
    now, held = source.fetch_records(ids), target.fetch_records(ids)
    try:
        counted = [stream.counted.read(side) for side in SIDES]
    except (OSError, ValueError) as exc:
        return f"{said}; the file of what the copy counted cannot be read: {exc}", 0, 0, 0
    if [len(c) for c in counted] != [stream.source.count, stream.target.count]:
        return f"{said}; the file of what the copy counted does not match its figures", 0, 0, 0
    seen, _, faults = TargetView.of(journal.catalog, spec, target).split(now)
    left: dict[str, int] = {}
    texts = [str(int(x)) for x in changed]
    for reasons in Quarantine(journal.catalog).reasons(spec.migration_id, texts).values():
        if len(reasons) > 1:
            return f"{said}; one of them was left out for two reasons", 0, 0, 0
        reason = next(iter(reasons))
        left[reason] = left.get(reason, 0) + 1
    if DUPLICATE_ID in left or DUPLICATE_ID in faults.reasons:
        return f"{said}; one of them is left out for a repeated id", 0, 0, 0
    before = stream.target.count
    try:
        _take_out(stream.source, counted[0][np.isin(counted[0]["label"], changed)], left)
        _take_out(stream.target, counted[1][np.isin(counted[1]["label"], changed)], {})
    except ValueError as exc:
        return f"{said}; what the copy counted for them does not fit its figures: {exc}", 0, 0, 0
    for reason, n in faults.counts().items():
        stream.source.left_out[reason] = stream.source.left_out.get(reason, 0) + n
    if stream.source.bounds_lost or stream.target.bounds_lost:
        return f"{said}; one of them held the shard's smallest or largest norm", 0, 0, 0
    if stream.knn is not None:
        short = _replace_neighbours(
            stream.knn,
            changed,
            held.labels,
            held.vectors(),
            before,
            stream.target.count + len(held),
            stream.ask,
        )
        if short:
            return (
                f"{said}; left out, they leave {short} queries with fewer kept exact "
                f"neighbours than the {stream.ask} the gate asks",
                0,
                0,
                0,
            )
    stream._sample_drop(changed)
    excluded = int(np.union1d(seen.labels, held.labels).size)
    return "", len(seen), len(held), excluded


def verify(
    target: VectorStore,
    stream: ShardStream,
    counts: tuple[int, int],
    source_extra: int = 0,
    target_extra: int = 0,
) -> str:
    """Check the stores against what the copy read and wrote, cheaply: ``counts``, the source's
    and the target's counts of the shard (taken right after the change log was read: a record
    written behind its back shows there), and the read-back sample's checksum hashes.
    ``source_extra`` and ``target_extra`` are records each holds that the figures leave out
    (see :func:`leave_out`). "" when it holds; else what differs."""
    read = stream.source.count + sum(stream.source.left_out.values()) + source_extra
    have, held = counts
    if have != read:
        return f"the source holds {have} records of the shard where the copy read {read}"
    wrote = stream.target.count + target_extra
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


# Tries of a shard check from its streamed figures while records of the shard are written
# through the router: a write landing between the check's reads of the change log and of the
# stores can make them disagree, and the check tries again from the stored figures. The router
# logs a write before it reaches the stores, so the stores are counted right after the change
# log is read, and the records it names are read right after that (see :func:`leave_out`): the
# windows a write can land in are short, but a steady stream of writes can still hit a few in a
# row, and a full read costs far more than another try.
_TRIES = 8


class Streamed(NamedTuple):
    """A shard's streamed figures that the stores checked out against (``stream`` None when
    they did not, ``why`` saying why), with the records of the shard left out of them
    (``changed``; ``excluded`` of them held by either store) and the stores' counts of the
    shard when they were checked."""

    stream: ShardStream | None
    why: str
    excluded: int = 0
    changed: Ids = np.empty(0, np.int64)
    counts: tuple[int, int] = (0, 0)


def _streamed(
    journal: Journal,
    spec: MigrationSpec,
    source: VectorStore,
    target: VectorStore,
    shard: ShardRef,
    queries: GateQueries | None,
    volatile: Callable[[], Ids] | None,
) -> Streamed:
    """The shard's streamed figures, with the records ``volatile`` names left out (see
    :func:`leave_out`), once the stores check out against them (:func:`verify`); else why not."""
    why = ""
    for _ in range(_TRIES):
        found, why = usable(journal, spec, shard, queries, None)
        if found is None:
            return Streamed(None, why)
        mine = np.empty(0, np.int64) if volatile is None else _of_shard(volatile(), shard)
        counts = (source.count(shard), target.count(shard))
        extra, excluded = (0, 0), 0
        if mine.size:
            # Written through the router (dual-write reaches the target behind the streamed
            # figures), or captured and not replayed yet: left out, as the full read does.
            why, source_extra, target_extra, excluded = leave_out(
                journal, spec, source, target, found, mine
            )
            if why:
                return Streamed(None, why)
            extra = (source_extra, target_extra)
        why = verify(target, found, counts, *extra)
        if not why:
            # Records written since ``mine`` was read and not caught by the stores' checks
            # are counted as the copy counted them, on both sides: the check is of the stores
            # as it read them.
            return Streamed(found, "", excluded, mine, counts)
        if volatile is None:
            break
        if not mine.size and not _of_shard(volatile(), shard).size:
            break  # nothing of the shard written: the stores differ from the figures
    return Streamed(None, why)


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
    figures its copy streamed when the stores check out against them (see :func:`usable`,
    :func:`leave_out` and :func:`verify`) in the first validation round, else from a full read
    of both versions (:func:`~vecmigrate.validation.run.check_shard`), its ``basis`` saying
    why. Records ``volatile`` names are left out of both profiles either way (and counted in
    ``excluded``)."""
    began = time.monotonic()
    if round_ > 0:
        # Measured again after a failed gate: whatever was fixed since is seen in full.
        why = "a validation round after a failed gate reads in full"
    else:
        found, why, excluded, _, _ = _streamed(
            journal, spec, source, target, shard, queries, volatile
        )
        if found is not None:
            check = found.check(round(time.monotonic() - began, 3))
            check.excluded = excluded
            return check, found.truth()
    knn = queries.exact_search(spec) if queries is not None else None
    check = check_shard(spec, source, target, shard, volatile, truth=knn)
    check.basis = f"read: {why}"
    return check, None if knn is None else knn.result()


# -- the reconcile gate -------------------------------------------------------------------------


def vouch(
    journal: Journal,
    spec: MigrationSpec,
    source: VectorStore,
    target: VectorStore,
    changed: Callable[[], Ids],
    compare_vectors: bool,
) -> Vouch:
    """What the reconcile gate asks of each shard before it reads both versions in full: the
    shard's streamed figures, if they vouch for it (see :class:`~vecmigrate.validation
    .reconcile.Reconciler`). They do when the stores check out against them as for the shard
    check (each store's count of the shard and the read-back sample; the records ``changed``
    names, written since the migration began or captured and not replayed yet, left out of
    them: see :func:`_streamed`), and when both versions' figures then agree: the same count,
    id checksum, payload checksum and, when ``compare_vectors``, vector checksum (each a sum of
    the per-record hashes the full read compares one by one). The records left out are for the
    reconciler to read from both stores; a shard whose figures do not vouch for it is read in
    full, as is every shard with ``gates.deep``."""
    queries = stored_queries(journal, spec) if _searches(spec) else None

    def vouched(shard: ShardRef) -> tuple[Vouched | None, str]:
        found, why, _, mine, (have, held) = _streamed(
            journal, spec, source, target, shard, queries, changed
        )
        if found is None:
            return None, why
        s, t = found.source.result(), found.target.result()
        fields = ["count", "id_checksum", "payload_checksum"]
        fields += ["checksum"] if compare_vectors else []
        differ = [f for f in fields if getattr(s, f) != getattr(t, f)]
        if differ:
            return None, f"the copy's figures of the two versions differ ({', '.join(differ)})"
        quarantined = sum(found.source.left_out.values())
        return Vouched(mine, have - quarantined, held, quarantined), ""

    return vouched


def spoil(journal: Journal, spec: MigrationSpec, shard: int, why: str) -> None:
    """Mark a shard's streamed figures unusable, saying why (a write the figures did not
    follow: the reconcile gate's repair); its checks then read it in full."""
    row = journal.stream(spec.migration_id, shard)
    if row is not None:
        journal.set_stream(
            spec.migration_id, shard, replace(row, state={**row.state, "spoiled": why})
        )


# -- replayed changes ---------------------------------------------------------------------------


class StreamedReplay:
    """Changed records written onto a migration's target after its copy (the capture's replay
    of writes made to the source with plain SQL), keeping the streamed figures of the shards
    they touch current, so those shards keep basis ``streamed``.

    For each batch of changed ids: the source's records now, through the migration's view (the
    quarantine's records left out and counted, the rest transformed, as the copy writes them);
    the target's records for those ids before the write (what the streamed figures counted for
    them: the copy's write or an earlier replay's), and for ids the target lacks, whether the
    copy, or a replay since, left them out and why. Each touched shard's figures with the old
    contributions taken out and the new ones put in are written ahead with what the target
    will hold for those ids (the journal's pending row), then the target is written, then the
    pending rows become the shards' figures, in one transaction. A replay that dies between the
    write ahead and that last step leaves the pending rows: the next one reads the ids back
    from the target and keeps the state the target shows (or marks the figures unusable if it
    shows neither); a check meanwhile reads the shard in full. A batch replayed twice (the
    capture forgets a batch only after it is applied) takes out what it put in and puts it in
    again: counted once. Figures a change does not fit are marked unusable; the replay goes on.
    """

    def __init__(
        self,
        journal: Journal,
        spec: MigrationSpec,
        source: VectorStore,
        target: VectorStore,
        view: TargetView,
    ) -> None:
        self.journal, self.spec, self.target, self.view = journal, spec, target, view
        self.kind = target.schema.id_kind
        self.shards = [] if streamable(spec) else shard_plan(spec, source)
        if self.shards:
            Quarantine(journal.catalog)  # the copy's notes are looked up (made if none yet)
        self.queries = stored_queries(journal, spec) if self.shards and _searches(spec) else None
        if self.shards and _searches(spec) and self.queries is None:
            self.shards = []  # the copy kept no figures with a search: nothing to keep current

    def write(self, ids: pa.Array, current: Records) -> tuple[Records, Faults, pa.Array]:
        """Bring the records ``ids`` names to ``current`` (the source's records among them
        now) on the target: write those it can hold, delete the others from it. What it wrote,
        the records left out, and the ids deleted."""
        seen, written, faults = self.view.split(current)
        held = {id_text(v) for v in written.id_values()}
        gone = id_array([v for v in ids.to_pylist() if id_text(v) not in held], self.kind)
        pending = self._prepare(ids, seen, faults, written) if self.shards and len(ids) else {}
        mid = self.spec.migration_id
        if pending:
            self.journal.set_pending_streams(mid, pending)
        if len(written):
            self.target.write(written)
        if len(gone):
            self.target.delete(gone)
        if pending:
            self.journal.settle_pending_streams(mid, list(pending), promote=True)
        return written, faults, gone

    def settle(self, shard: ShardRef) -> None:
        """End a replay that died between writing ahead and its last step, from what the target
        holds for the ids it wrote: the figures after it when it holds their new state, before
        it when it holds the old one, else the figures are marked unusable."""
        mid = self.spec.migration_id
        found = self.journal.pending_stream(mid, shard.index)
        if found is None:
            return
        _, expect = found
        ids = id_array(expect["ids"], self.kind)
        have = self.target.fetch_records(ids)
        hashes = dict(zip(have.labels.tolist(), have.hashes().tolist(), strict=True))
        now = [None if h is None else str(h) for h in map(hashes.get, _labels(ids, self.kind))]
        if now == expect["after"]:
            self.journal.settle_pending_streams(mid, [shard.index], promote=True)
        elif now == expect["before"]:
            self.journal.settle_pending_streams(mid, [shard.index], promote=False)
        else:
            self.journal.settle_pending_streams(
                mid,
                [shard.index],
                promote=False,
                spoiled="a replay into the shard died between its writes to the target",
            )

    def _unapplied(self, shard: ShardRef) -> ShardStream:
        """The shard's figures as stored (an :meth:`apply` that failed half-way is dropped)."""
        row = self.journal.stream(self.spec.migration_id, shard.index)
        assert row is not None
        found = ShardStream.resume(self.spec, shard, row, self.queries)
        assert found is not None
        return found

    def _open(self, shard: ShardRef) -> ShardStream | None:
        """The shard's streamed figures a replay can keep current, or None (it kept none, they
        are unusable, or its copy has not finished: then they are marked unusable)."""
        self.settle(shard)
        mid = self.spec.migration_id
        row = self.journal.stream(mid, shard.index)
        if row is None:
            return None
        stream = ShardStream.resume(self.spec, shard, row, self.queries)
        if stream is None or stream.spoiled:
            return None
        if not stream.complete:
            stream.spoiled = "records of the shard were replayed before its copy finished"
            self.journal.set_stream(mid, shard.index, stream.row())
            return None
        return stream

    def _prepare(
        self, ids: pa.Array, seen: Records, faults: Faults, written: Records
    ) -> dict[int, tuple[StreamRow, dict[str, Any]]]:
        """Each touched shard's figures once the write lands, with what the target holds for
        its ids before and after (the pending rows)."""
        values = ids.to_pylist()
        texts = [id_text(v) for v in values]
        labels = _labels(ids, self.kind)
        old = self.target.fetch_records(ids)
        before = dict(zip(old.labels.tolist(), old.hashes().tolist(), strict=True))
        after = dict(zip(written.labels.tolist(), written.hashes().tolist(), strict=True))
        present = set(before)
        copied = Quarantine(self.journal.catalog).reasons(self.spec.migration_id, texts)
        faulted = dict(zip(faults.ids, faults.reasons, strict=True))
        out: dict[int, tuple[StreamRow, dict[str, Any]]] = {}
        for shard in self.shards:
            mine = np.flatnonzero(in_shard(labels, shard))
            if not mine.size:
                continue
            stream = self._open(shard)
            if stream is None:
                continue
            old_left: dict[str, int] = {}
            why = ""
            for j in mine.tolist():
                t = texts[j]
                reasons = (
                    {stream.requarantined[t]} if t in stream.requarantined else copied.get(t, set())
                )
                reasons.discard("")
                if len(reasons) > 1 or DUPLICATE_ID in reasons or faulted.get(t) == DUPLICATE_ID:
                    why = f"record {t} of the shard is left out for a repeated id or two reasons"
                if int(labels[j]) not in present and len(reasons) == 1:
                    reason = next(iter(reasons))
                    old_left[reason] = old_left.get(reason, 0) + 1
                if t in faulted or t in stream.requarantined or t in copied:
                    stream.requarantined[t] = faulted.get(t, "")
            if not why:
                try:
                    stream.apply(
                        old.filter(in_shard(old.labels, shard)),
                        old_left,
                        seen.filter(in_shard(seen.labels, shard)),
                        _faults_among(faults, {texts[j] for j in mine.tolist()}),
                        written.filter(in_shard(written.labels, shard)),
                    )
                except ValueError as exc:
                    # Figures that do not hold what the target held: never the replay's
                    # problem (it goes on), only the figures' (the shard is read in full).
                    stream = self._unapplied(shard)
                    why = f"a replayed change does not fit the streamed figures: {exc}"
            if why:
                stream.spoiled = why
            expect = {
                "ids": [values[j] for j in mine.tolist()],
                "before": [_word(before.get(int(labels[j]))) for j in mine.tolist()],
                "after": [_word(after.get(int(labels[j]))) for j in mine.tolist()],
            }
            out[shard.index] = (stream.row(), expect)
        return out


def _of_shard(changed: Ids, shard: ShardRef) -> Ids:
    """The records of ``shard`` among ``changed`` (each once, in order)."""
    ids = np.unique(np.asarray(changed, np.int64))
    return ids[in_shard(ids, shard)]


def _labels(ids: pa.Array, kind: IdKind) -> Ids:
    return id_labels(ids, kind)


def _word(h: int | None) -> str | None:
    return None if h is None else str(h)


def _faults_among(faults: Faults, texts: set[str]) -> Faults:
    """The faults of the records ``texts`` names."""
    out = Faults()
    for t, r, d in zip(faults.ids, faults.reasons, faults.details, strict=True):
        if t in texts:
            out.ids.append(t)
            out.reasons.append(r)
            out.details.append(d)
    return out
