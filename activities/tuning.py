"""Tuning activities: thin adapters over ``vecmigrate.validation.tuning``.

``tuning_start`` opens the trial routers run on the candidate's mirrored reads;
``tuning_choose`` computes the exact answer over the target's store for the queries they kept,
judges every candidate, serves the target's index with the cheapest that meets the gates, and
returns the figures (never the query vectors). Both are idempotent: a retry finds the open
trial, or the result already recorded.
"""

from __future__ import annotations

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.data.backfill import open_target
from vecmigrate.model.spec import MigrationSpec
from vecmigrate.model.tuning import TuningInput, TuningResult
from vecmigrate.validation.tuning import TuningLog, measure


def start(catalog: Catalog, spec: MigrationSpec, inp: TuningInput) -> None:
    """Open the migration's trial on its candidate index."""
    TuningLog(catalog).start(spec, inp.index_id)


def choose(catalog: Catalog, spec: MigrationSpec, inp: TuningInput) -> TuningResult:
    """Judge the candidates on the kept queries and serve the target with the chosen one."""
    store = open_target(spec)
    metric = str(spec.target.embedding.metric)
    return measure(
        TuningLog(catalog), spec, inp.index_id, lambda q, k: store.search(q, k, metric=metric)
    )
