"""`vecmigrate diff`: two versions of a collection compared record by record, shard by shard,
with a repair on demand; resumable (the shards compared are kept in a state file).

The versions are named by a migration spec: its source and target by default, or any two
registered versions of its collection. The comparison is the reconcile gate's
(:mod:`vecmigrate.validation.reconcile`).

With ``--regions A,B`` two regions' copies of the spec's target are compared instead, as the
regional workflow's divergence gate compares them (:mod:`vecmigrate.validation.divergence`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.config import home_dir
from vecmigrate.data.backfill import TargetView, open_source, shard_plan, target_limits
from vecmigrate.data.transforms import make_transform
from vecmigrate.errors import NotFoundError, PreconditionError
from vecmigrate.model.divergence import RegionDivergence
from vecmigrate.model.gates import ReconcileReport, ShardReconcile
from vecmigrate.model.regions import child_plans
from vecmigrate.model.spec import DivergenceBound, EmbeddingSchema, MigrationSpec, store_ref
from vecmigrate.model.tasks import ShardRef
from vecmigrate.stores import Scope, VectorStore, open_store
from vecmigrate.validation import reconcile
from vecmigrate.validation.divergence import Reader, compare_regions
from vecmigrate.validation.reconcile import Reconciler, open_existing_target


@dataclass
class Side:
    """One version compared: its name, store and embedding."""

    name: str
    store: VectorStore
    embedding: EmbeddingSchema


def open_version(catalog: Catalog, spec: MigrationSpec, name: str) -> Side:
    """The version ``name`` of the spec's collection: the spec's own source or target, else a
    version registered in the catalog.

    Raises:
        NotFoundError: no such version, or its store holds nothing yet.
    """
    if name == spec.source.name:
        return Side(name, open_source(spec), spec.source.embedding)
    if name == spec.target.name:
        try:
            return Side(name, open_existing_target(spec), spec.target.embedding)
        except NotFoundError:
            raise NotFoundError(
                f"{spec.tenant}/{spec.collection}@{name} has no store yet: nothing was copied to it"
            ) from None
    found = catalog.find_version(spec.tenant, spec.collection, name)
    if found is None:
        raise NotFoundError(
            f"no version {name!r} of {spec.tenant}/{spec.collection} in the catalog (the spec "
            f"names {spec.source.name!r} and {spec.target.name!r})"
        )
    store = open_store(
        store_ref(found.store),
        Scope(spec.tenant, spec.collection, name),
        metric=str(found.embedding.metric),
    )
    return Side(name, store, found.embedding)


def _same_model(a: EmbeddingSchema, b: EmbeddingSchema) -> bool:
    return (a.model_id, a.model_version, a.dimension) == (b.model_id, b.model_version, b.dimension)


def reconciler(
    catalog: Catalog,
    spec: MigrationSpec,
    source: Side,
    target: Side,
    *,
    repair: bool,
    **options: Any,
) -> Reconciler:
    """The comparison of ``target`` against ``source``: through the migration when they are
    the spec's own source and target, else through the transform between their embeddings
    (vectors of another model are not compared, and not repaired).

    Raises:
        PreconditionError: a repair asked between versions of different models.
    """
    options.setdefault("batch_size", spec.batch_size)
    if (source.name, target.name) == (spec.source.name, spec.target.name):
        view = TargetView.of(catalog, spec, target.store)
        return Reconciler(
            source.store, target.store, view, compare_vectors=not spec.model_change, **options
        )
    same = _same_model(source.embedding, target.embedding)
    if repair and not same:
        raise PreconditionError(
            f"{source.name} and {target.name} hold vectors of different models: a repair would "
            "re-embed, which only the migration between them does (compare the spec's own "
            "source and target to repair, or leave out --repair)"
        )
    view = TargetView(
        target.store,
        target_limits(spec, target.store),
        make_transform(source.embedding, target.embedding),
    )
    return Reconciler(source.store, target.store, view, compare_vectors=same, **options)


class DiffState:
    """The shards of one comparison already compared, kept in a JSON file so a rerun goes on
    with the rest."""

    def __init__(self, path: Path, key: dict[str, Any]) -> None:
        self.path = path
        self.key = key
        self.shards: list[ShardRef] | None = None
        self.done: dict[int, ShardReconcile] = {}

    @classmethod
    def load(cls, path: Path, key: dict[str, Any], restart: bool) -> DiffState:
        """The state at ``path`` (a fresh one with ``restart`` or when there is none).

        Raises:
            PreconditionError: the file holds another comparison's state.
        """
        state = cls(path, key)
        if restart or not path.exists():
            return state
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise PreconditionError(
                f"the diff state {path} cannot be read ({exc}); pass --restart to begin again"
            ) from None
        if data.get("key") != key:
            raise PreconditionError(
                f"the diff state {path} is another comparison's ({data.get('key')}); pass "
                "--restart to begin again, or name another --state"
            )
        state.shards = [ShardRef.model_validate(s) for s in data.get("shards", [])] or None
        state.done = {
            int(k): ShardReconcile.model_validate(v) for k, v in data.get("done", {}).items()
        }
        return state

    def save(self) -> None:
        """Write the state (whole, then moved into place: a crash leaves the old or the new)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "key": self.key,
            "shards": [s.model_dump() for s in self.shards or []],
            "done": {str(k): v.model_dump(mode="json") for k, v in sorted(self.done.items())},
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.path)


def default_state_path(key: dict[str, Any]) -> Path:
    """Where a comparison's state is kept by default: the vecmigrate home's ``diff`` folder,
    one file per comparison."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    name = f"{key['tenant']}-{key['collection']}-{key['source']}-{key['target']}-{digest}.json"
    return home_dir() / "diff" / name


def run_diff(
    catalog: Catalog,
    spec: MigrationSpec,
    *,
    source: str | None = None,
    target: str | None = None,
    repair: bool = False,
    max_records_per_second: float | None = None,
    state_path: Path | None = None,
    restart: bool = False,
    on_shard: Callable[[ShardReconcile, bool], None] | None = None,
) -> tuple[ReconcileReport, list[ShardReconcile]]:
    """Compare ``target`` against ``source`` (the spec's by default) shard by shard, repairing
    with ``repair``; shards a previous run compared are taken from the state file (unless
    ``restart``). Returns the report and every shard's result; ``on_shard`` hears of each
    (and whether it was compared now or before).

    Raises:
        NotFoundError: a version is unknown, or has no store.
        PreconditionError: a repair across models, or a state file of another comparison.
    """
    src_name, dst_name = source or spec.source.name, target or spec.target.name
    if src_name == dst_name:
        raise PreconditionError(f"--source and --target both name {src_name!r}")
    key = {
        "tenant": spec.tenant,
        "collection": spec.collection,
        "source": src_name,
        "target": dst_name,
        "spec": spec.spec_hash(),
        "repair": repair,
    }
    path = state_path or default_state_path(key)
    state = DiffState.load(path, key, restart)
    src = open_version(catalog, spec, src_name)
    dst = open_version(catalog, spec, dst_name)
    rec = reconciler(
        catalog, spec, src, dst, repair=repair, max_records_per_second=max_records_per_second
    )
    # Writes the application makes while a shard is compared are left out of it, as the gate
    # leaves them; a repair of the migration's own target settles those it raced with.
    own = (src_name, dst_name) == (spec.source.name, spec.target.name)
    if state.shards is None:
        state.shards = shard_plan(spec, src.store)
    results = []
    for shard in state.shards:
        before = state.done.get(shard.index)
        if before is not None:
            results.append(before)
            if on_shard is not None:
                on_shard(before, True)
            continue
        live = reconcile.during_writes(catalog, spec, settle=own)
        result = replace(rec, **live).shard(shard, repair)
        state.done[shard.index] = result
        state.save()
        results.append(result)
        if on_shard is not None:
            on_shard(result, False)
    return ReconcileReport.of(results), results


def run_region_diff(
    spec: MigrationSpec,
    regions: list[str],
    *,
    tenant: str | None = None,
    max_records_per_second: float | None = None,
) -> tuple[RegionDivergence, DivergenceBound, bool]:
    """Compare the second region's copy of the spec's target with the first's, as the regional
    workflow's gate does, against the spec's ``region_policy.divergence`` (its defaults when the
    spec sets none). Returns the figures, the bound, and whether the bound is the spec's.

    Each region's copy is read from the region's own target store (the spec's region entry);
    only digests, labels and hashes are compared here, but the reads are made from where this
    runs: run it where both regions' stores may be read.

    Raises:
        PreconditionError: not two distinct regions of the spec.
        NotFoundError: a region's copy has no store yet.
    """
    names = [r.name for r in spec.regions]
    if len(regions) != 2 or regions[0] == regions[1]:
        raise PreconditionError(
            f"--regions names two distinct regions (the reference first), not {regions}"
        )
    unknown = [r for r in regions if r not in names]
    if unknown:
        raise PreconditionError(
            f"the spec has no region {', '.join(unknown)} "
            f"(its regions: {', '.join(names) or 'none'})"
        )
    who = tenant or spec.tenant
    plans = {
        p.region: p for p in child_plans(spec, spec.migration_id, {r: [who] for r in regions}, "-")
    }
    readers = []
    for name in regions:
        child = plans[name].spec
        try:
            store = open_existing_target(child)
        except NotFoundError:
            raise NotFoundError(
                f"region {name} holds no copy of {who}/{spec.collection}@{spec.target.name} yet"
            ) from None
        readers.append(
            (
                name,
                Reader(
                    store, batch_size=spec.batch_size, max_records_per_second=max_records_per_second
                ),
            )
        )
    bound = spec.region_policy.divergence
    given = bound is not None
    bound = bound or DivergenceBound()
    report = compare_regions(
        bound,
        readers[0],
        readers[1],
        tenant=who,
        shard_count=spec.shards.count,
        metric=str(spec.target.embedding.metric),
    )
    return report, bound, given
