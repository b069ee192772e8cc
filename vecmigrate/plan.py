"""Dry-run planning: what a migration will do, checked against the catalog, writing nothing."""

from __future__ import annotations

from dataclasses import dataclass, field

from vecmigrate.backfill import Check, open_source, run_checks, shard_plan
from vecmigrate.catalog import Catalog
from vecmigrate.errors import VecmigrateError
from vecmigrate.lifecycle import STRATEGY_PHASES, Phase
from vecmigrate.spec import (
    FaissHnsw,
    FaissIvfPq,
    HnswlibHnsw,
    IndexSpec,
    MigrationSpec,
    PgvectorHnsw,
)

# Rough single-machine rates (vectors/s at 128 dimensions) for the time estimate; the real
# figures come from the benchmarks and vary with dimension, parameters and cores.
COPY_RATE = 100_000.0
BUILD_RATE = {
    "faiss_flat": 2_000_000.0,
    "faiss_ivf_flat": 10_000.0,
    "faiss_ivf_pq": 8_000.0,
    "faiss_hnsw": 2_400.0,
    "hnswlib_hnsw": 2_400.0,
    "pgvector_hnsw": 1_500.0,
    "pgvector_ivfflat": 20_000.0,
}

_DESCRIBE = {
    Phase.PLANNED: "spec validated, migration id {mid}",
    Phase.PREPARING: "check the catalog, register {target} ({model}, {dim}d, {metric}), "
    "plan {shards} shards",
    Phase.BACKFILLING: "copy {total} vectors {source} -> {target} in batches of {batch}, "
    "{parallel} shards at a time, resumable per batch",
    Phase.BUILDING_INDEX: "build {index} per shard, artifacts content-addressed",
    Phase.VALIDATING: "profile every shard (counts, checksums, NaN, norms), then recall@{k} "
    "(floor {min_recall}) on {queries} {query_source} queries, old-vs-new agreement, latency "
    "and distribution; {on_failure} on a failed gate",
    Phase.AWAITING_CUTOVER: "{cutover}",
    Phase.CUT_OVER: "compare-and-set routing: reads -> {target}, writes -> {target} + {source}",
    Phase.BAKING: "keep {source} ready for instant rollback for {bake}s",
    Phase.FINALIZING: "stop writing {source}; keep it retained",
    Phase.COMPLETED: "done",
}


@dataclass
class Plan:
    """The outcome of a dry run."""

    spec: MigrationSpec
    steps: list[tuple[str, str]] = field(default_factory=list)
    shard_sizes: dict[int, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    estimated_seconds: float = 0.0
    extra_bytes: int = 0

    @property
    def ok(self) -> bool:
        """Whether the migration may start."""
        return not self.problems


# Per-record overhead of the built-in store's row (keys, hash key, page slack), measured roughly.
ROW_OVERHEAD = 40


def index_bytes(spec: IndexSpec, count: int, dim: int) -> int:
    """Approximate size of an index over ``count`` vectors of ``dim`` floats."""
    vectors = count * dim * 4
    if isinstance(spec, FaissIvfPq):
        return count * (spec.m * spec.nbits // 8 + 8)
    if isinstance(spec, FaissHnsw | HnswlibHnsw | PgvectorHnsw):
        return vectors + count * (spec.m * 2 * 4 + 16)
    return vectors + count * 8


def plan_migration(catalog: Catalog, spec: MigrationSpec) -> Plan:
    """Check ``spec`` against the catalog and stores and describe every step; writes nothing."""
    plan = Plan(spec=spec)
    plan.checks = run_checks(catalog, spec)
    plan.problems = [c.detail for c in plan.checks if not c.passed]
    total = 0
    if not plan.problems:
        try:
            source = open_source(spec)
            plan.shard_sizes = {s.index: source.count(s) for s in shard_plan(spec, source)}
            total = sum(plan.shard_sizes.values())
        except VecmigrateError as exc:
            plan.problems.append(str(exc))
    dim = spec.target.embedding.dimension
    # Blue-green keeps both versions until the source is retired: the extra storage is the
    # target's records plus its index.
    plan.extra_bytes = total * (dim * 4 + ROW_OVERHEAD) + index_bytes(spec.target.index, total, dim)
    scale = dim / 128.0
    plan.estimated_seconds = (
        total / COPY_RATE * scale
        + total / BUILD_RATE[spec.target.index.kind] * scale
        + spec.cutover.bake_seconds
    )
    values = {
        "mid": spec.migration_id,
        "source": spec.source.name,
        "target": spec.target.name,
        "model": f"{spec.target.embedding.model_id}@{spec.target.embedding.model_version}",
        "dim": dim,
        "metric": spec.target.embedding.metric,
        "shards": len(spec.shards.selected()),
        "total": total,
        "batch": spec.batch_size,
        "parallel": spec.max_parallel_shards,
        "index": spec.target.index.kind,
        "k": spec.gates.k,
        "min_recall": spec.gates.min_recall,
        "queries": spec.gates.sample_queries,
        "query_source": "recorded" if spec.gates.query_log else "sampled",
        "on_failure": spec.gates.on_failure,
        "bake": spec.cutover.bake_seconds,
        "cutover": "wait for approve_cutover (manual)"
        if spec.cutover.mode == "manual"
        else "proceed once gates pass (automatic)",
    }
    plan.steps = [(p.value, _DESCRIBE[p].format(**values)) for p in STRATEGY_PHASES[spec.strategy]]
    return plan
