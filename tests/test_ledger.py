"""A ledger an auditor can trust: MACed entries, signed anchors outside the catalog and in
Temporal's history, and a verification that fails closed.

The tampering is what an intruder with write access to the catalog database would do (drop the
append-only triggers, then edit, delete, swap, cut, or rewrite and re-hash); each case must make
`vecmigrate log --verify` exit non-zero, as must every case it cannot check.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from temporalio.client import Client

from tests.conftest import Sandbox, running_worker, vecmigrate
from vecmigrate.catalog.catalog import Catalog, entry_hash, mac_input
from vecmigrate.catalog.engines import dispose_engines
from vecmigrate.config import sqlite_url
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.devserver import free_port
from vecmigrate.security.keyring import KEYRING_ENV, LEDGER_MAC, KeyRing, KeyRingSource

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
    "mac",
    "key_id",
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
        conn.execute(
            text(f"UPDATE ledger SET {sets} WHERE seq = :seq"),
            {**{c: values.get(c) for c in COLUMNS}, "seq": seq},
        )


def delete(catalog: Catalog, seq: int) -> None:
    with catalog.engine.begin() as conn:
        conn.execute(text("DELETE FROM ledger WHERE seq = :s"), {"s": seq})


@pytest.fixture
def keyring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KeyRing:
    source = KeyRingSource(f"file:{tmp_path / 'keyring.json'}")
    source.save(KeyRing.generate("k1"))
    monkeypatch.setenv(KEYRING_ENV, source.reference)
    monkeypatch.setenv("VECMIGRATE_ANCHORS", str(tmp_path / "anchors"))
    return source.current()


def fill(catalog: Catalog) -> None:
    for i in range(6):
        catalog.append(
            tenant="t",
            collection="c",
            kind="phase",
            actor=f"op{i}",
            migration_id="m",
            data={"to": f"P{i}"},
            event_key=f"m/{i}",
            caller=f"op{i}@ops",
        )
    catalog.append(tenant="t", collection="c", kind="collection.seeded", actor="op", data={})


@pytest.fixture
def ledger(sql_url: str, keyring: KeyRing) -> Catalog:
    catalog = Catalog(sql_url)
    fill(catalog)
    assert catalog.audit_ledger().intact
    unlock(catalog)
    return catalog


def rehash_from(catalog: Catalog, start: int, edit: dict[str, Any]) -> None:
    """Rewrite entry ``start`` and recompute every hash after it, as an intruder would (the
    MACs cannot be recomputed without the key: they are left or stripped)."""
    entries = catalog.entries()
    prev = next(e.hash for e in entries if e.seq == start - 1)
    for e in entries:
        if e.seq < start:
            continue
        values = row(catalog, e.seq)
        if e.seq == start:
            values.update(edit)
        body = {k: values[k] for k in ("migration_id", "tenant", "collection", "at", "actor")}
        body.update(kind=values["kind"], event_key=values["event_key"])
        body["data"] = json.loads(values["data"])
        if values.get("caller") is not None:
            body["caller"] = values["caller"]
        values["prev_hash"], values["hash"] = prev, entry_hash(prev, body)
        prev = values["hash"]
        write(catalog, e.seq, values)


def test_an_intact_keyed_ledger_verifies(ledger: Catalog, keyring: KeyRing) -> None:
    verdict = ledger.audit_ledger()
    assert verdict.intact
    assert all(e.key_id == "k1" and e.mac for e in ledger.entries())
    assert ledger.entries("m")[0].caller == "op0@ops"  # the caller beside the declared actor


def tamper(catalog: Catalog, case: str) -> None:
    last = catalog.entries()[-1].seq
    if case == "edit":
        with catalog.engine.begin() as conn:
            conn.execute(text("UPDATE ledger SET actor = 'mallory' WHERE seq = 3"))
    elif case == "delete":
        delete(catalog, 2)
    elif case == "swap":
        a, b = row(catalog, 2), row(catalog, 4)
        write(catalog, 2, {**a, "event_key": "tmp", "prev_hash": "tmp-p", "hash": "tmp-h"})
        write(catalog, 4, a)
        write(catalog, 2, b)
    elif case == "truncate the tail":
        delete(catalog, last)
        delete(catalog, last - 1)
    elif case == "rewrite and re-hash the tail":
        rehash_from(catalog, last - 2, {"actor": "mallory"})
    elif case == "rewrite, re-hash and strip the MACs":
        rehash_from(catalog, 2, {"actor": "mallory"})
        with catalog.engine.begin() as conn:
            conn.execute(text("UPDATE ledger SET mac = NULL, key_id = NULL"))
    elif case == "delete an entry of no migration":
        assert catalog.entries()[-1].migration_id is None
        delete(catalog, last)
    elif case == "edit the anchor file":
        path = catalog.anchors.root / "catalog.jsonl"
        lines = path.read_text().splitlines()
        first = json.loads(lines[0])
        first["hash"] = "0" * 64
        path.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    else:
        raise AssertionError(case)


CASES = [
    "edit",
    "delete",
    "swap",
    "truncate the tail",
    "rewrite and re-hash the tail",
    "rewrite, re-hash and strip the MACs",
    "delete an entry of no migration",
    "edit the anchor file",
]


@pytest.mark.parametrize("case", CASES)
def test_tampering_is_found(ledger: Catalog, case: str) -> None:
    tamper(ledger, case)
    verdict = ledger.audit_ledger()
    assert verdict.problems, case
    assert not verdict.intact


def test_what_cannot_be_checked_is_unverified_not_intact(
    ledger: Catalog, keyring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.rmtree(ledger.anchors.root)
    verdict = ledger.audit_ledger()
    assert not verdict.problems
    assert any("no anchor file" in u for u in verdict.unverified)
    monkeypatch.delenv(KEYRING_ENV)
    assert any("no key ring" in u for u in ledger.audit_ledger().unverified)
    rotated = keyring.rotated("k2").without("k1")
    assert any("lacks" in u for u in ledger.audit_ledger(ring=rotated).unverified)


def test_a_rotated_key_keeps_older_entries_checkable(
    ledger: Catalog, keyring: KeyRing, tmp_path: Path
) -> None:
    source = KeyRingSource(f"file:{tmp_path / 'keyring.json'}")
    source.save(keyring.rotated("k2"))
    ledger.append(tenant="t", collection="c", kind="phase", actor="op", migration_id="m")
    keys = {e.key_id for e in ledger.entries()}
    assert keys == {"k1", "k2"}
    assert ledger.audit_ledger().intact
    assert (
        ledger.entries()[-1].mac
        == source.current().mac(LEDGER_MAC, mac_input("k2", ledger.entries()[-1].hash), "k2")[1]
    )


def test_history_anchors_catch_what_matches_nothing(ledger: Catalog) -> None:
    entries = ledger.entries("m")
    history = [(e.seq, e.hash) for e in entries]
    assert ledger.audit_ledger(history=history, migration_id="m").intact
    forged = [*history[:-1], (history[-1][0], "f" * 64)]
    assert ledger.audit_ledger(history=forged, migration_id="m").problems
    assert ledger.audit_ledger(history=[*history, (999, "a" * 64)]).problems


# -- end to end: a real migration, then `vecmigrate log --verify` on tampered copies ------------


@pytest.fixture
def audited(
    tmp_path: Path, keyring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    monkeypatch.delenv("VECMIGRATE_ANCHORS")  # beside the SQLite catalog, copied with it
    yield {"keyring": os.environ[KEYRING_ENV]}
    dispose_engines()


async def test_log_verify_exits_non_zero_for_every_tampering_and_every_unknown(
    client: Client, sandbox: Sandbox, audited: dict[str, Any], tmp_path: Path
) -> None:
    sandbox.seed()
    spec = sandbox.spec()
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        mid = await mc.start(spec, operator="auditor")
        final = await mc.result(mid)
    assert final.phase == "COMPLETED"
    # An entry of no migration after it (a key rotation is one).
    sandbox.catalog.append(tenant="*", collection="*", kind="keys.rotated", actor="ops", data={})
    dispose_engines()
    original = Path(sandbox.catalog.url.removeprefix("sqlite:///"))
    address = client.service_client.config.target_host
    env = {**os.environ, KEYRING_ENV: audited["keyring"]}

    def verify(url: str, *extra: str, at: str = address, id_: str = mid) -> Any:
        return vecmigrate(
            "log", id_, "--verify", "--address", at, "--catalog", url, *extra, env=env
        )

    def copy(name: str) -> Catalog:
        target = tmp_path / name / "catalog.db"
        target.parent.mkdir()
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{original}{suffix}").exists():
                shutil.copy(f"{original}{suffix}", f"{target}{suffix}")
        shutil.copytree(f"{original}.anchors", f"{target}.anchors")
        return Catalog(sqlite_url(target))

    ok = await asyncio.to_thread(verify, sandbox.catalog.url)
    assert ok.returncode == 0, ok.stderr
    assert "ledger intact" in ok.stderr
    outcomes: dict[str, int] = {}
    for n, case in enumerate(CASES):
        catalog = copy(f"case{n}")
        unlock(catalog)
        tamper(catalog, case)
        dispose_engines()
        done: subprocess.CompletedProcess[str] = await asyncio.to_thread(verify, catalog.url)
        outcomes[case] = done.returncode
        assert done.returncode == 1, (case, done.stderr)
        assert "tampered" in done.stderr
    unreachable = await asyncio.to_thread(
        verify, sandbox.catalog.url, at=f"127.0.0.1:{free_port()}"
    )
    assert unreachable.returncode == 3
    assert "unverified" in unreachable.stderr
    unknown = await asyncio.to_thread(verify, sandbox.catalog.url, id_="no-such-migration")
    assert unknown.returncode == 2
    assert "no migration 'no-such-migration'" in unknown.stderr
    no_key = await asyncio.to_thread(
        vecmigrate,
        "log",
        mid,
        "--verify",
        "--address",
        address,
        "--catalog",
        sandbox.catalog.url,
        env={k: v for k, v in env.items() if k != KEYRING_ENV},
    )
    assert no_key.returncode == 3
    offline = await asyncio.to_thread(verify, sandbox.catalog.url, "--without-history")
    assert offline.returncode == 0, offline.stderr
    print(outcomes)
