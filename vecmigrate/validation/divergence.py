"""Divergence between regions' copies: what one region computes of its own copy (digests per
shard and id-hash bucket, the records of the buckets that differ, its answers to a query
sample), and the whole comparison of two copies for ``vecmigrate diff --regions``.

The figures are the pure models of :mod:`vecmigrate.model.divergence`: labels, counts and
checksums only, so a region's activity returns them through Temporal without any vector leaving
the region. The checksums are the store checksum's (:meth:`Records.hashes`) for the digests,
and the reconcile's (vector hash, payload hash) for the records compared.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from vecmigrate.data.backfill import Throttle
from vecmigrate.model.divergence import (
    MAX_ENTRIES,
    Cell,
    CopyAnswers,
    CopyDigest,
    CopyEntries,
    Entry,
    RegionDivergence,
    ShardDigest,
    buckets_for,
    compare_copies,
    differing_cells,
)
from vecmigrate.model.spec import DivergenceBound
from vecmigrate.model.tasks import ShardRef, hash_shards
from vecmigrate.records.batch import Records
from vecmigrate.records.checksums import RecordChecksum, record_hashes
from vecmigrate.records.sharding import hash_key
from vecmigrate.records.vectors import Ids
from vecmigrate.stores import VectorStore

# Seed of the query sample drawn from the reference region's copy.
SAMPLE_SEED = 7


def buckets_of(labels: Ids, shard: ShardRef, buckets: int) -> Ids:
    """Each label's bucket inside its hash shard: ``buckets`` equal ranges of the shard's."""
    key = hash_key(labels).astype(np.int64)
    width = shard.hi - shard.lo
    return ((key - shard.lo) * buckets // width).astype(np.int64)


@dataclass
class Reader:
    """Reads one region's copy, ``batch_size`` records at a time, at most
    ``max_records_per_second``."""

    store: VectorStore
    batch_size: int = 10_000
    max_records_per_second: float | None = None
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        self._throttle = Throttle()

    def _iter(self, shard: ShardRef) -> Iterator[Records]:
        for batch in self.store.iter_shard(shard, self.batch_size):
            if len(batch.records):
                yield batch.records
            wait = self._throttle.delay(self.max_records_per_second, len(batch.records))
            if wait > 0:
                self.sleep(wait)

    def digest(
        self,
        shard_count: int,
        *,
        sample: int = 0,
        done: dict[int, ShardDigest] | None = None,
        on_shard: Callable[[ShardDigest], None] | None = None,
    ) -> CopyDigest:
        """The copy's digest per hash shard of ``shard_count`` and per bucket; shards in
        ``done`` (a previous attempt's) are taken as they are. With ``sample``, the labels of
        that many records drawn deterministically (the same records from any copy holding the
        same data)."""
        out = []
        buckets = buckets_for(shard_count)
        for shard in hash_shards(shard_count):
            before = (done or {}).get(shard.index)
            if before is not None:
                out.append(before)
                continue
            whole = RecordChecksum()
            # Each bucket's RecordChecksum, for all buckets at once: counts and wrapping sums.
            counts = np.zeros(buckets, np.int64)
            sums = np.zeros(buckets, np.uint64)
            for records in self._iter(shard):
                hashes = records.hashes()
                whole.add_hashes(hashes)
                bucket = buckets_of(records.labels, shard, buckets)
                counts += np.bincount(bucket, minlength=buckets)
                np.add.at(sums, bucket, hashes)
            digest = ShardDigest(
                shard=shard.index,
                checksum=whole.hexdigest(),
                buckets={
                    b: RecordChecksum(int(counts[b]), int(sums[b])).hexdigest()
                    for b in np.flatnonzero(counts).tolist()
                },
            )
            out.append(digest)
            if on_shard is not None:
                on_shard(digest)
        labels: list[int] = []
        if sample:
            labels = [int(x) for x in self.store.sample_records(sample, SAMPLE_SEED).labels]
        return CopyDigest(shards=out, buckets=buckets, sample=labels)

    def entries(self, shard_count: int, cells: list[Cell]) -> CopyEntries:
        """The records of the copy in ``cells``: label, id and the reconcile's vector and
        payload hashes; at most ``MAX_ENTRIES`` (then ``truncated``)."""
        wanted: dict[int, set[int]] = {}
        for c in cells:
            wanted.setdefault(c.shard, set()).add(c.bucket)
        shards = {s.index: s for s in hash_shards(shard_count)}
        buckets = buckets_for(shard_count)
        out: list[Entry] = []
        for index in sorted(wanted):
            shard = shards[index]
            keep = np.array(sorted(wanted[index]), np.int64)
            for records in self._iter(shard):
                rows = np.isin(buckets_of(records.labels, shard, buckets), keep)
                if not rows.any():
                    continue
                part = records.filter(rows)
                schema = part.schema
                ordered = [schema.primary.name, *sorted(v.name for v in schema.vectors[1:])]
                vec = record_hashes(part.labels, [part.vectors(n) for n in ordered])
                pay = part.payload_only_hashes()
                for label, id_, v, p in zip(
                    part.labels.tolist(), part.id_values(), vec.tolist(), pay.tolist(), strict=True
                ):
                    if len(out) >= MAX_ENTRIES:
                        return CopyEntries(entries=out, truncated=True)
                    out.append(
                        Entry(
                            shard=index,
                            label=label,
                            id=id_,
                            vector=f"{v:016x}",
                            payload=f"{p:016x}",
                        )
                    )
        return CopyEntries(entries=out)

    def answers(self, labels: list[int], k: int, metric: str) -> CopyAnswers:
        """This copy's top ``k`` labels for each query, searching with its own copy of the
        query record's vector (``None`` where the copy lacks the record)."""
        if not labels:
            return CopyAnswers()
        found, vectors = self.store.fetch_labels(np.array(labels, np.int64))
        row = {int(x): i for i, x in enumerate(found.tolist())}
        got: list[list[int] | None] = [None] * len(labels)
        present = [i for i, x in enumerate(labels) if x in row]
        if present:
            queries = vectors[[row[labels[i]] for i in present]]
            _, top = self.store.search(queries, k, metric)
            for i, hits in zip(present, top.tolist(), strict=True):
                got[i] = [int(h) for h in hits if h >= 0]
        return CopyAnswers(answers=got)


def compare_regions(
    bound: DivergenceBound,
    reference: tuple[str, Reader],
    region: tuple[str, Reader],
    *,
    tenant: str,
    shard_count: int,
    metric: str,
) -> RegionDivergence:
    """Two regions' copies compared the way the regional workflow compares them (each copy
    read by its own reader; only digests, labels and hashes are put side by side)."""
    (ref_name, ref), (reg_name, reg) = reference, region
    ref_d = ref.digest(shard_count, sample=bound.queries)
    reg_d = reg.digest(shard_count)
    cells = differing_cells(ref_d, reg_d)
    empty = CopyEntries()
    entries = (
        (ref.entries(shard_count, cells), reg.entries(shard_count, cells))
        if cells
        else (
            empty,
            empty,
        )
    )
    answers = (
        ref.answers(ref_d.sample, bound.k, metric),
        reg.answers(ref_d.sample, bound.k, metric),
    )
    return compare_copies(
        bound,
        reference=ref_name,
        region=reg_name,
        tenant=tenant,
        digests=(ref_d, reg_d),
        entries=entries,
        answers=answers,
        cells=cells,
    )


__all__ = ["Reader", "buckets_of", "compare_regions"]
