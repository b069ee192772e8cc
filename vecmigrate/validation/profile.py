"""One pass over a shard: counts, bad vectors, norms and checksums (integrity and parity).

The checksums cover whole records (ids, every vector, payload), ids alone (the id set, for
migrations that change vectors), and ids with payload (the payload must cross unchanged whatever
happens to the vectors). A source shard is seen as the target should hold it: records no target
can hold, or this target cannot, are left out and counted per reason (the quarantine), and the
rest seen through the migration's transform.

Every figure but the norm bounds is a sum a record's removal can undo exactly (the checksums
are sums modulo 2**64, the norms' total a sum of integers: each norm in units of 2**-32), so a
streamed profile follows the records replayed into a shard without a second read (see
:meth:`ProfileBuilder.remove_records`); the full read computes the same sums.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from vecmigrate.data.transforms import Transform
from vecmigrate.model.gates import ShardProfile
from vecmigrate.model.tasks import ShardRef
from vecmigrate.records.batch import DUPLICATE_ID, Faults, Records
from vecmigrate.records.checksums import RecordChecksum, Words, record_hashes
from vecmigrate.records.screening import Limits, screen
from vecmigrate.records.vectors import Ids, Vectors, repeated_ids
from vecmigrate.stores import VectorStore


class IdChecksum(RecordChecksum):
    """Order-independent checksum of the ids alone (id-set parity when vectors changed)."""

    def add(self, ids: Ids, vectors: Vectors | list[Vectors], payload: object = None) -> None:
        super().add(ids, np.empty((ids.shape[0], 0), np.float32))


# A norm is summed as an integer number of 2**-32 (exactly, whatever the order of the records,
# and exactly undone when a record is removed); the mean is rounded to 6 decimals.
_NORM_UNIT = float(1 << 32)
_NORM_SPLIT = float(1 << 30)  # below this, a norm in units of 2**-32 fits an int64 with room


def norm_units(norms: npt.NDArray[np.float64]) -> int:
    """The sum of ``norms`` as an integer of 2**-32 units, each rounded on its own (so the sum
    is the same in any order and a record's share can be taken out again exactly)."""
    if not norms.size:
        return 0
    small = norms < _NORM_SPLIT
    q = np.rint(norms[small] * _NORM_UNIT).astype(np.int64)
    # Summed in two 32-bit halves: 50,000 values of up to 2**62 would overflow an int64.
    total = (int((q >> 32).sum()) << 32) + int((q & 0xFFFFFFFF).sum())
    for x in norms[~small].tolist():
        total += round(x * _NORM_UNIT)
    return total


@dataclass
class _Broken:
    """Records of a target no store can hold (read as faults): counted, not profiled."""

    records: int = 0
    vectors: int = 0  # null, of the wrong dimension, NaN or infinite
    duplicates: int = 0


class ProfileBuilder:
    """Accumulates a :class:`ShardProfile` batch by batch.

    With ``keep``, it also keeps the batches, so records can be left out afterwards: an online
    migration leaves out the records written while it scanned (the change log names them, and
    dual-write and catch-up account for them).
    """

    def __init__(
        self, unit_norm_tolerance: float = 1e-3, keep: bool = False, track_ids: bool = True
    ) -> None:
        self.tolerance = unit_norm_tolerance
        self.keep = keep
        # Without ``track_ids`` repeated ids are counted within each batch only (the copy reads a
        # shard in id order, so a repeat never spans two batches) and no id is kept: the state
        # stays a few numbers, persisted with the copy's cursor.
        self.track_ids = track_ids
        self.repeats = 0
        self.batches: list[Records] = []
        self.records = RecordChecksum()
        self.ids = IdChecksum()
        self.payloads = RecordChecksum()
        self.has_payload = False
        self.seen: list[Ids] = []
        self.left_out: dict[str, int] = {}
        self.broken = _Broken()
        self.count = 0
        self.nonfinite = 0
        self.zero = 0
        self.off_unit = 0
        self.norm_min = np.inf
        self.norm_max = -np.inf
        self.norm_units = 0  # the finite norms' sum, see norm_units
        # Set when a removed record held the smallest (largest) norm: the bound kept is then
        # only a bound of the rest (see :meth:`remove_records`).
        self.low_lost = False
        self.high_lost = False

    def add(self, ids: Ids, vectors: Vectors) -> None:
        """Fold in a batch of integer ids and one vector each."""
        self.add_records(Records.from_numpy(ids, vectors))

    def add_records(
        self, records: Records, faults: Faults | None = None, *, quarantined: bool = True
    ) -> None:
        """Fold one batch in. ``faults`` are the records of it no store can hold: left out of a
        source (``quarantined``, counted by reason) or, in a target, counted as its broken
        vectors and repeated ids."""
        if faults is not None and quarantined:
            for reason, n in faults.counts().items():
                self.left_out[reason] = self.left_out.get(reason, 0) + n
        elif faults is not None and len(faults):
            counts = faults.counts()
            self.broken.duplicates += counts.pop(DUPLICATE_ID, 0)
            self.broken.vectors += sum(counts.values())
            self.broken.records += len(faults)
        if self.keep:
            self.batches.append(records)
        labels = records.labels
        self.records.add_hashes(records.hashes())
        self.ids.add(labels, [])
        self.has_payload = records.schema.has_payload
        if self.has_payload:
            self.payloads.add_hashes(record_hashes(labels, [], records.payload_only_hashes()))
        if self.track_ids:
            self.seen.append(labels)
        else:
            self.repeats += repeated_ids(labels)
        self.count += len(records)
        norms = records.norms()  # NaN where a vector is not finite
        finite = ~np.isnan(norms)
        self.nonfinite += int((~finite).sum())
        norms = norms if finite.all() else norms[finite]
        self.zero += int((norms == 0).sum())
        self.off_unit += int((np.abs(norms - 1.0) > self.tolerance).sum())
        if norms.size:
            low, high = float(norms.min()), float(norms.max())
            # A lost bound is still a bound of the rest: a record beyond it is the new bound.
            if low <= self.norm_min or not self.low_lost:
                self.norm_min, self.low_lost = min(self.norm_min, low), False
            if high >= self.norm_max or not self.high_lost:
                self.norm_max, self.high_lost = max(self.norm_max, high), False
            self.norm_units += norm_units(norms)

    @property
    def bounds_lost(self) -> bool:
        """Whether a removed record held the smallest or the largest norm and none added since
        went past it: the bounds of the rest are not known without a read."""
        return self.low_lost or self.high_lost

    def remove_records(self, records: Records, left_out: dict[str, int] | None = None) -> None:
        """Take out records added before (exactly as they were added) and, with ``left_out``,
        records counted as left out (per reason): what a record replaced or deleted after the
        copy contributed. Only for a builder without kept batches or ids.

        Every sum is undone exactly. The norm bounds are not sums: when a removed record's norm
        is the smallest or the largest, the bound of the rest is unknown until a record added
        goes past it (:attr:`bounds_lost`; the shard is read in full if it stays so)."""
        if self.keep or self.track_ids:
            raise ValueError("records can be removed only from a builder without kept batches")
        payload = None
        norms = np.empty(0)
        if len(records):
            if self.has_payload and records.schema.has_payload:
                payload = record_hashes(records.labels, [], records.payload_only_hashes())
            norms = records.norms()
        self.remove_shares(records.labels, records.hashes(), payload, norms, left_out)

    def remove_shares(
        self,
        labels: Ids,
        hashes: Words,
        payloads: Words | None,
        norms: npt.NDArray[np.float64],
        left_out: dict[str, int] | None = None,
    ) -> None:
        """:meth:`remove_records` from each record's share of the sums as it was counted: its
        label, record hash, payload hash (None: not counted) and norm (:meth:`Records.norms`,
        NaN for a vector that is not finite), for a caller that kept those and not the records.

        Raises:
            ValueError: more records or left-out records than the profile counted.
        """
        for reason, n in (left_out or {}).items():
            left = self.left_out.get(reason, 0) - n
            if left < 0:
                raise ValueError(f"more records removed for {reason!r} than were left out")
            if left:
                self.left_out[reason] = left
            else:
                self.left_out.pop(reason, None)
        n = len(labels)
        if not n:
            return
        if n > self.count:
            raise ValueError(f"{n} records removed from a profile of {self.count}")
        mask = 0xFFFFFFFFFFFFFFFF
        self.records.total = (self.records.total - int(hashes.sum(dtype=np.uint64))) & mask
        self.records.count -= n
        ids = RecordChecksum()
        ids.add(np.ascontiguousarray(labels, np.int64), np.empty((n, 0), np.float32))
        self.ids.total = (self.ids.total - ids.total) & mask
        self.ids.count -= ids.count
        if self.has_payload and payloads is not None:
            self.payloads.total = (self.payloads.total - int(payloads.sum(dtype=np.uint64))) & mask
            self.payloads.count -= n
        self.count -= n
        finite = ~np.isnan(norms)
        self.nonfinite -= int((~finite).sum())
        norms = norms[finite]
        self.zero -= int((norms == 0).sum())
        self.off_unit -= int((np.abs(norms - 1.0) > self.tolerance).sum())
        self.norm_units -= norm_units(norms)
        if self.count == self.nonfinite:
            # Nothing finite is left: no bounds, and none lost.
            self.norm_min, self.norm_max = np.inf, -np.inf
            self.low_lost = self.high_lost = False
        elif norms.size:
            self.low_lost = self.low_lost or bool(norms.min() <= self.norm_min)
            self.high_lost = self.high_lost or bool(norms.max() >= self.norm_max)

    def without(self, exclude: Ids) -> ShardProfile:
        """The profile of the kept batches with the records of ``exclude`` left out."""
        if not self.keep:
            raise ValueError("records can be left out only of a builder made with keep=True")
        rest = ProfileBuilder(self.tolerance)
        for records in self.batches:
            rest.add_records(records.filter(~np.isin(records.labels, exclude)))
        rest.left_out = dict(self.left_out)
        rest.broken = self.broken
        return rest.result()

    def state(self) -> dict[str, Any]:
        """Everything added so far as JSON (for a builder without kept batches or ids)."""
        if self.keep or self.track_ids:
            raise ValueError("only a builder made with keep=False, track_ids=False has a state")
        return {
            "tolerance": self.tolerance,
            "records": [self.records.count, str(self.records.total)],
            "ids": [self.ids.count, str(self.ids.total)],
            "payloads": [self.payloads.count, str(self.payloads.total)],
            "has_payload": self.has_payload,
            "repeats": self.repeats,
            "left_out": dict(self.left_out),
            "broken": [self.broken.records, self.broken.vectors, self.broken.duplicates],
            "count": self.count,
            "nonfinite": self.nonfinite,
            "zero": self.zero,
            "off_unit": self.off_unit,
            # JSON has no infinity: an empty builder's bounds are written as null.
            "norm": [
                None if self.count == self.nonfinite else self.norm_min,
                None if self.count == self.nonfinite else self.norm_max,
                str(self.norm_units),
            ],
            "bounds_lost": [self.low_lost, self.high_lost],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ProfileBuilder:
        """A builder that goes on from ``state`` (see :meth:`state`)."""
        b = cls(float(state["tolerance"]), track_ids=False)
        b.records = RecordChecksum(int(state["records"][0]), int(state["records"][1]))
        b.ids = IdChecksum(int(state["ids"][0]), int(state["ids"][1]))
        b.payloads = RecordChecksum(int(state["payloads"][0]), int(state["payloads"][1]))
        b.has_payload = bool(state["has_payload"])
        b.repeats = int(state["repeats"])
        b.left_out = {str(k): int(v) for k, v in state["left_out"].items()}
        b.broken = _Broken(*(int(x) for x in state["broken"]))
        b.count = int(state["count"])
        b.nonfinite = int(state["nonfinite"])
        b.zero = int(state["zero"])
        b.off_unit = int(state["off_unit"])
        low, high, total = state["norm"]
        b.norm_min = np.inf if low is None else float(low)
        b.norm_max = -np.inf if high is None else float(high)
        # A state kept before the norms were summed as integers held a float total.
        b.norm_units = int(total) if isinstance(total, str) else norm_units(np.array([total]))
        b.low_lost, b.high_lost = (bool(x) for x in state.get("bounds_lost", [False, False]))
        return b

    def result(self) -> ShardProfile:
        """The profile of everything added."""
        all_ids = np.concatenate(self.seen) if self.seen else np.empty(0, np.int64)
        duplicates = repeated_ids(all_ids) + self.repeats + self.broken.duplicates
        finite = self.count - self.nonfinite
        return ShardProfile(
            count=self.count + self.broken.records,
            nonfinite=self.nonfinite + self.broken.vectors,
            zero=self.zero,
            duplicate_ids=duplicates,
            off_unit_norm=self.off_unit,
            norm_min=None if finite == 0 else round(self.norm_min, 6),
            norm_max=None if finite == 0 else round(self.norm_max, 6),
            norm_mean=None if finite == 0 else round(self.norm_units / _NORM_UNIT / finite, 6),
            checksum=self.records.hexdigest(),
            id_checksum=self.ids.hexdigest(),
            payload_checksum=self.payloads.hexdigest() if self.has_payload else "",
            quarantined=dict(sorted(self.left_out.items())),
        )


def scan_shard(
    store: VectorStore,
    shard: ShardRef,
    transform: Transform | None = None,
    *,
    batch_size: int = 50_000,
    unit_norm_tolerance: float = 1e-3,
    keep: bool = False,
    also: Callable[[Ids, Vectors], None] | None = None,
    limits: Limits | None = None,
) -> ProfileBuilder:
    """Scan ``shard`` once into a profile builder, seen through ``transform`` if given.

    With ``limits`` (the target's, for a source shard), records the target cannot hold are left
    out and counted, as the copy leaves them out; without (a target shard), records no store can
    hold are counted as the target's broken vectors and repeated ids. ``also`` sees every batch
    too (the exact search of the recall gate rides on this read).
    """
    builder = ProfileBuilder(unit_norm_tolerance, keep=keep)
    for batch in store.iter_shard(shard, batch_size, read_ahead=True):
        records, faults = batch.records, Faults()
        faults.extend(batch.faults)
        if limits is not None:
            records, bad = screen(records, limits)
            faults.extend(bad)
        if transform is not None and len(records):
            records = records.with_vectors(transform(records.vectors()))
        builder.add_records(records, faults, quarantined=limits is not None)
        if also is not None and len(records):
            also(records.labels, records.vectors())
    return builder
