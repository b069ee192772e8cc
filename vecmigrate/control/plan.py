"""Dry-run planning: what a migration will do, checked against the catalog, writing nothing."""

from __future__ import annotations

from dataclasses import dataclass, field

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.data import footprint
from vecmigrate.data.backfill import Check, open_source, run_checks, shard_plan
from vecmigrate.errors import VecmigrateError
from vecmigrate.model.costs import StorageEstimate
from vecmigrate.model.lifecycle import LIFECYCLE, describe, figures
from vecmigrate.model.spec import MigrationSpec

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
    storage: StorageEstimate | None = None

    @property
    def ok(self) -> bool:
        """Whether the migration may start."""
        return not self.problems


def plan_regional(spec: MigrationSpec) -> Plan:
    """The plan of a regional or multi-tenant migration: where each child runs and in what order.

    Residency and tenant scope were checked when the spec was read (a spec that crosses them
    never gets here); each child checks its own region's catalog and stores when it prepares,
    on that region's workers (the control plane does not read regional data).
    """
    plan = Plan(spec=spec)
    policy = spec.region_policy
    names = [r.name for r in spec.regions]
    tenants = (
        "every tenant holding the collection (looked up in each region)"
        if spec.tenants == "all"
        else ", ".join(spec.tenants or (spec.tenant,))
    )
    for region in spec.regions:
        source = region.source_store or spec.source.store
        target = region.target_store or spec.target.store
        plan.checks.append(
            Check(
                f"residency {region.name}",
                True,
                f"source in {source.location or region.location}, target in "
                f"{target.location or region.location}; allowed {list(region.allowed())}; "
                f"run only by workers on {region.task_queue or 'vecmigrate-' + region.name}",
            )
        )
    plan.checks.append(
        Check("tenant scope", True, f"tenants {tenants}; one child migration per tenant")
    )
    for tenant, limits in spec.tenant_limits.items():
        plan.checks.append(
            Check(
                f"limits {tenant}",
                True,
                f"at most {limits.max_parallel_shards or spec.max_parallel_shards} shards at "
                f"once, {limits.max_vectors_per_second or 'unthrottled'} vectors/s",
            )
        )
    order = list(policy.cutover_order or names)
    rollout = (
        f"canary {names[0]} alone until its gates pass, then "
        + (", ".join(names[1:]) or "nothing else")
        if policy.canary and len(names) > 1
        else ", ".join(names) or "one child per tenant"
    )
    plan.steps = [
        ("ROLLOUT", f"{rollout}; at most {policy.max_parallel} regions at a time"),
        (
            "PER CHILD",
            f"{spec.strategy} {spec.source.name} -> {spec.target.name} "
            f"({spec.target.index.kind}), gates as in the spec; a failed gate rolls it back",
        ),
        (
            "BARRIER",
            "every child waits before its cut-over until all passed their gates; "
            + (
                "then wait for approve_cutover"
                if spec.cutover.mode == "manual"
                else "then go on by itself"
            ),
        ),
        (
            "CUT_OVER",
            " -> ".join(order or ["all"])
            + (f", {policy.pause_between_seconds}s between regions" if len(order) > 1 else ""),
        ),
        (
            "ON FAILURE",
            "the failed region rolls back; "
            + (
                "the others wait for an operator (approve_cutover goes on without it)"
                if policy.on_region_failure == "wait"
                else "every other region rolls back too"
            ),
        ),
    ]
    return plan


def plan_migration(catalog: Catalog, spec: MigrationSpec) -> Plan:
    """Check ``spec`` against the catalog and stores and describe every step; writes nothing."""
    if spec.regional:
        return plan_regional(spec)
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
    plan.storage = storage_estimate(catalog, spec, total)
    # Both versions exist until the source is pruned: the extra storage is the target.
    plan.extra_bytes = plan.storage.target.total
    scale = dim / 128.0
    plan.estimated_seconds = (
        total / COPY_RATE * scale
        + total / BUILD_RATE[spec.target.index.kind] * scale
        + spec.cutover.bake_seconds
    )
    strategy = LIFECYCLE[spec.strategy]
    values = figures(spec, total)
    plan.steps = [(p.value, describe(strategy, p, values)) for p in strategy.phases]
    return plan


def storage_estimate(catalog: Catalog, spec: MigrationSpec, total: int) -> StorageEstimate:
    """The storage before, during and after the migration (see ``data.footprint``)."""
    return footprint.storage_estimate(catalog, spec, total)
