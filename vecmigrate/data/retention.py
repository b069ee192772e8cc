"""Retention and pruning: what a retired or abandoned version still costs, whether anything still
needs it, and removing it (records, the engine's indexes, index artifacts) with a ledger entry.

A version is pruned only when it is retired or abandoned and nothing needs it: not routing (it
serves reads, takes writes, or is the candidate of shadow reads or a ramp), not a rollback window
(a standby source during a bake), not a running migration (as its source or target), not a
schedule (one that migrates from it as written), and not its retention period (unless the
caller names it and says so). Otherwise the answer is the reason, and nothing is touched.

The change log is compacted (entries a later write of the same id supersedes) and truncated
(entries older than everything a reader still needs: the serving and candidate indexes' log
positions, a retained version's stop position, any running migration); index artifacts no index
version references are collected, and so are the files a migration's copy kept of what it
counted for its streamed shard checks once the migration has ended (see :func:`drop_streamed`).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vecmigrate.catalog.catalog import Catalog, VersionRecord
from vecmigrate.catalog.changelog import ChangeLog
from vecmigrate.catalog.journal import Journal
from vecmigrate.catalog.retention import RetentionLog
from vecmigrate.catalog.schedules import ScheduleStore
from vecmigrate.data.footprint import drop_version, footprint, record_storage
from vecmigrate.errors import NotFoundError, VecmigrateError
from vecmigrate.indexes.build import artifact_dir
from vecmigrate.indexes.sizes import tree_bytes
from vecmigrate.model.lifecycle import TERMINAL, Phase
from vecmigrate.model.spec import MigrationSpec, store_ref
from vecmigrate.stores.base import Scope

PRUNABLE = ("retained", "abandoned")
PRUNED_KIND = "version.pruned"


@dataclass
class Verdict:
    """What pruning a version did, or would do, or why it did not."""

    tenant: str
    collection: str
    version: str
    state: str
    action: str  # pruned, would prune, kept
    reason: str = ""
    freed_bytes: int = 0
    keep_until: str = ""


@dataclass
class GcReport:
    """Everything one ``gc`` pass did (or would do, in a dry run)."""

    dry_run: bool
    verdicts: list[Verdict] = field(default_factory=list)
    log_entries_removed: int = 0
    artifacts_removed: int = 0
    artifact_bytes_removed: int = 0
    # Directories of what ended migrations' copies counted (see :func:`drop_streamed`).
    streamed_removed: int = 0
    streamed_bytes_removed: int = 0

    @property
    def refused(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.action == "kept"]


def why_kept(
    catalog: Catalog,
    tenant: str,
    collection: str,
    version: str,
    now: datetime,
    *,
    ignore_retention: bool = False,
) -> str | None:
    """Why ``version`` may not be pruned now (None: nothing needs it).

    Raises:
        NotFoundError: no such version.
    """
    where = f"{tenant}/{collection}@{version}"
    found = catalog.find_version(tenant, collection, version)
    if found is None:
        raise NotFoundError(f"{where} is not registered")
    record = RetentionLog(catalog).get(tenant, collection, version)
    if found.state == "pruned":
        return f"already pruned ({record.pruned_at or 'earlier'}, by {record.pruned_by})"
    routing = catalog.get_routing(tenant, collection)
    if routing is not None:
        if routing.read_version == version:
            return "routing reads it: it serves the collection"
        if version in routing.write_versions:
            return "routing writes to it (dual-write keeps it current)"
        if routing.candidate_version == version:
            return "routing names it as the candidate of shadow reads or a ramp"
    if found.state == "standby":
        return "it is the rollback target of a cut-over still baking (standby)"
    for m in catalog.migrations_of(tenant, collection):
        if m["phase"] in TERMINAL:
            continue
        if version in (m["source_version"], m["target_version"]):
            side = "source" if version == m["source_version"] else "target"
            return f"migration {m['id']} ({m['phase']}) uses it as its {side}"
    for held in ScheduleStore(catalog).active(tenant, collection):
        policy = held.spec.schedule
        if (
            policy is not None
            and policy.migrate == "as_written"
            and held.spec.source.name == (version)
        ):
            return f"schedule {held.schedule_id} migrates from it as written"
    if found.state not in PRUNABLE:
        return f"it is {found.state}: only retained or abandoned versions are pruned"
    if not ignore_retention and record.keep_until is not None and _utc(record.keep_until) > now:
        return (
            f"its retention keeps it until {_utc(record.keep_until).isoformat()} "
            f"({record.left_as} by {record.left_by})"
        )
    return None


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def prune_version(
    catalog: Catalog,
    tenant: str,
    collection: str,
    version: str,
    actor: str,
    *,
    reason: str,
    ignore_retention: bool = False,
    dry_run: bool = False,
) -> Verdict:
    """Remove ``version`` if nothing needs it (see :func:`why_kept`); the verdict says what was
    done or why not. Idempotent: a pruned version is reported as such."""
    now = datetime.now(UTC)
    found = catalog.find_version(tenant, collection, version)
    if found is None:
        raise NotFoundError(f"{tenant}/{collection}@{version} is not registered")
    retention = RetentionLog(catalog)
    record = retention.get(tenant, collection, version)
    keep_until = _utc(record.keep_until).isoformat() if record.keep_until else ""
    kept = why_kept(catalog, tenant, collection, version, now, ignore_retention=ignore_retention)
    if kept is not None:
        return Verdict(tenant, collection, version, found.state, "kept", kept, 0, keep_until)
    ref = store_ref(found.store)
    foot = footprint(ref, Scope(tenant, collection, version), found.embedding.dimension)
    directory = artifact_dir(ref, tenant, collection, version)
    index = foot.native_index + tree_bytes(directory)
    freed = foot.records + index
    if dry_run:
        return Verdict(tenant, collection, version, found.state, "would prune", reason, freed)
    drop_version(ref, Scope(tenant, collection, version))
    if directory.is_dir():
        shutil.rmtree(directory)
    catalog.set_version_state(tenant, collection, version, "pruned")
    retention.pruned(tenant, collection, version, actor, freed)
    left_by = record.left_by or found.migration_id
    catalog.append(
        tenant=tenant,
        collection=collection,
        kind=PRUNED_KIND,
        actor=actor,
        migration_id=left_by,
        data={
            "version": version,
            "was": found.state,
            "reason": reason,
            "freed_bytes": freed,
            "records": foot.records,
            "index": index,
            "store": found.store.get("kind"),
            "left_at": record.left_at.isoformat() if record.left_at else None,
        },
        event_key=f"prune/{tenant}/{collection}/{version}",
    )
    # What the log kept for the version's promotion back goes with it.
    settle_log(catalog, tenant, collection)
    if left_by:
        _storage_after_prune(catalog, left_by, actor)
    return Verdict(tenant, collection, version, found.state, "pruned", reason, freed, keep_until)


def _storage_after_prune(catalog: Catalog, migration_id: str, actor: str) -> None:
    """The storage of the migration that left the pruned version, now that it is gone."""
    try:
        spec = MigrationSpec.model_validate(catalog.get_migration(migration_id)["spec"])
    except (VecmigrateError, ValueError):
        return
    record_storage(catalog, spec, "pruned", actor)


def log_floor(catalog: Catalog, tenant: str, collection: str) -> int:
    """The change-log position up to which nothing needs the entries: the lowest of the serving
    and candidate indexes' positions and the retained versions' stop and last index positions
    (a promotion back replays from the one and overlays from the other); 0 while a
    migration of the collection is at work (its catch-up reads from its own watermark)."""
    if _at_work(catalog, tenant, collection):
        return 0
    log = ChangeLog(catalog)
    routing = catalog.get_routing(tenant, collection)
    floors = []
    if routing is not None:
        for index_id in (routing.read_index, routing.candidate_index):
            if index_id:
                floors.append(log.index_position(index_id))
    for record in RetentionLog(catalog).of_collection(tenant, collection):
        state = catalog.find_version(tenant, collection, record.version)
        if state is not None and state.state != "pruned" and record.written_until is not None:
            floors.append(record.written_until)
            # A promotion back serves the version's last index again, overlaid from its
            # position: the log after it must still be there.
            indexes = catalog.indexes_of(tenant, collection, record.version)
            if indexes:
                floors.append(log.index_position(indexes[-1].id))
    return max(0, min(floors)) if floors else 0


def settle_log(catalog: Catalog, tenant: str, collection: str) -> int:
    """Compact and truncate a collection's change log up to what nothing needs; returns how
    many entries went."""
    floor = log_floor(catalog, tenant, collection)
    if floor <= 0:
        return 0
    log = ChangeLog(catalog)
    return log.compact(tenant, collection, floor) + log.truncate(tenant, collection, floor)


def _at_work(catalog: Catalog, tenant: str, collection: str) -> bool:
    """Whether a migration of the collection may still read the log or build: any not ended
    and not finalizing (a finalizing one neither catches up nor builds any more)."""
    return any(
        m["phase"] not in TERMINAL and m["phase"] != Phase.FINALIZING
        for m in catalog.migrations_of(tenant, collection)
    )


def collect_artifacts(
    catalog: Catalog, tenant: str, collection: str, *, dry_run: bool = False
) -> tuple[int, int]:
    """Remove the index artifact files of a collection's versions that no registered index
    and no running migration's journal names; returns (files, bytes)."""
    if _at_work(catalog, tenant, collection):
        return 0, 0  # its builds may not be registered yet
    journal = Journal(catalog)
    files, freed = 0, 0
    for version in catalog.versions_of(tenant, collection):
        if version.state in ("pruned", "building"):
            continue
        directory = artifact_dir(store_ref(version.store), tenant, collection, version.version)
        if not directory.is_dir():
            continue
        keep = _referenced(catalog, journal, version, directory)
        for path in directory.iterdir():
            if not path.is_file() or path.name in keep:
                continue
            files += 1
            freed += path.stat().st_size
            if not dry_run:
                path.unlink(missing_ok=True)
    return files, freed


def _referenced(
    catalog: Catalog, journal: Journal, version: VersionRecord, directory: Path
) -> set[str]:
    """File names in ``directory`` that a registered index or a journal artifact names."""
    artifacts: list[dict[str, Any]] = []
    for index in catalog.indexes_of(version.tenant, version.collection, version.version):
        artifacts.extend(index.artifacts)
    for m in catalog.migrations_of(version.tenant, version.collection):
        if m["target_version"] == version.version:
            artifacts.extend(journal.outcomes(m["id"], "artifact").values())
    names: set[str] = set()
    for artifact in artifacts:
        manifest = Path(str(artifact.get("uri", "")))
        if manifest.parent != directory:
            continue
        names.add(manifest.name)
        try:
            names.add(json.loads(manifest.read_text())["file"])
        except (OSError, ValueError, KeyError):
            continue
    return names


# -- what a copy counted for the streamed shard checks ------------------------------------------


def _safe(name: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80]
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


# The directory beside a collection's version directories that holds what the copies counted:
# a version name begins with a letter or digit, so no version's artifacts can be this one (and
# pruning a version can never remove another migration's files).
STREAMED = "_streamed"


def streamed_dir(spec: MigrationSpec) -> Path:
    """Where the copy of ``spec``'s migration keeps, per shard, what it counted record by
    record for the streamed shard checks (``vecmigrate.validation.stream.Counted``): its own
    directory in the target's artifact directory, named after the migration (no other
    migration's files are under it)."""
    where = artifact_dir(spec.target.store, spec.tenant, spec.collection, STREAMED)
    return where / _safe(spec.migration_id)


def drop_streamed(spec: MigrationSpec, *, dry_run: bool = False) -> int:
    """Remove what the copy of ``spec``'s migration counted (its :func:`streamed_dir`): once
    the migration has ended (completed, rolled back, aborted) nothing reads it again. Returns
    the bytes it held; idempotent (nothing there: 0)."""
    directory = streamed_dir(spec)
    freed = tree_bytes(directory)
    if not dry_run:
        shutil.rmtree(directory, ignore_errors=True)
    return freed


def drop_streamed_of(catalog: Catalog, migration_id: str) -> int:
    """:func:`drop_streamed` for the migration the catalog knows as ``migration_id`` (0 when its
    spec cannot be read: nothing is removed)."""
    try:
        spec = MigrationSpec.model_validate(catalog.get_migration(migration_id)["spec"])
    except (VecmigrateError, ValueError):
        return 0
    return drop_streamed(spec)


def collect_streamed(
    catalog: Catalog,
    tenant: str,
    collection: str,
    *,
    ended: frozenset[str] = frozenset(),
    dry_run: bool = False,
) -> tuple[int, int]:
    """Remove what the copies of a collection's ended migrations counted: those the catalog
    records in a terminal phase, and those named in ``ended`` (migrations whose execution
    closed without reaching one: terminated or failed, as Temporal tells). A running
    migration's files are kept. Returns (directories, bytes)."""
    dirs, freed = 0, 0
    for m in catalog.migrations_of(tenant, collection):
        if m["phase"] not in TERMINAL and m["id"] not in ended:
            continue
        try:
            spec = MigrationSpec.model_validate(m["spec"])
        except ValueError:
            continue
        if not streamed_dir(spec).is_dir():
            continue
        dirs += 1
        freed += drop_streamed(spec, dry_run=dry_run)
    return dirs, freed


def gc(
    catalog: Catalog,
    actor: str,
    *,
    tenant: str | None = None,
    collection: str | None = None,
    version: str | None = None,
    dry_run: bool = False,
    ignore_retention: bool = False,
    ended: frozenset[str] = frozenset(),
) -> GcReport:
    """Prune every retired or abandoned version nothing needs (or the one named), then tidy the
    change logs and artifacts of the collections looked at, and remove what the copies of their
    ended migrations counted (``ended``: migrations whose execution closed without reaching a
    terminal phase, see :func:`collect_streamed`)."""
    report = GcReport(dry_run=dry_run)
    scopes = [
        (t, c)
        for t, c in catalog.list_collections()
        if (tenant is None or t == tenant) and (collection is None or c == collection)
    ]
    for t, c in scopes:
        names = (
            [version]
            if version is not None
            else [v.version for v in catalog.versions_of(t, c) if v.state in PRUNABLE]
        )
        for name in names:
            report.verdicts.append(
                prune_version(
                    catalog,
                    t,
                    c,
                    name,
                    actor,
                    reason="gc" + (" (retention ignored)" if ignore_retention else ""),
                    ignore_retention=ignore_retention,
                    dry_run=dry_run,
                )
            )
        if not dry_run:
            report.log_entries_removed += settle_log(catalog, t, c)
        files, freed = collect_artifacts(catalog, t, c, dry_run=dry_run)
        report.artifacts_removed += files
        report.artifact_bytes_removed += freed
        dirs, freed = collect_streamed(catalog, t, c, ended=ended, dry_run=dry_run)
        report.streamed_removed += dirs
        report.streamed_bytes_removed += freed
    return report
