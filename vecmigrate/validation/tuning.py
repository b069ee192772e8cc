"""Search-parameter tuning in the canary window: the trials routers run on mirrored reads, the
bounded sample of query vectors they keep for the ground truth, the measuring of every
candidate against the exact answer over the target's store, and the value chosen for serving.

Everything lives in the catalog, scoped by tenant and collection: the query vectors never
travel through Temporal (the workflow sees figures only) and never reach a log. A trial's
queries are deleted once its result is recorded.

The router side (trying a candidate value on one mirrored read, and serving with the chosen
value) is ``vecmigrate.serving.tuning``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import (
    Column,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)

from vecmigrate.catalog.catalog import Catalog, metadata, scope_columns, sequence_key
from vecmigrate.catalog.engines import begin
from vecmigrate.catalog.sql import (
    all_rows,
    create_tables_once,
    first_row,
    in_scope,
    insert_ignoring_duplicate,
    record,
    upsert,
)
from vecmigrate.model.spec import MigrationSpec
from vecmigrate.model.tuning import CandidateFigures, TuningResult, choose
from vecmigrate.records.vectors import Vectors
from vecmigrate.validation.intervals import mean_score_interval, quantile_interval, rounded
from vecmigrate.validation.retrieval import recall_scores

trials_table = Table(
    "tuning_trials",
    metadata,
    *scope_columns(primary_key=True),
    Column("migration_id", String(200), primary_key=True),
    Column("candidate", String(64), nullable=False),
    Column("index_id", String(200)),
    Column("parameter", String(32), nullable=False),
    Column("candidates", Text, nullable=False),  # JSON list of ints
    Column("k", Integer, nullable=False),
    Column("sample", Integer, nullable=False),
    Column("state", String(16), nullable=False),  # trying | done
    Column("result", Text),  # the TuningResult, once done
)

queries_table = Table(
    "tuning_queries",
    metadata,
    sequence_key("id"),
    *scope_columns(primary_key=False),
    Column("migration_id", String(200), nullable=False),
    Column("query", LargeBinary, nullable=False),  # float32 bytes, the candidate's space
    Column("results", Text, nullable=False),  # JSON: value -> {"ids": [...], "ms": float}
)

params_table = Table(
    "search_params",
    metadata,
    Column("index_id", String(200), primary_key=True),
    *scope_columns(primary_key=False),
    Column("params", Text, nullable=False),  # JSON: parameter -> value
    Column("migration_id", String(200), nullable=False),
)


@dataclass(frozen=True)
class Trial:
    """A tuning trial routers run on the mirrored reads of ``candidate``."""

    tenant: str
    collection: str
    migration_id: str
    candidate: str
    index_id: str | None
    parameter: str
    candidates: tuple[int, ...]
    k: int
    sample: int


class TuningLog:
    """Tuning trials, their sampled queries and the chosen search parameters, in a catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.engine = catalog.engine
        create_tables_once(self.engine, "tuning", trials_table, queries_table, params_table)

    # -- trials ---------------------------------------------------------------------------------

    def start(self, spec: MigrationSpec, index_id: str | None) -> None:
        """Open the migration's trial (idempotent: a trial already open or done is kept)."""
        policy = spec.online.tuning
        if policy is None:
            raise ValueError(f"migration {spec.migration_id} has no online.tuning")
        insert_ignoring_duplicate(
            self.engine,
            insert(trials_table).values(
                tenant=spec.tenant,
                collection=spec.collection,
                migration_id=spec.migration_id,
                candidate=spec.target.name,
                index_id=index_id,
                parameter=policy.parameter,
                candidates=json.dumps(sorted(policy.candidates)),
                k=policy.k,
                sample=policy.sample,
                state="trying",
            ),
        )

    def active(self, tenant: str, collection: str, candidate: str) -> Trial | None:
        """The open trial on ``candidate``'s mirrored reads, if any."""
        t = trials_table
        row = first_row(
            self.engine,
            select(t).where(
                in_scope(t, tenant, collection)
                & (t.c.candidate == candidate)
                & (t.c.state == "trying")
            ),
        )
        if row is None:
            return None
        return record(
            Trial,
            row,
            candidates=tuple(json.loads(row["candidates"])),
            k=int(row["k"]),
            sample=int(row["sample"]),
        )

    def result(self, tenant: str, collection: str, migration_id: str) -> TuningResult | None:
        """The recorded result of a trial that is done."""
        t = trials_table
        row = first_row(
            self.engine,
            select(t.c.result).where(
                in_scope(t, tenant, collection) & (t.c.migration_id == migration_id)
            ),
        )
        if row is None or row["result"] is None:
            return None
        return TuningResult.model_validate_json(row["result"])

    def finish(self, tenant: str, collection: str, migration_id: str, result: TuningResult) -> None:
        """Record the result, close the trial and delete its sampled queries."""
        t, q = trials_table, queries_table
        with begin(self.engine) as conn:
            conn.execute(
                update(t)
                .where(in_scope(t, tenant, collection) & (t.c.migration_id == migration_id))
                .values(state="done", result=result.model_dump_json())
            )
            conn.execute(
                delete(q).where(
                    in_scope(q, tenant, collection) & (q.c.migration_id == migration_id)
                )
            )

    # -- sampled queries ------------------------------------------------------------------------

    def count(self, trial: Trial) -> int:
        """Queries the trial has kept so far."""
        q = queries_table
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(
                        in_scope(q, trial.tenant, trial.collection)
                        & (q.c.migration_id == trial.migration_id)
                    )
                ).scalar_one()
            )

    def add(
        self, trial: Trial, query: Vectors, results: dict[int, tuple[list[int], float]]
    ) -> None:
        """Keep one mirrored query (a float32 vector) and what each candidate value found,
        while the trial is open (a trial judged keeps no query vector)."""
        t = trials_table
        with begin(self.engine) as conn:
            state = conn.execute(
                select(t.c.state).where(
                    in_scope(t, trial.tenant, trial.collection)
                    & (t.c.migration_id == trial.migration_id)
                )
            ).scalar_one_or_none()
            if state != "trying":
                return
            conn.execute(
                insert(queries_table).values(
                    tenant=trial.tenant,
                    collection=trial.collection,
                    migration_id=trial.migration_id,
                    query=np.ascontiguousarray(query, dtype=np.float32).tobytes(),
                    results=json.dumps(
                        {
                            str(v): {"ids": ids, "ms": round(ms, 4)}
                            for v, (ids, ms) in results.items()
                        }
                    ),
                )
            )

    def queries(
        self, tenant: str, collection: str, migration_id: str, limit: int, dimension: int
    ) -> tuple[Vectors, list[dict[str, Any]]]:
        """The first ``limit`` kept queries (a matrix) and their results, in order."""
        q = queries_table
        rows = all_rows(
            self.engine,
            select(q.c.query, q.c.results)
            .where(in_scope(q, tenant, collection) & (q.c.migration_id == migration_id))
            .order_by(q.c.id)
            .limit(limit),
        )
        if not rows:
            return np.zeros((0, dimension), np.float32), []
        matrix = np.stack([np.frombuffer(r["query"], dtype=np.float32) for r in rows])
        return matrix, [json.loads(r["results"]) for r in rows]

    # -- what serves ----------------------------------------------------------------------------

    def tuned(self, index_id: str) -> dict[str, int] | None:
        """The search parameters chosen for ``index_id``, if any."""
        row = first_row(
            self.engine, select(params_table.c.params).where(params_table.c.index_id == index_id)
        )
        return None if row is None else {k: int(v) for k, v in json.loads(row["params"]).items()}

    def set_tuned(
        self, index_id: str, tenant: str, collection: str, params: dict[str, int], by: str
    ) -> None:
        """Serve ``index_id`` with ``params`` (routers take it with their next plan)."""
        upsert(
            self.engine,
            params_table,
            params_table.c.index_id == index_id,
            {"index_id": index_id},
            {
                "tenant": tenant,
                "collection": collection,
                "params": json.dumps(params),
                "migration_id": by,
            },
        )


def measure(
    log: TuningLog,
    spec: MigrationSpec,
    index_id: str | None,
    exact: Callable[[Vectors, int], Any],
) -> TuningResult:
    """Judge every candidate on the trial's kept queries against ``exact`` (the exact search
    over the target's store: distances and ids), choose the cheapest that meets the gates,
    serve ``index_id`` with it, and record the result (idempotent: a trial already judged
    returns its recorded result)."""
    policy = spec.online.tuning
    if policy is None:
        raise ValueError(f"migration {spec.migration_id} has no online.tuning")
    tenant, collection, mid = spec.tenant, spec.collection, spec.migration_id
    done = log.result(tenant, collection, mid)
    if done is not None:
        return done
    param = policy.parameter
    default = int(getattr(spec.target.index, param))
    matrix, rows = log.queries(
        tenant, collection, mid, policy.sample, spec.target.embedding.dimension
    )
    figures = [CandidateFigures(value=v) for v in sorted(policy.candidates)]
    if rows:
        _, truth = exact(matrix, policy.k)
        truth = np.asarray(truth)
        for fig in figures:
            tried = [
                (n, row[str(fig.value)]) for n, row in enumerate(rows) if str(fig.value) in row
            ]
            # What the candidate found, -1 padded (padding never counts as a hit).
            found = np.full((len(tried), max((len(g["ids"]) for _, g in tried), default=0)), -1)
            for n, (_, got) in enumerate(tried):
                found[n, : len(got["ids"])] = got["ids"]
            scores = recall_scores(found, truth[[n for n, _ in tried]])
            measured = ~np.isnan(scores)  # a query whose exact answer is empty measures nothing
            s = scores[measured]
            t = np.asarray([float(g["ms"]) for _, g in tried], np.float64)[measured]
            fig.queries = len(s)
            if len(s):
                fig.recall = round(float(s.mean()), 4)
                fig.recall_interval = rounded(mean_score_interval(s, policy.k))
                fig.p50_ms = round(float(np.percentile(t, 50)), 3)
                fig.p99_ms = round(float(np.percentile(t, 99)), 3)
                fig.p99_interval = rounded(quantile_interval(t, 0.99))
    chosen, reason = choose(figures, policy, param, default)
    result = TuningResult(
        parameter=param,
        default=default,
        k=policy.k,
        min_recall=policy.min_recall,
        max_p99_ms=policy.max_p99_ms,
        index_id=index_id,
        queries=len(rows),
        candidates=figures,
        chosen=chosen,
        reason=reason,
    )
    if chosen is not None and index_id is not None:
        log.set_tuned(index_id, tenant, collection, {param: chosen}, mid)
    log.finish(tenant, collection, mid, result)
    return result
