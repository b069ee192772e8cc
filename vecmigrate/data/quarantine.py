"""The quarantine: source records a migration left out, each with its reason, in the catalog.

A record no target can hold (a null vector, the wrong dimension, NaN or infinity, an id that
occurs twice) or that this target cannot (an id or a value it cannot store, a payload larger
than it allows) is never written and never dropped in silence: the copy notes it here, the
gates count it, and the report lists the ids by reason. The source still holds every one of
them (vecmigrate does not write to an adopted source), so nothing is lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Column, DateTime, Integer, String, Table, Text, func, select
from sqlalchemy.dialects import postgresql, sqlite

from vecmigrate.catalog import sql
from vecmigrate.catalog.catalog import Catalog, metadata, now
from vecmigrate.catalog.engines import begin
from vecmigrate.records.batch import Faults
from vecmigrate.records.screening import Limits, screen
from vecmigrate.records.sharding import HASH_SPACE, hash_key
from vecmigrate.stores.base import VectorStore, ring_window

quarantine = Table(
    "quarantine",
    metadata,
    Column("migration_id", String(200), primary_key=True),
    Column("record_id", Text, primary_key=True),
    Column("reason", String(32), primary_key=True),
    Column("shard", Integer, nullable=False),
    Column("detail", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)

# Ids listed per reason in a report (every one of them is in the table).
REPORT_IDS = 100


@dataclass
class QuarantineReport:
    """Records left out of a migration: how many per reason, and (some of) their ids."""

    counts: dict[str, int] = field(default_factory=dict)
    ids: dict[str, list[str]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Records left out in all."""
        return sum(self.counts.values())


class Quarantine:
    """The quarantine table in a catalog's database."""

    def __init__(self, catalog: Catalog) -> None:
        self.engine = catalog.engine
        sql.create_tables_once(self.engine, "quarantine", quarantine)

    def add(self, migration_id: str, shard: int, faults: Faults) -> None:
        """Note records left out of ``shard`` (a second note of the same record and reason,
        from a batch copied again after a crash, changes nothing)."""
        if not len(faults):
            return
        at = now()
        rows = [
            {
                "migration_id": migration_id,
                "record_id": record_id,
                "reason": reason,
                "shard": shard,
                "detail": detail,
                "at": at,
            }
            for record_id, reason, detail in zip(
                faults.ids, faults.reasons, faults.details, strict=True
            )
        ]
        with begin(self.engine) as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            conn.execute(dialect.insert(quarantine).on_conflict_do_nothing(), rows)

    def report(self, migration_id: str, listed: int = REPORT_IDS) -> QuarantineReport:
        """Counts per reason and the first ``listed`` ids of each (in id order)."""
        out = QuarantineReport()
        with self.engine.connect() as conn:
            counts = conn.execute(
                select(quarantine.c.reason, func.count())
                .where(quarantine.c.migration_id == migration_id)
                .group_by(quarantine.c.reason)
                .order_by(quarantine.c.reason)
            ).all()
            for reason, count in counts:
                out.counts[str(reason)] = int(count)
                ids = conn.execute(
                    select(quarantine.c.record_id)
                    .where(
                        (quarantine.c.migration_id == migration_id)
                        & (quarantine.c.reason == reason)
                    )
                    .order_by(quarantine.c.record_id)
                    .limit(listed)
                ).all()
                out.ids[str(reason)] = [str(r[0]) for r in ids]
        return out

    def ids(self, migration_id: str, reason: str | None = None) -> list[str]:
        """Every quarantined id of a migration (of one reason), in id order."""
        query = select(quarantine.c.record_id).where(quarantine.c.migration_id == migration_id)
        if reason is not None:
            query = query.where(quarantine.c.reason == reason)
        with self.engine.connect() as conn:
            return [str(r[0]) for r in conn.execute(query.order_by(quarantine.c.record_id)).all()]

    def reasons(self, migration_id: str, record_ids: list[str]) -> dict[str, set[str]]:
        """The reasons each of these records (ids as text) was left out of the migration for;
        records never left out are not in it."""
        found: dict[str, set[str]] = {}
        for at in range(0, len(record_ids), 1000):
            rows = sql.all_rows(
                self.engine,
                select(quarantine.c.record_id, quarantine.c.reason).where(
                    (quarantine.c.migration_id == migration_id)
                    & quarantine.c.record_id.in_(record_ids[at : at + 1000])
                ),
            )
            for r in rows:
                found.setdefault(str(r["record_id"]), set()).add(str(r["reason"]))
        return found


# Source records ``plan`` reads to estimate the quarantine.
ESTIMATE_SAMPLE = 2_000


@dataclass
class QuarantineEstimate:
    """Records a sample of the source would leave out, and what that makes over the source."""

    sampled: int
    found: dict[str, int]
    estimated: int

    @property
    def seen(self) -> int:
        """Records of the sample left out, over all reasons."""
        return sum(self.found.values())


def estimate(
    source: VectorStore, limits: Limits, n: int = ESTIMATE_SAMPLE, seed: int = 0
) -> QuarantineEstimate:
    """The quarantine a copy to a target with ``limits`` would fill, estimated from about ``n``
    source records: a window of the key ring (the whole of a small source), read as the copy
    reads, its records screened as the copy screens them, scaled to the source's count."""
    total = source.count()
    start = int(hash_key(np.array([seed], dtype=np.int64))[0])
    width = HASH_SPACE if total <= n else max(1, int(HASH_SPACE * n / total))
    faults = Faults()
    kept = 0
    for window in ring_window(start, width):
        for batch in source.iter_shard(window, 10_000):
            faults.extend(batch.faults)
            good, unfit = screen(batch.records, limits)
            faults.extend(unfit)
            kept += len(good)
    found = faults.counts()
    sampled = kept + len(faults)  # rows read (an id in two rows counts once among faults)
    share = sum(found.values()) / sampled if sampled else 0.0
    return QuarantineEstimate(sampled, found, round(share * total))
