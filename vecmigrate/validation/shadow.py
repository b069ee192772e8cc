"""Shadow-read samples: pairs of (served, candidate) searches, recorded for the gates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import Boolean, Column, Float, Index, String, Table, func, select

from vecmigrate.catalog.catalog import Catalog, metadata, scope_columns, sequence_key
from vecmigrate.catalog.engines import begin
from vecmigrate.catalog.sql import all_rows, create_tables_once, in_scope, row_values
from vecmigrate.model.gates import ShadowFigures

samples_table = Table(
    "shadow_samples",
    metadata,
    sequence_key("id"),
    *scope_columns(primary_key=False),
    Column("candidate", String(64), nullable=False),
    Column("overlap", Float),
    Column("ms_old", Float),
    Column("ms_new", Float),
    Column("error", Boolean, nullable=False),
    Index("shadow_by_candidate", "tenant", "collection", "candidate", "id"),
)


@dataclass
class ShadowSample:
    """One shadowed search: how much the candidate agreed and how long each side took."""

    tenant: str
    collection: str
    candidate: str
    ms_old: float
    ms_new: float | None = None
    overlap: float | None = None
    error: bool = False


class ShadowLog:
    """Shadow samples in a catalog's database."""

    def __init__(self, catalog: Catalog) -> None:
        self.engine = catalog.engine
        create_tables_once(self.engine, "shadow", samples_table)

    def record(self, samples: list[ShadowSample]) -> None:
        """Store samples (one transaction)."""
        if not samples:
            return
        with begin(self.engine) as conn:
            conn.execute(samples_table.insert(), [row_values(s) for s in samples])

    def last_id(self) -> int:
        """The newest sample's id (a mark: figures after it cover what comes next)."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.max(samples_table.c.id))).scalar_one() or 0)

    def figures(self, tenant: str, collection: str, candidate: str, after: int) -> ShadowFigures:
        """Overlap and latency of the samples after id ``after``."""
        rows = all_rows(
            self.engine,
            select(
                samples_table.c.overlap,
                samples_table.c.ms_old,
                samples_table.c.ms_new,
                samples_table.c.error,
            ).where(
                in_scope(samples_table, tenant, collection)
                & (samples_table.c.candidate == candidate)
                & (samples_table.c.id > after)
            ),
        )
        ok = [r for r in rows if not r["error"] and r["overlap"] is not None]
        fig = ShadowFigures(samples=len(ok), errors=len(rows) - len(ok))
        if ok:
            overlap = np.array([r["overlap"] for r in ok])
            old = np.array([r["ms_old"] for r in ok])
            new = np.array([r["ms_new"] for r in ok])
            fig.overlap = round(float(overlap.mean()), 4)
            fig.p50_ms_old = round(float(np.percentile(old, 50)), 3)
            fig.p99_ms_old = round(float(np.percentile(old, 99)), 3)
            fig.p50_ms_new = round(float(np.percentile(new, 50)), 3)
            fig.p99_ms_new = round(float(np.percentile(new, 99)), 3)
        return fig
