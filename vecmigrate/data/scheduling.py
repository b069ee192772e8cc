"""What one firing of a scheduled spec migrates, worked out against the catalog at its time.

The template's ``schedule.migrate`` says how: ``rebuild`` the version serving reads with the
template's target index, move it to the ``next_model`` version registered for the target's
model, or migrate the template's source ``as_written``. The firing's target version is new
(``<prefix>-<UTC time of the firing>``), so its migration id is too. When there is nothing to do
(the serving version already has the index, no newer model, a migration of the collection still
running) or the concrete spec fails its preconditions, the firing says why instead of starting
a migration that would stop in PREPARING.
"""

from __future__ import annotations

import contextlib
import re
from datetime import datetime
from typing import Any

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.catalog.specs import SpecStore
from vecmigrate.data.backfill import run_checks
from vecmigrate.embedding.registry import Registry, model_key
from vecmigrate.errors import SpecError, VecmigrateError
from vecmigrate.indexes.sizes import index_spec
from vecmigrate.model.lifecycle import TERMINAL
from vecmigrate.model.schedule import Firing, fresh_target
from vecmigrate.model.spec import (
    EmbeddingSchema,
    MigrationSpec,
    VersionSpec,
    canonical,
    parse_spec,
    store_ref,
)

FIRING_KIND = "schedule.fired"


def version_order(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key of a model version: numbers by value (``10`` after ``9``), words by text."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part)
        for part in re.split(r"[.\-_]", version)
        if part
    )


def plan_firing(catalog: Catalog, template: MigrationSpec, fired_at: datetime) -> Firing:
    """What a firing of ``template`` at ``fired_at`` would migrate; writes nothing."""
    policy = template.schedule
    if policy is None:
        return Firing(outcome="refused", reason="the spec has no schedule section")
    where = f"{template.tenant}/{template.collection}"
    running = [
        m
        for m in catalog.migrations_of(template.tenant, template.collection)
        if m["phase"] not in TERMINAL
    ]
    if running:
        busy = running[0]
        return Firing(
            outcome="nothing_to_do",
            reason=f"migration {busy['id']} of {where} is still running ({busy['phase']}); "
            "this firing leaves it be",
        )
    routing = catalog.get_routing(template.tenant, template.collection)
    if routing is None or routing.read_version is None:
        return Firing(
            outcome="refused", reason=f"{where} has no version serving reads; seed it first"
        )
    serving = catalog.find_version(template.tenant, template.collection, routing.read_version)
    if serving is None:
        return Firing(
            outcome="refused",
            reason=f"{where} reads {routing.read_version}, which the catalog does not hold",
        )
    served_index = template.source.index
    if routing.read_index:
        with contextlib.suppress(VecmigrateError):
            served_index = index_spec(catalog.get_index(routing.read_index).spec)
    current = VersionSpec(
        name=serving.version,
        store=store_ref(serving.store),
        embedding=serving.embedding,
        index=served_index,
    )
    target_name = fresh_target(policy.target_prefix or template.target.name, fired_at)
    if policy.migrate == "as_written":
        source = template.source
        target = template.target.model_copy(update={"name": target_name})
    elif policy.migrate == "rebuild":
        source = current
        target = template.target.model_copy(
            update={"name": target_name, "embedding": serving.embedding}
        )
        if policy.when == "changed" and _same_index(current, target):
            return Firing(
                outcome="nothing_to_do",
                reason=f"{serving.version} already serves {where} with "
                f"{_describe_index(target)} in that store: nothing to rebuild",
                source_version=serving.version,
            )
    else:
        source = current
        newer = _newer_model(catalog, template.target.embedding, serving.embedding)
        if newer is None:
            return Firing(
                outcome="nothing_to_do",
                reason=f"no version of model {template.target.embedding.model_id} newer than "
                f"{model_key(serving.embedding)} (serving {where}) is registered and available",
                source_version=serving.version,
            )
        target = template.target.model_copy(update={"name": target_name, "embedding": newer})
    data = template.model_dump(mode="json")
    data.update(
        source=source.model_dump(mode="json"),
        target=target.model_dump(mode="json"),
        schedule=None,
        id=None,
    )
    try:
        spec = parse_spec(data)
    except SpecError as exc:
        return Firing(
            outcome="refused",
            reason="the firing's spec is invalid: " + "; ".join(exc.problems),
            source_version=source.name,
            target_version=target_name,
        )
    failed = [c.detail for c in run_checks(catalog, spec) if not c.passed]
    if failed:
        return Firing(
            outcome="refused",
            reason="preconditions failed: " + "; ".join(failed),
            migration_id=spec.migration_id,
            source_version=source.name,
            target_version=target_name,
        )
    how = {
        "rebuild": f"rebuild with {_describe_index(target)}",
        "next_model": f"move to model {model_key(target.embedding)}",
        "as_written": "as written",
    }[policy.migrate]
    return Firing(
        outcome="started",
        reason=f"{source.name} -> {target_name}: {how}",
        migration_id=spec.migration_id,
        source_version=source.name,
        target_version=target_name,
        spec=spec.model_dump(mode="json"),
    )


def resolve_firing(
    catalog: Catalog,
    schedule_id: str,
    template: MigrationSpec,
    template_hash: str,
    fired_at: datetime,
    firing_id: str,
    requested_by: str,
) -> Firing:
    """:func:`plan_firing`, recorded: the concrete spec stored by its hash (the migration's
    tasks load it from there) and a ledger entry for the firing. A retried call returns what
    the first one recorded."""
    key = f"schedule/{firing_id}"
    recorded = catalog.entry_by_key(key)
    if recorded is not None:
        return _recorded(catalog, recorded.data)
    firing = plan_firing(catalog, template, fired_at)
    data: dict[str, Any] = {
        "schedule_id": schedule_id,
        "firing_id": firing_id,
        "fired_at": fired_at.isoformat(),
        "template_hash": template_hash,
        **firing.model_dump(mode="json", exclude={"spec"}),
    }
    if firing.spec is not None:
        spec = MigrationSpec.model_validate(firing.spec)
        data["spec_hash"] = SpecStore(catalog).store(spec.migration_id, spec)
    entry = catalog.append(
        tenant=template.tenant,
        collection=template.collection,
        kind=FIRING_KIND,
        actor=requested_by,
        data=data,
        migration_id=firing.migration_id,
        event_key=key,
    )
    return _recorded(catalog, entry.data)


def _recorded(catalog: Catalog, data: dict[str, Any]) -> Firing:
    spec = None
    if data.get("spec_hash") and data.get("migration_id"):
        stored = SpecStore(catalog).load(data["migration_id"], data["spec_hash"])
        spec = stored.model_dump(mode="json")
    return Firing(
        outcome=data["outcome"],
        reason=data["reason"],
        migration_id=data.get("migration_id"),
        source_version=data.get("source_version"),
        target_version=data.get("target_version"),
        spec=spec,
    )


def _same_index(current: VersionSpec, target: VersionSpec) -> bool:
    """Whether ``current`` already has ``target``'s index (same parameters, same store)."""
    same_store = current.store.kind == target.store.kind and (
        current.store.model_dump(exclude={"artifacts"})
        == target.store.model_dump(exclude={"artifacts"})
    )
    return canonical(current.index) == canonical(target.index) and same_store


def _describe_index(version: VersionSpec) -> str:
    params = version.index.model_dump(mode="json", exclude={"kind"})
    shown = ", ".join(f"{k} {v}" for k, v in params.items())
    return f"{version.index.kind}" + (f" ({shown})" if shown else "")


def _newer_model(
    catalog: Catalog, wanted: EmbeddingSchema, serving: EmbeddingSchema
) -> EmbeddingSchema | None:
    """The newest available version of ``wanted``'s model above the one serving, if any."""
    floor = version_order(serving.model_version) if serving.model_id == wanted.model_id else ()
    candidates = [
        m.schema
        for m in Registry(catalog).all_models()
        if m.schema.model_id == wanted.model_id
        and m.available
        and version_order(m.schema.model_version) > floor
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda s: version_order(s.model_version))


def firing_migration(catalog: Catalog, workflow_id: str) -> str | None:
    """The migration a schedule's firing ``workflow_id`` started, from the ledger (None: not a
    firing this catalog recorded, or one that started nothing)."""
    entry = catalog.entry_by_key(f"schedule/{workflow_id}")
    if entry is None or entry.data.get("outcome") != "started":
        return None
    found = entry.data.get("migration_id")
    return str(found) if found else None
