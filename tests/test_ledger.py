"""The ledger is tamper-evident: edits, removals and reorderings made in SQL are caught."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import pytest
from sqlalchemy import text
from temporalio.client import Client

from tests.conftest import Sandbox, running_worker, vecmigrate
from vecmigrate.catalog.catalog import Catalog
from vecmigrate.control.client import MigrationClient

COLUMNS = (
    "migration_id",
    "tenant",
    "collection",
    "at",
    "actor",
    "kind",
    "event_key",
    "data",
    "prev_hash",
    "hash",
)


def unlock(catalog: Catalog) -> None:
    """What an intruder with database access would do first: drop the append-only triggers."""
    drops = {
        "sqlite": ["DROP TRIGGER ledger_no_update", "DROP TRIGGER ledger_no_delete"],
        "postgresql": ["DROP TRIGGER ledger_append_only ON ledger"],
    }[catalog.engine.dialect.name]
    with catalog.engine.begin() as conn:
        for stmt in drops:
            conn.execute(text(stmt))


def row(catalog: Catalog, seq: int) -> dict[str, Any]:
    with catalog.engine.connect() as conn:
        return dict(
            conn.execute(text("SELECT * FROM ledger WHERE seq = :s"), {"s": seq}).mappings().one()
        )


def write(catalog: Catalog, seq: int, values: dict[str, Any]) -> None:
    sets = ", ".join(f"{c} = :{c}" for c in COLUMNS)
    with catalog.engine.begin() as conn:
        conn.execute(text(f"UPDATE ledger SET {sets} WHERE seq = :seq"), {**values, "seq": seq})


@pytest.fixture
def ledger(sql_url: str) -> Catalog:
    catalog = Catalog(sql_url)
    for i in range(6):
        catalog.append(
            tenant="t",
            collection="c",
            kind="phase",
            actor=f"op{i}",
            migration_id="m",
            data={"to": f"P{i}"},
            event_key=f"m/{i}",
        )
    assert catalog.verify_ledger() == []
    unlock(catalog)
    return catalog


def test_edit_is_caught(ledger: Catalog) -> None:
    with ledger.engine.begin() as conn:
        conn.execute(text("UPDATE ledger SET actor = 'mallory' WHERE seq = 3"))
    assert ledger.verify_ledger() == ["entry 3: content does not match its hash (edited)"]


def test_removal_is_caught(ledger: Catalog) -> None:
    with ledger.engine.begin() as conn:
        conn.execute(text("DELETE FROM ledger WHERE seq = 2"))
    problems = ledger.verify_ledger()
    assert problems == [
        "entry 3: does not follow the entry before it (an entry was removed, inserted or moved)"
    ]


def test_reordering_is_caught(ledger: Catalog) -> None:
    a, b = row(ledger, 2), row(ledger, 4)
    placeholder = {**a, "event_key": "tmp", "prev_hash": "tmp-p", "hash": "tmp-h"}
    write(ledger, 2, placeholder)
    write(ledger, 4, a)
    write(ledger, 2, b)
    problems = ledger.verify_ledger()
    assert any(p.startswith("entry 2: does not follow") for p in problems)
    assert any(p.startswith("entry 4: does not follow") for p in problems)


def test_cut_or_rewritten_tail_is_caught_only_with_an_anchor(ledger: Catalog) -> None:
    last = ledger.entries()[-1]
    with ledger.engine.begin() as conn:
        conn.execute(text("DELETE FROM ledger WHERE seq = :s"), {"s": last.seq})
    assert ledger.verify_ledger() == []  # a bare chain cannot see its own end cut off
    problems = ledger.verify_ledger(anchor=(last.seq, last.hash))
    assert problems == [
        f"entry {last.seq}, the newest the workflow recorded ({last.hash[:12]}), is missing or "
        "altered: the ledger's tail was cut or rewritten"
    ]


async def test_log_verify_uses_the_workflow_anchor(client: Client, sandbox: Sandbox) -> None:
    sandbox.seed()
    spec = sandbox.spec()
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        mid = await mc.start(spec, operator="auditor")
        final = await mc.result(mid)
    assert final.ledger_entries == len(sandbox.catalog.entries(mid))
    assert final.ledger_head == sandbox.catalog.entries(mid)[-1].hash
    address = client.service_client.config.target_host

    def verify() -> subprocess.CompletedProcess[str]:
        return vecmigrate(
            "log",
            mid,
            "--verify",
            "--address",
            address,
            "--catalog",
            sandbox.catalog.url,
            "--task-queue",
            queue,
        )

    ok = await asyncio.to_thread(verify)
    assert "ledger intact" in ok.stderr
    assert f"tail anchored at entry {final.ledger_seq}" in ok.stderr
    kinds = {e.kind for e in sandbox.catalog.entries(mid)}
    assert {
        "migration.started",
        "phase",
        "shard.copied",
        "shard.indexed",
        "index.registered",
        "gate",
        "routing.changed",
        "version.state",
    } <= kinds

    unlock(sandbox.catalog)
    with sandbox.catalog.engine.begin() as conn:
        conn.execute(text("DELETE FROM ledger WHERE seq = :s"), {"s": final.ledger_seq})
    cut = await asyncio.to_thread(verify)
    assert cut.returncode == 1
    assert "the ledger's tail was cut or rewritten" in cut.stderr

    shown = await asyncio.to_thread(
        vecmigrate, "report", mid, "--json", "--catalog", sandbox.catalog.url
    )
    assert '"passed": true' in shown.stdout
