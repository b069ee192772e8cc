"""How operators find a migration: the search attributes and memo of its workflow.

Search attributes are indexed by Temporal, so the Web UI, ``temporal workflow list --query`` and
``vecmigrate list`` filter on them (``VecmigratePhase='BACKFILLING' AND
VecmigrateCollection='docs'``). Each must be registered in the namespace before a migration can
set it: ``vecmigrate dev`` registers them on its dev server, the deployment's setup job on a
cluster, and ``vecmigrate doctor`` reports any that are missing. The memo carries what a person
reads on the workflow's page but never filters on.

Pure: the workflow and the client build Temporal's typed keys from these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from vecmigrate.model.spec import MigrationSpec, VersionSpec
from vecmigrate.model.status import MigrationStatus


@dataclass(frozen=True)
class SearchAttribute:
    """One search attribute: its name, Temporal's indexed type, and what it holds."""

    name: str
    type: Literal["Keyword"]
    description: str


PHASE = SearchAttribute("VecmigratePhase", "Keyword", "the lifecycle phase the migration is in")
STRATEGY = SearchAttribute(
    "VecmigrateStrategy", "Keyword", "blue_green, online, offline or shadow_only"
)
TENANT = SearchAttribute("VecmigrateTenant", "Keyword", "the tenant whose collection migrates")
COLLECTION = SearchAttribute("VecmigrateCollection", "Keyword", "the collection that migrates")
SOURCE_VERSION = SearchAttribute(
    "VecmigrateSourceVersion", "Keyword", "the version reads come from before the cut-over"
)
TARGET_VERSION = SearchAttribute(
    "VecmigrateTargetVersion", "Keyword", "the version the migration builds"
)
REGION = SearchAttribute(
    "VecmigrateRegion", "Keyword", "the region a regional child migrates (unset otherwise)"
)

ALL: tuple[SearchAttribute, ...] = (
    PHASE,
    STRATEGY,
    TENANT,
    COLLECTION,
    SOURCE_VERSION,
    TARGET_VERSION,
    REGION,
)


def search_values(spec: MigrationSpec, phase: str) -> dict[str, str]:
    """The search attributes of a migration of ``spec`` in ``phase``, by name."""
    values = {
        PHASE.name: phase,
        STRATEGY.name: spec.strategy,
        TENANT.name: spec.tenant,
        COLLECTION.name: spec.collection,
        SOURCE_VERSION.name: spec.source.name,
        TARGET_VERSION.name: spec.target.name,
    }
    if spec.region is not None:
        values[REGION.name] = spec.region
    return values


def _side(version: VersionSpec) -> dict[str, Any]:
    emb = version.embedding
    return {
        "version": version.name,
        "store": version.store.kind,
        "index": version.index.kind,
        "model": f"{emb.model_id}@{emb.model_version}",
        "dimension": emb.dimension,
        "metric": str(emb.metric),
    }


def memo(spec: MigrationSpec, requested_by: str) -> dict[str, Any]:
    """What the workflow's page shows beside its search attributes (no secrets: store kinds,
    never their URLs)."""
    return {
        "tenant": spec.tenant,
        "collection": spec.collection,
        "strategy": spec.strategy,
        "source": _side(spec.source),
        "target": _side(spec.target),
        "shards": spec.shards.count,
        "regions": [r.name for r in spec.regions],
        "requested_by": requested_by,
    }


def current_details(st: MigrationStatus) -> str:
    """The workflow's current details (Markdown in the Web UI): phase and what it does,
    progress, the last gate and why the migration waits, so the page reads without payloads."""
    lines = [f"**{st.phase}**" + (f": {st.doing}" if st.doing else "")]
    if st.outcome:
        lines.append(st.outcome)
    if st.shards:
        copied = sum(p.copied for p in st.shards)
        total = sum(p.total for p in st.shards)
        states: dict[str, int] = {}
        for p in st.shards:
            states[p.state] = states.get(p.state, 0) + 1
        shards = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        of = f" of {total:,}" if total else ""
        lines.append(f"progress: {copied:,}{of} vectors copied; shards: {shards}")
    if st.catchup_lag is not None:
        lines.append(f"change-log lag: {st.catchup_lag:,} entries")
    if st.gates is not None:
        failed = st.gates.failures()
        lines.append(
            "last gate: passed" if not failed else "last gate: failed: " + "; ".join(failed[:3])
        )
    if st.shadow:
        last = st.shadow[-1]
        overlap = f", overlap {last.overlap:.3f}" if last.overlap is not None else ""
        verdict = "passed" if last.passed else "failed"
        lines.append(
            f"last {last.step or 'shadow'} gate: {verdict} ({last.samples} pairs{overlap})"
        )
    if st.paused:
        lines.append(f"paused: {st.pause_reason}")
    elif st.blocked_reason:
        lines.append(f"waiting: {st.blocked_reason}")
    if st.error:
        lines.append(f"last error: {st.error}")
    return "\n\n".join(lines)
