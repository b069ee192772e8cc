"""Regions and tenants: how one migration spec fans out into one child migration per region and
tenant, and what the parent workflow knows of each child.

Pure models and functions (no I/O), shared by the regional workflow, the client and the CLI.

A regional migration runs the ordinary lifecycle once per (region, tenant): each child is a
``MigrationWorkflow`` whose spec names that region's stores, that tenant, and that region, and
which runs on that region's task queue, so only the region's own workers (``vecmigrate worker
--region R``, with the region's catalog) ever touch its data. The parent holds the children at
a global barrier before the cut-over and cuts them over in the spec's order.
"""

from __future__ import annotations

from pydantic import Field

from vecmigrate.model.base import Model as _Model
from vecmigrate.model.divergence import RegionDivergence
from vecmigrate.model.lifecycle import TERMINAL, Phase
from vecmigrate.model.spec import MigrationSpec, RegionPolicy, RegionSpec
from vecmigrate.model.status import OperatorAction


class ChildPlan(_Model):
    """One child migration: a tenant in a region, on the region's task queue."""

    region: str | None
    tenant: str
    workflow_id: str
    task_queue: str
    spec: MigrationSpec


class RegionUpdate(_Model):
    """What a child tells its parent whenever its phase or pause state changes."""

    workflow_id: str
    phase: Phase
    paused: bool = False
    reason: str = ""
    copied: int = 0
    total: int = 0
    cutovers: int = 0
    # The child is rolling back (or rolled back) because one of its gates failed.
    gate_failed: bool = False


class RegionState(_Model):
    """The parent's view of one child."""

    region: str | None
    tenant: str
    workflow_id: str
    task_queue: str
    started: bool = False
    phase: Phase = Phase.PLANNED
    paused: bool = False
    reason: str = ""
    copied: int = 0
    total: int = 0
    cutovers: int = 0
    # Set when this child's rollback came from a failed gate (not from an operator).
    failed: bool = False

    @property
    def ready(self) -> bool:
        """At the barrier: gates passed, waiting for the parent's go."""
        return self.phase == Phase.AWAITING_CUTOVER and self.cutovers == 0

    @property
    def ended(self) -> bool:
        return self.phase in TERMINAL

    @property
    def settled(self) -> bool:
        """Ready for the barrier, or out of the migration."""
        return self.ready or self.ended


class RegionalStatus(_Model):
    """What the regional workflow's ``status`` query returns."""

    migration_id: str
    collection: str
    strategy: str
    phase: Phase = Phase.PLANNED
    regions: list[RegionState] = Field(default_factory=list)
    blocked_reason: str = ""
    cutover_approved: bool = False
    cut_over: list[str] = Field(default_factory=list)
    operators: list[OperatorAction] = Field(default_factory=list)
    paused: bool = False
    error: str = ""
    # The regions' copies compared with the reference region's at the barrier (when the
    # policy sets region_policy.divergence), one entry per region and tenant.
    divergence: list[RegionDivergence] = Field(default_factory=list)
    # Once ended: how (and by whom, and why) it ended.
    outcome: str = ""


def region_queue(region: RegionSpec) -> str:
    """The data-plane task queue of a region."""
    return region.task_queue or f"vecmigrate-{region.name}"


def child_plans(
    spec: MigrationSpec,
    parent_id: str,
    tenants: dict[str | None, list[str]],
    default_queue: str,
) -> list[ChildPlan]:
    """The children of a regional or multi-tenant migration, in rollout order.

    ``tenants`` maps each region (None when the spec names no regions) to the tenants migrated
    there. Each child's spec is the parent's with the region's stores, one tenant, that tenant's
    limits, a manual cut-over (the parent's barrier gives the go) and gate failures rolling the
    child back (the parent's policy decides what the other regions do).
    """
    regions: list[RegionSpec | None] = list(spec.regions) or [None]
    plans = []
    for region in regions:
        name = region.name if region is not None else None
        for tenant in tenants.get(name, []):
            limits = spec.tenant_limits.get(tenant)
            source, target = spec.source, spec.target
            if region is not None:
                if region.source_store is not None:
                    source = source.model_copy(update={"store": region.source_store})
                if region.target_store is not None:
                    target = target.model_copy(update={"store": region.target_store})
                if region.target_index is not None:
                    target = target.model_copy(update={"index": region.target_index})
            wid = f"{parent_id}.{name}.{tenant}" if name else f"{parent_id}.{tenant}"
            update: dict[str, object] = {
                "id": wid,
                "tenant": tenant,
                "source": source,
                "target": target,
                "regions": (),
                "region_policy": RegionPolicy(),
                "tenants": None,
                "tenant_limits": {},
                "region": name,
                "cutover": spec.cutover.model_copy(update={"mode": "manual"}),
                "gates": spec.gates.model_copy(update={"on_failure": "rollback"}),
                "online": spec.online.model_copy(update={"on_breach": "rollback"}),
            }
            if limits is not None:
                if limits.max_parallel_shards is not None:
                    update["max_parallel_shards"] = limits.max_parallel_shards
                if limits.max_vectors_per_second is not None:
                    update["max_vectors_per_second"] = limits.max_vectors_per_second
            plans.append(
                ChildPlan(
                    region=name,
                    tenant=tenant,
                    workflow_id=wid,
                    task_queue=region_queue(region) if region is not None else default_queue,
                    spec=spec.model_copy(update=update),
                )
            )
    return plans
