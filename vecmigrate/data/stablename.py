"""Stable names: the one name applications query the database by directly (a Qdrant or Milvus
alias, a PostgreSQL view), pointed at the target by the cut-over in one atomic step and back at
the source by a rollback, so applications that never call the router switch too.

A spec sets it as ``cutover.stable_name`` (source and target on one engine deployment). Before
the migration, applications must query that name: :func:`prepare` points it at the source (for
PostgreSQL, when the name is the table applications use today, it renames the table to the
source's ``table`` and creates the view under the old name, in one transaction); ``undo`` takes
it away again. ``plan`` shows what is needed (:func:`plan_steps`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import text

from vecmigrate.catalog.engines import engine_for
from vecmigrate.errors import PreconditionError, VecmigrateError
from vecmigrate.model.spec import MigrationSpec, PgvectorStoreRef
from vecmigrate.model.tasks import StableNameSwitch
from vecmigrate.stores.capabilities import CAPABILITIES

# Ledger kinds: a switch of the stable name by a migration, and a preparation (or its undo).
SWITCHED_KIND = "stable_name.switched"
PREPARED_KIND = "stable_name.prepared"


def _name(spec: MigrationSpec) -> str:
    name = spec.cutover.stable_name
    if name is None:
        raise PreconditionError("the spec sets no cutover.stable_name")
    return name


def switch(
    spec: MigrationSpec, side: Literal["source", "target"], *, create: bool = True
) -> StableNameSwitch:
    """Point the spec's stable name at its ``side`` version (idempotent; checked after).

    A migration that captures writes (:func:`vecmigrate.data.capture.two_way`) loses none at
    the switch: moving to the target it starts capturing the target's writes first (replayed
    onto the source through the bake, so a rollback after the cut-over keeps them), replays
    what was captured on the side the name leaves, and switches in one transaction that holds
    that side's writers back while it replays the rest (:func:`point_view` with ``drain``).
    """
    from vecmigrate.data import capture
    from vecmigrate.data.backfill import open_source, open_target
    from vecmigrate.stores.pgvector import PgvectorStore, point_view

    store = open_source(spec) if side == "source" else open_target(spec)
    if not capture.two_way(spec) or not isinstance(store, PgvectorStore):
        return store.point_name(_name(spec), create=create)
    if side == "target":
        capture.install_back(spec)
    # Most of what is pending goes before the lock, so writers wait only for the rest.
    capture.drain(spec, toward=side)
    store.prepare_view_inserts()
    return point_view(
        store.engine,
        _name(spec),
        store.table,
        create=create,
        drain=lambda: capture.drain(spec, toward=side),
    )


def _engine(ref: PgvectorStoreRef) -> Any:
    from vecmigrate.stores import database_access
    from vecmigrate.stores.pgvector import sqlalchemy_url

    return engine_for(sqlalchemy_url(ref.url), database_access(ref))


def _pg_kind(ref: PgvectorStoreRef, name: str) -> str | None:
    """The relation kind of ``name`` (``r`` table, ``v`` view...; None: no such relation)."""
    with _engine(ref).connect() as conn:
        found = conn.execute(
            text("SELECT relkind::text FROM pg_class WHERE oid = to_regclass(:n)"), {"n": name}
        ).scalar_one_or_none()
    return None if found is None else str(found)


def prepare(spec: MigrationSpec, *, undo: bool = False) -> StableNameSwitch:
    """Point the stable name at the source, so applications can move to it before the
    migration (for PostgreSQL, when the name is a table, rename it to ``source.store.table``
    and create the view under the name, in one transaction). With ``undo``: take the name away
    again (the table renamed back), only while it points at the source.

    Raises:
        PreconditionError: what is in the way, named.
    """
    from vecmigrate.data.backfill import open_source

    name = _name(spec)
    ref = spec.source.store
    if isinstance(ref, PgvectorStoreRef) and ref.table is not None:
        from vecmigrate.stores.pgvector import drop_view, rename_into_view

        engine = _engine(ref)
        if undo:
            dropped = drop_view(engine, name, ref.table)
            return StableNameSwitch(
                name=name, kind="view", before=ref.table if dropped else None, changed=dropped
            )
        if _pg_kind(ref, name) in ("r", "p"):
            return rename_into_view(engine, name, ref.table)
    if undo:
        source = open_source(spec)
        physical = str(getattr(source, "table", None) or getattr(source, "name", ""))
        dropped = source.drop_name(name)
        return StableNameSwitch(
            name=name,
            kind=CAPABILITIES[ref.kind].stable_names or "name",
            before=physical if dropped else None,
            changed=dropped,
        )
    return open_source(spec).point_name(name)


@dataclass(frozen=True)
class NameState:
    """What the engine holds under a spec's stable name now, and what it needs first."""

    name: str
    kind: str  # "alias" or "view"
    points_at: str | None  # the table or collection it points at (None: no such name yet)
    needs: str  # "" (ready), "prepare" (a table to rename), or a problem
    detail: str


def state(spec: MigrationSpec) -> NameState:
    """Read (write nothing) what the stable name is now and what it needs before the
    migration."""
    from vecmigrate.data.backfill import open_source

    name = _name(spec)
    ref = spec.source.store
    kind = CAPABILITIES[ref.kind].stable_names
    if isinstance(ref, PgvectorStoreRef) and _pg_kind(ref, name) in ("r", "p"):
        return NameState(
            name,
            kind,
            None,
            "prepare",
            f"{name} is a table applications use by its name: `vecmigrate stable-name prepare` "
            f"renames it to {ref.table or '(set source.store.table)'} and creates the view "
            f"{name} over it in one transaction (reversible with --undo)",
        )
    try:
        source = open_source(spec)
        points = source.name_points_at(name)
        physical = str(getattr(source, "table", None) or getattr(source, "name", ""))
    except VecmigrateError as exc:
        return NameState(name, kind, None, str(exc), str(exc))
    if points is None:
        return NameState(
            name,
            kind,
            None,
            "",
            f"no {kind} {name} yet: `vecmigrate stable-name prepare` creates it over the source "
            f"{physical} so applications move to it before the migration (the cut-over would "
            "create it too)",
        )
    return NameState(name, kind, points, "", f"the {kind} {name} points at {points}")


def plan_steps(spec: MigrationSpec) -> list[tuple[str, str]]:
    """What ``plan`` shows of the stable name: the preparation and the switch, and for
    engines without change capture, where writes must go during the window."""
    name = spec.cutover.stable_name
    if name is None:
        return []
    kind = CAPABILITIES[spec.source.store.kind].stable_names or "name"
    try:
        now = state(spec)
        prepared = now.detail
    except VecmigrateError as exc:
        prepared = str(exc)
    steps = [
        (
            "PREPARE",
            f"applications query the {kind} {name}, not the source's own "
            f"{'table' if kind == 'view' else 'collection'}: {prepared}",
        ),
        (
            "STABLE NAME",
            f"at the cut-over the {kind} {name} points at {spec.target.name} in one atomic "
            f"step (and back at {spec.source.name} on a rollback); each switch is in the ledger",
        ),
    ]
    if spec.source.store.kind in ("qdrant", "milvus"):
        steps.append(
            (
                "WRITES",
                f"{spec.source.store.kind} has no change capture: writes made directly to the "
                "engine during the migration are not captured and would be missing from the "
                "target; until it ends, applications must write through the router or the "
                f"gateway (/v1/{spec.tenant}/{spec.collection}: an endpoint that follows every "
                f"cut-over, so applications move to it once), and may read {name} directly",
            )
        )
    return steps
