"""The drill: an application writes and reads its PostgreSQL table with plain SQL by a stable
name (a view) all through an online migration that captures its writes, through the backfill,
the catch-up, the cut-over, a rollback after the cut-over, a second cut-over and the finalize,
on a real PostgreSQL server and the real workflow. Nothing it wrote may be lost or come back,
on either version, and none of its queries may fail.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pytest
from temporalio.client import Client

from tests.conftest import Sandbox, postgres_database, running_worker
from tests.helpers import Looping
from tests.test_capture import (
    DIM,
    NOTHING,
    ROWS,
    Reader,
    _pg,
    _vec,
    items_spec,
    items_table,
    leftovers,
)
from vecmigrate.catalog.engines import dispose_engines
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.plan import capture_step
from vecmigrate.data import capture, stablename
from vecmigrate.data.backfill import TargetView, open_source, open_target, target_limits
from vecmigrate.data.transforms import identity
from vecmigrate.errors import SpecError
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.spec import MigrationSpec, parse_spec
from vecmigrate.records.sharding import hash_key

NAME = "items"  # the name the application uses, before and after the migration
State = tuple[str, int, tuple[float, ...]] | None


def drill_spec(url: str, id: str = "drill") -> MigrationSpec:
    """The capture test's migration with the application's name in front: the table the
    application used is ``items_v1`` behind the view ``items``, writable for the replay back."""
    return items_spec(
        url,
        source_store={"table": "items_v1", "writable": True},
        id=id,
        cutover={"mode": "manual", "bake_seconds": 12, "stable_name": NAME},
    )


def _row_state(row: tuple[Any, ...]) -> State:
    return (str(row[1]), int(row[2]), tuple(np.float32(x) for x in str(row[3])[1:-1].split(",")))


class Application(Looping):
    """Writes by the stable name with plain SQL, about ``rate`` a second, each acknowledged
    (committed) before the next: upserts of new and existing ids, updates of the payload alone,
    deletes. Keeps what PostgreSQL acknowledged as each id's last state (from ``RETURNING``),
    every failure, and each write's latency by the migration's phase."""

    def __init__(self, url: str, phase: dict[str, str], rate: float = 200.0) -> None:
        super().__init__()
        self.url, self.phase, self.rate = _pg(url), phase, rate
        self.paused = threading.Event()
        self.idle = threading.Event()
        self.state: dict[int, State] = {}
        self.failures: list[str] = []
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.kinds: dict[str, int] = defaultdict(int)
        self.last: dict[int, str] = {}  # each id's last write: its kind and phase

    def run(self) -> None:
        rng = np.random.default_rng(17)
        alive = list(range(ROWS))
        next_id = 10_000_000
        conn = psycopg.connect(self.url, autocommit=True)
        began, n = time.monotonic(), 0
        while not self.stopping.is_set():
            if self.paused.is_set():
                self.idle.set()
                time.sleep(0.01)
                began, n = time.monotonic(), 0
                continue
            self.idle.clear()
            kind = str(rng.choice(["upsert", "payload", "delete"], p=[0.45, 0.35, 0.2]))
            new = kind == "upsert" and rng.random() < 0.4
            victim = next_id if new else alive[int(rng.integers(len(alive)))]
            vector = _vec(rng.standard_normal(DIM).astype(np.float32))
            phase = self.phase["now"]
            t0 = time.perf_counter()
            try:
                if kind == "upsert":
                    row = conn.execute(
                        f"INSERT INTO {NAME} (id, title, score, embedding) "
                        "VALUES (%s, %s, %s, %s::vector) ON CONFLICT (id) DO UPDATE SET "
                        "title = EXCLUDED.title, score = EXCLUDED.score, "
                        "embedding = EXCLUDED.embedding "
                        "RETURNING id, title, score, embedding::text",
                        (victim, f"upsert {n}", n, vector),
                    ).fetchone()
                    assert row is not None
                    self.state[victim] = _row_state(row)
                    if new:
                        alive.append(victim)
                        next_id += 1
                elif kind == "payload":
                    row = conn.execute(
                        f"UPDATE {NAME} SET title = %s, score = %s WHERE id = %s "
                        "RETURNING id, title, score, embedding::text",
                        (f"payload {n}", n, victim),
                    ).fetchone()
                    if row is not None:
                        self.state[victim] = _row_state(row)
                else:
                    conn.execute(f"DELETE FROM {NAME} WHERE id = %s", (victim,))
                    self.state[victim] = None
                    alive.remove(victim)
            except psycopg.Error as exc:
                self.failures.append(f"{phase} {kind} {victim}: {exc}")
                if conn.closed:
                    conn = psycopg.connect(self.url, autocommit=True)
            self.last[victim] = f"{kind} in {phase}"
            self.latency[phase].append(time.perf_counter() - t0)
            self.kinds[kind] += 1
            n += 1
            wait = began + n / self.rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        conn.close()

    def pause(self) -> None:
        self.paused.set()
        self.idle.clear()
        assert self.idle.wait(10)

    def p99(self) -> dict[str, tuple[int, float]]:
        return {
            p: (len(v), round(float(np.percentile(v, 99)) * 1000, 2))
            for p, v in self.latency.items()
        }


class NameReader(Looping):
    """Nearest-neighbour queries by the stable name, as fast as they answer."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = _pg(url)
        self.reads = 0
        self.failures: list[str] = []

    def run(self) -> None:
        rng = np.random.default_rng(5)
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stopping.is_set():
                try:
                    conn.execute(
                        f"SELECT id FROM {NAME} ORDER BY embedding <=> %s::vector LIMIT 5",
                        (_vec(rng.standard_normal(DIM).astype(np.float32)),),
                    ).fetchall()
                    self.reads += 1
                except psycopg.Error as exc:
                    self.failures.append(str(exc))
                time.sleep(0.005)


def mismatches(url: str, table: str, state: dict[int, State]) -> dict[str, list[int]]:
    """Ids whose acknowledged last write ``table`` does not hold: missing or stale, and deleted
    ids it holds (resurrected)."""
    with psycopg.connect(_pg(url)) as conn:
        rows = conn.execute(
            f"SELECT id, title, score, embedding::text FROM {table} WHERE id = ANY(%s)",
            (list(state),),
        ).fetchall()
    held = {int(r[0]): _row_state(r) for r in rows}
    lost = sorted(i for i, s in state.items() if s is not None and held.get(i) != s)
    back = sorted(i for i, s in state.items() if s is None and i in held)
    return {"lost": lost, "resurrected": back}


CLEAN: dict[str, list[int]] = {"lost": [], "resurrected": []}


async def test_the_drill_loses_no_write_through_a_rollback_after_cut_over_and_a_second_cut_over(
    client: Client, sandbox: Sandbox, postgres: Any
) -> None:
    url = postgres_database(postgres)
    items_table(url)  # the application's own table, named items
    spec = drill_spec(url)
    assert capture.two_way(spec)
    stablename.prepare(spec)  # items becomes items_v1, and the view items over it
    phase = {"now": "PLANNED"}
    app = Application(url, phase)
    reader = NameReader(url)
    router_reader = Reader(sandbox, spec)  # feeds the shadow and ramp gates
    mid = spec.migration_id
    checks: dict[str, dict[str, dict[str, list[int]]]] = {}

    async def until(ok: Any, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = await mc.status_if_started(mid)
            if st is not None:
                phase["now"] = str(st.phase) + (f"#{st.cutovers}" if st.cutovers else "")
                assert st.phase not in (Phase.ABORTED, Phase.ROLLED_BACK), st.error
                assert not st.paused, (st.blocked_reason, st.error, st.reconcile)
                if ok(st):
                    return
            await asyncio.sleep(0.05)
        raise AssertionError(f"not reached: {phase}")

    try:
        async with running_worker(client, sandbox) as queue:
            mc = MigrationClient(client, queue)
            app.start()
            reader.start()
            router_reader.start()
            await mc.start(spec)
            await until(lambda s: s.phase == Phase.AWAITING_CUTOVER)
            await asyncio.sleep(2)
            await mc.signal(mid, "approve_cutover", operator="dba")
            await until(lambda s: s.phase == Phase.BAKING)
            await asyncio.sleep(4)  # the application writes into the target by the name
            await mc.signal(mid, "rollback", operator="oncall", reason="drill")
            await until(lambda s: s.phase == Phase.AWAITING_CUTOVER and s.cutovers == 1)
            await asyncio.sleep(2)  # and into the source again
            app.pause()
            # Every write is on the source the name points at again, the bake's included.
            checks["after rollback: source"] = {"v1": mismatches(url, "items_v1", app.state)}
            # The target gets the rest at the next cut-over; replayed here to compare now.
            capture.replay(spec, seconds=60)
            checks["after rollback: both"] = {
                "v1": mismatches(url, "items_v1", app.state),
                "v2": mismatches(url, "items_v2", app.state),
            }
            app.paused.clear()
            await asyncio.sleep(2)
            await mc.signal(mid, "approve_cutover", operator="dba")
            await until(lambda s: s.phase == Phase.BAKING and s.cutovers == 2)
            await asyncio.sleep(4)
            app.pause()
            checks["after second cut-over: target"] = {"v2": mismatches(url, "items_v2", app.state)}
            final = await mc.result(mid, timeout=300)
            phase["now"] = str(final.phase)
            checks["completed: both"] = {
                "v1": mismatches(url, "items_v1", app.state),
                "v2": mismatches(url, "items_v2", app.state),
            }
            # The application goes on writing by the name, into the target, after the finalize.
            app.paused.clear()
            await asyncio.sleep(2)
    finally:
        app.close()
        reader.close()
        router_reader.close()
        dispose_engines()
    assert final.phase == Phase.COMPLETED, final.error
    assert final.cutovers == 2
    print(f"writes: {dict(app.kinds)}; reads by the name: {reader.reads}")
    print("write p99 by phase (count, ms):", app.p99())
    assert app.failures == [], app.failures[:5]
    assert reader.failures == [], reader.failures[:5]
    assert reader.reads > 100
    assert app.kinds["payload"] > 100
    assert app.kinds["delete"] > 100
    for name, found in checks.items():
        for version, wrong in found.items():
            assert wrong == CLEAN, (name, version, {k: v[:5] for k, v in wrong.items()})
    assert {"BAKING#1", "AWAITING_CUTOVER#1", "BAKING#2", "BACKFILLING"} <= set(app.latency)
    assert leftovers(url) == NOTHING
    with psycopg.connect(_pg(url)) as conn:
        keys = conn.execute("SELECT id, _vm_h FROM items_v2").fetchall()
        points = conn.execute(
            "SELECT c.relname FROM pg_rewrite r JOIN pg_depend d ON d.objid = r.oid "
            "JOIN pg_class c ON c.oid = d.refobjid "
            "WHERE r.ev_class = to_regclass('items') AND d.refobjid <> r.ev_class"
        ).fetchall()
    # Rows the application inserted into the target through the view hold the shard key
    # vecmigrate computes, so later scans find them in their shard.
    ids = np.array([k[0] for k in keys], np.int64)
    assert [int(k[1]) for k in keys] == [int(h) for h in hash_key(ids)]
    assert {p[0] for p in points} == {"items_v2"}


def test_stable_name_with_capture_needs_rows_that_map_back_and_a_writable_source() -> None:
    """Refused before anything is written: a target that normalises the vectors (the target's
    rows cannot be replayed back onto the source), or a source vecmigrate may not write."""
    url = "postgresql+psycopg://app@db.example/app"
    good = drill_spec(url).model_dump(mode="json", exclude_unset=True)
    normalising = json.loads(json.dumps(good))
    normalising["target"]["embedding"]["normalized"] = True
    with pytest.raises(SpecError, match="cannot be replayed back onto the source"):
        parse_spec(normalising)
    readonly = json.loads(json.dumps(good))
    readonly["source"]["store"]["writable"] = False
    with pytest.raises(SpecError, match=r"source\.store\.writable: true"):
        parse_spec(readonly)
    # Without the capture (writes through the router), nothing needs to map back.
    readonly["online"]["capture"] = "off"
    assert not capture.two_way(parse_spec(readonly))


def test_a_switch_replays_what_is_pending_while_writers_by_the_name_wait(postgres: Any) -> None:
    """Writes by the name go on during each switch; whatever was captured on the side the
    name leaves and not replayed yet is on the side it moves to when the switch commits, with
    no replay after it, and no write fails."""
    url = postgres_database(postgres)
    items_table(url, rows=200)
    spec = drill_spec(url)
    stablename.prepare(spec)
    capture.install(spec)
    phase = {"now": "v1"}
    app = Application(url, phase, rate=400.0)
    try:
        # The copy, as the backfill makes it: the target holds every row of the source.
        source, target = open_source(spec), open_target(spec)
        rows = source.fetch_records(pa.array(range(200), pa.int64()))
        view = TargetView(target, target_limits(spec, target), ("identity", identity))
        copied, _ = view.records(rows)
        assert target.write(copied) == 200
        app.start()
        time.sleep(1.5)
        phase["now"] = "switching"
        moved = stablename.switch(spec, "target")
        phase["now"] = "v2"
        assert moved.changed
        time.sleep(1.0)
        app.pause()
        wrong = mismatches(url, "items_v2", app.state)
        assert wrong == CLEAN, {k: [(i, app.last[i]) for i in v[:5]] for k, v in wrong.items()}
        app.paused.clear()
        time.sleep(1.0)
        phase["now"] = "switching back"
        back = stablename.switch(spec, "source", create=False)
        phase["now"] = "v1 again"
        assert back.after == "items_v1"
        time.sleep(0.5)
        app.pause()
        wrong = mismatches(url, "items_v1", app.state)
        assert wrong == CLEAN, {k: [(i, app.last[i]) for i in v[:5]] for k, v in wrong.items()}
    finally:
        app.close()
        capture.remove(spec, replay_first=False)
        dispose_engines()
    assert app.failures == [], app.failures[:5]
    assert {"v1", "v2", "v1 again"} <= set(app.latency)
    assert leftovers(url) == NOTHING
    print("write p99 around the switches (count, ms):", app.p99())


def test_plan_says_a_stable_name_over_a_captured_table_is_captured_both_ways() -> None:
    step = capture_step(drill_spec("postgresql+psycopg://app@db.example/prod"))
    assert "from the cut-over the writes applications make by" in step
    assert "replayed onto the source, so a rollback keeps them" in step
