"""``vecmigrate doctor``: what a deployment needs, checked one by one, each failure with its fix.

Temporal reachable, the namespace there, the search attributes registered with their types, the
catalog reachable with every table and column this release uses (and not SQLite on a network
file system), the stores of the versions in use reachable, and workers of this release polling
the task queues. Nothing is written: the catalog is inspected, not upgraded.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import inspect, select
from sqlalchemy.engine import make_url
from temporalio.api.enums.v1 import IndexedValueType, TaskQueueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from vecmigrate.catalog.catalog import metadata, migrations, vector_versions
from vecmigrate.catalog.engines import engine_for
from vecmigrate.model.lifecycle import TERMINAL
from vecmigrate.model.search import ALL as SEARCH_ATTRIBUTES
from vecmigrate.model.spec import store_ref
from vecmigrate.stores import Scope, open_store, pgcapture
from vecmigrate.stores.pgvector import PgvectorStore
from vecmigrate.telemetry.setup import version
from vecmigrate.workers.connection import connect

# File systems that reach a disk over the network: SQLite's locking and WAL are unsafe there.
NETWORK_FS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "9p", "afs"}
)
# Versions whose stores a deployment must reach now.
ACTIVE_STATES = ("serving", "building", "ready", "retained")
TIMEOUT = 10.0


@dataclass
class Finding:
    """One check: whether it holds, what was found, and what to do if not."""

    check: str
    ok: bool
    detail: str
    fix: str = ""
    severity: Literal["error", "warning"] = "error"


def _mount_type(path: Path, mounts: str = "/proc/mounts") -> str | None:
    """The file system type of the mount ``path`` lives on (None where /proc is missing)."""
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:
        return None
    best, kind = "", None
    target = str(path.resolve())
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind


def sqlite_on_network(url: str, mounts: str = "/proc/mounts") -> str | None:
    """The network file system type a SQLite URL's file lives on, or None."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:":
        return None
    kind = _mount_type(Path(parsed.database).parent, mounts)
    if kind is None:
        return None
    base = kind.split(".")[-1] if kind.startswith("fuse.") else kind
    return kind if base in NETWORK_FS or kind.startswith("fuse.s3") else None


def _safe_url(url: str) -> str:
    """A URL to print: the password hidden."""
    return make_url(url).render_as_string(hide_password=True)


async def _temporal(address: str, namespace: str) -> tuple[Client | None, Finding]:
    try:
        client = await asyncio.wait_for(connect(address, namespace), TIMEOUT)
    except Exception as exc:
        return None, Finding(
            "temporal reachable",
            False,
            f"cannot reach Temporal at {address}: {exc}",
            "start it (`vecmigrate dev` locally), or point TEMPORAL_ADDRESS / --address at the "
            "frontend (host:7233)",
        )
    return client, Finding("temporal reachable", True, f"frontend at {address}")


async def _namespace(client: Client, namespace: str) -> Finding:
    try:
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=namespace), timeout=_td()
        )
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return Finding(
                "namespace",
                False,
                f"namespace {namespace!r} does not exist",
                f"temporal operator namespace create --namespace {namespace}",
            )
        raise
    return Finding("namespace", True, f"{namespace!r} exists")


async def _search_attributes(client: Client, namespace: str) -> Finding:
    response = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace), timeout=_td()
    )
    found = dict(response.custom_attributes)
    wrong: list[str] = []
    fixes: list[str] = []
    for attribute in SEARCH_ATTRIBUTES:
        want = IndexedValueType.Value(f"INDEXED_VALUE_TYPE_{attribute.type.upper()}")
        have = found.get(attribute.name)
        create = (
            f"temporal operator search-attribute create --namespace {namespace} "
            f"--name {attribute.name} --type {attribute.type}"
        )
        if have is None:
            wrong.append(f"{attribute.name} missing")
            fixes.append(create)
        elif have != want:
            shown = IndexedValueType.Name(have).removeprefix("INDEXED_VALUE_TYPE_").title()
            wrong.append(f"{attribute.name} is {shown}, not {attribute.type}")
            fixes.append(
                f"temporal operator search-attribute remove --namespace {namespace} "
                f"--name {attribute.name} --yes && {create}"
            )
    if wrong:
        return Finding(
            "search attributes",
            False,
            "; ".join(wrong) + " (migrations cannot start until they are registered)",
            "\n".join(fixes),
        )
    return Finding(
        "search attributes", True, f"{len(SEARCH_ATTRIBUTES)} registered in {namespace!r}"
    )


_IDENTITY_VERSION = re.compile(r"vecmigrate/(\S+)")


async def _workers(client: Client, queue: str) -> Finding:
    identities: set[str] = set()
    for kind in (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY):
        response = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind
            ),
            timeout=_td(),
        )
        identities.update(p.identity for p in response.pollers)
    check = f"workers on {queue}"
    if not identities:
        return Finding(
            check,
            False,
            f"no worker polls task queue {queue!r}: migrations on it wait",
            f"start one: `vecmigrate worker --task-queue {queue}` (or scale the worker "
            "deployment up)",
        )
    versions = sorted(
        {m.group(1) if (m := _IDENTITY_VERSION.search(i)) else "unknown" for i in identities}
    )
    mine = version()
    if versions != [mine]:
        return Finding(
            check,
            False,
            f"{len(identities)} worker(s) running vecmigrate {', '.join(versions)}; this is {mine}",
            "finish the rollout so every worker runs one release (a workflow replayed by a "
            "worker of another release may fail its task)",
            severity="warning",
        )
    return Finding(check, True, f"{len(identities)} worker(s), all vecmigrate {mine}")


def _catalog(url: str) -> tuple[Finding, list[Finding]]:
    """The catalog's own finding, and one per store of a version in use."""
    shown = _safe_url(url)
    parsed = make_url(url)
    fix_url = "set VECMIGRATE_CATALOG_URL (or --catalog) to the catalog's SQLAlchemy URL"
    file = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if file not in (None, "", ":memory:") and not Path(str(file)).exists():
        return Finding("catalog", False, f"{shown} does not exist", fix_url), []
    try:
        engine = engine_for(url)
        with engine.connect() as conn:
            present = inspect(conn)
            tables = set(present.get_table_names())
            missing = [t.name for t in metadata.sorted_tables if t.name not in tables]
            columns = [
                f"{t.name}.{c.name}"
                for t in metadata.sorted_tables
                if t.name in tables
                for c in t.columns
                if c.name not in {col["name"] for col in present.get_columns(t.name)}
            ]
            rows = []
            phases: dict[str, str] = {}
            if migrations.name in tables and not columns:
                phases = {
                    str(r[0]): str(r[1])
                    for r in conn.execute(select(migrations.c.id, migrations.c.phase))
                }
            if vector_versions.name in tables and not columns:
                rows = list(
                    conn.execute(
                        select(vector_versions).where(vector_versions.c.state.in_(ACTIVE_STATES))
                    ).mappings()
                )
    except Exception as exc:
        return Finding("catalog", False, f"cannot read {shown}: {exc}", fix_url), []
    if missing or columns:
        return (
            Finding(
                "catalog",
                False,
                f"{shown} lacks "
                + ", ".join([*(f"table {t}" for t in missing), *(f"column {c}" for c in columns)]),
                "start a worker of this release against it once (the catalog creates and "
                "upgrades its tables when opened), then run doctor again",
            ),
            [],
        )
    findings = [Finding("catalog", True, f"{shown}: {len(metadata.tables)} tables, schema current")]
    network = sqlite_on_network(url)
    if network is not None:
        findings.append(
            Finding(
                "catalog storage",
                False,
                f"the SQLite catalog lives on a {network} file system: SQLite's locks and WAL are "
                "not safe on network storage (lost writes, a corrupt ledger)",
                "use PostgreSQL for the catalog in a deployment (VECMIGRATE_CATALOG_URL="
                "postgresql+psycopg://...)",
            )
        )
    seen: set[str] = set()
    stores = [f for row in rows for f in _store(row, phases, seen)]
    return findings[0], [*findings[1:], *stores]


def capture_findings(store: PgvectorStore, phases: dict[str, str]) -> list[Finding]:
    """One finding per change capture in ``store``'s database: fine while its migration runs;
    a warning when the migration ended or the catalog does not know it, since the change table
    grows with every write to the table it captures until someone drops it."""
    found = []
    for cap in pgcapture.captures(store.engine):
        phase = phases.get(cap.migration_id)
        where = (
            f"{cap.table} on {cap.source}: {cap.pending:,} changes not replayed, "
            f"{cap.bytes / 1e6:,.1f} MB, made {cap.age_seconds / 3600:,.1f} h ago"
        )
        stale = phase is None or phase in TERMINAL
        found.append(
            Finding(
                f"change capture {cap.table}",
                not stale,
                f"{where}, for migration {cap.migration_id} ("
                + ("unknown to this catalog" if phase is None else phase)
                + ")",
                f"nothing will replay it: DROP FUNCTION {cap.table}_fn() CASCADE; DROP TABLE "
                f"{cap.table}"
                if stale
                else "",
                severity="warning",
            )
        )
    return found


def _store(row: Any, phases: dict[str, str], seen: set[str]) -> list[Finding]:
    """The finding of one version's store (and of the change captures in its database, once
    per database)."""
    store = _open_store(row)
    if not isinstance(store, PgvectorStore):
        return [store]
    where = f"{row['tenant']}/{row['collection']}@{row['version']}"
    found = [Finding(f"store of {where}", True, f"{store.kind} store open ({row['state']})")]
    database = store.engine.url.render_as_string(hide_password=True)
    if database not in seen:
        seen.add(database)
        try:
            found += capture_findings(store, phases)
        except Exception as exc:
            found.append(
                Finding(
                    f"change captures in {database}",
                    False,
                    f"cannot list them: {exc}",
                    "grant the role read access to pg_class, or check the server",
                    severity="warning",
                )
            )
    return found


def _open_store(row: Any) -> Finding | PgvectorStore:
    where = f"{row['tenant']}/{row['collection']}@{row['version']}"
    check = f"store of {where}"
    try:
        ref = store_ref(row["store"])
        store = open_store(ref, Scope(row["tenant"], row["collection"], row["version"]))
    except Exception as exc:
        return Finding(
            check,
            False,
            f"cannot open its {row['store'].get('kind', '?')} store: {exc}",
            "check the store's address and credentials, and that this machine reaches it",
        )
    url = getattr(ref, "url", None)
    network = sqlite_on_network(url) if isinstance(url, str) else None
    if network is not None:
        return Finding(
            check,
            False,
            f"a built-in (SQLite) store on a {network} file system",
            "keep built-in stores on local disk, or migrate the collection to pgvector, Qdrant "
            "or Milvus for a deployment",
        )
    if isinstance(store, PgvectorStore):
        return store
    return Finding(check, True, f"{store.kind} store open ({row['state']})")


def _td() -> Any:
    from datetime import timedelta

    return timedelta(seconds=TIMEOUT)


async def diagnose(
    address: str, namespace: str, catalog_url: str, task_queues: list[str]
) -> list[Finding]:
    """Every check, in order; later Temporal checks are skipped when Temporal is unreachable."""
    findings: list[Finding] = []
    client, reached = await _temporal(address, namespace)
    findings.append(reached)
    if client is not None:
        ns = await _namespace(client, namespace)
        findings.append(ns)
        if ns.ok:
            findings.append(await _search_attributes(client, namespace))
            for queue in task_queues:
                findings.append(await _workers(client, queue))
    catalog, stores = await asyncio.to_thread(_catalog, catalog_url)
    findings += [catalog, *stores]
    return findings


def as_json(findings: list[Finding]) -> list[dict[str, Any]]:
    """The findings as JSON-ready dicts."""
    return [asdict(f) for f in findings]
