"""Online migration under continuous load through the HTTP gateway, on the real dev server.

Dual-write from before the snapshot, catch-up from the change log, shadow reads, a canary
ramp, a cut-over, a rollback after it, and a second cut-over, while clients keep searching,
upserting and deleting. At the end every acknowledged write is in the live version and every
acknowledged delete is absent.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest
from rich.console import Console
from rich.table import Table
from temporalio.client import Client, WorkflowUpdateFailedError

from tests.conftest import Sandbox, running_worker, shadow_all
from tests.test_workflow import wait_for
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.devserver import free_port
from vecmigrate.data.backfill import open_source, open_target
from vecmigrate.model.lifecycle import LIFECYCLE, Phase
from vecmigrate.model.messages import RampRequest
from vecmigrate.serving.gateway import Gateway
from vecmigrate.serving.router import Router
from vecmigrate.stores import WHOLE
from vecmigrate.testing.drill import run_drill, until_phase
from vecmigrate.testing.loadgen import LoadGenerator, latency_table, verify


def post(url: str, body: dict[str, object]) -> tuple[int, dict[str, object], dict[str, str]]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read()), _headers(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), _headers(exc.headers)


def _headers(headers: Any) -> dict[str, str]:
    """Header names are case-insensitive: keyed here in their usual spelling (Retry-After)."""
    return {k.title(): v for k, v in headers.items()}


def online_spec(sandbox: Sandbox, **overrides: object):  # type: ignore[no-untyped-def]
    data: dict[str, object] = {
        "strategy": "online",
        "shards": {"count": 2},
        "batch_size": 500,
        "max_vectors_per_second": 8000.0,
        "online": {
            "settle_seconds": 1.0,
            "shadow": {
                "percent": 50,
                "seconds": 2,
                "min_samples": 10,
                "min_overlap": 0.5,
                "max_p99_ratio": 10.0,
            },
            "ramp": {"steps": [10, 50], "step_seconds": 1.5},
        },
        "cutover": {"mode": "manual", "bake_seconds": 4},
    }
    data.update(overrides)
    return sandbox.spec(**data)


def drill_load(gateway: Gateway, queries: np.ndarray, phase: dict[str, str]) -> LoadGenerator:
    """The drill's clients on the gateway's default/docs: four of them at a rate of 40, each
    request marked with ``phase["now"]``. At half that rate a loaded machine left a ramp step
    with fewer shadow pairs than the gate asks for (9 of 10), which paused the migration."""
    return LoadGenerator(
        gateway.url, "default", "docs", queries, clients=4, rate=40, phase=lambda: phase["now"]
    )


async def test_online_migration_under_load_loses_no_write(client: Client, sandbox: Sandbox) -> None:
    sandbox.seed(10_000)
    spec = online_spec(sandbox)
    gateway = Gateway(sandbox.catalog.url, port=0, refresh=0.5).start()
    base = f"{gateway.url}/v1/default/docs"
    queries = open_source(spec).sample(200, seed=3)[1]
    phase = {"now": "BEFORE"}
    load = drill_load(gateway, queries, phase)
    try:
        # The gateway's own errors, before anything runs.
        status, body, _ = post(f"{base}/upsert", {"ids": [1], "vectors": [[1.0, 2.0]]})
        assert status == 400
        assert "dimension 2" in str(body["error"])
        status, body, _ = post(f"{base}/upsert", {"ids": [1], "vectors": [[float("nan")] * 16]})
        assert status == 400  # JSON NaN is refused, not stored
        status, body, _ = post(f"{gateway.url}/v1/default/nope/search", {"vector": [0.0] * 16})
        assert status == 404
        assert "unknown collection default/nope" in str(body["error"])

        load.start()
        async with running_worker(client, sandbox) as queue:
            mc = MigrationClient(client, queue)
            await asyncio.sleep(1.0)  # load on the old version alone

            async def refuse_full_ramp() -> None:
                st = await until_phase(mc, spec.migration_id, Phase.RAMPING, 120)
                assert st.watermark is not None
                assert st.catchup_lag is not None
                with pytest.raises(WorkflowUpdateFailedError) as refused:
                    await mc.handle(spec.migration_id).execute_update(
                        "set_ramp", RampRequest(percent=100.0, operator="bob")
                    )
                assert "100 is the cut-over" in str(refused.value.cause)

            checker = asyncio.ensure_future(refuse_full_ramp())
            final = await run_drill(mc, spec, lambda p: phase.update(now=p), operator="alice")
            await checker
            mid = final.migration_id
        phase["now"] = "AFTER"
        await asyncio.sleep(1.0)
    finally:
        load.stop()
        gateway.stop()

    assert final.phase == Phase.COMPLETED, final.error
    assert final.cutovers == 2
    assert [g.passed for g in final.shadow] == [True, True, True]  # shadow, 10 %, 50 %
    requests = load.requests()
    failed = [r for r in requests if r.status != 200]
    assert failed == [], failed[:5]
    verdict = verify(load.states, open_target(spec))
    assert verdict.writes_checked > 100
    assert verdict.deletes_checked > 5
    assert verdict.ok, verdict
    # Reads moved for good, and the old version was kept exactly current until finalize.
    routing = sandbox.catalog.get_routing("default", "docs")
    assert routing is not None
    assert routing.read_version == "v2"
    assert routing.write_versions == ["v2"]
    entries = sandbox.catalog.entries(mid)
    reversed_ = [
        e.data
        for e in entries
        if e.kind == "routing.changed" and e.data["reason"].startswith("rollback after cut-over")
    ]
    assert len(reversed_) == 1
    assert reversed_[0]["read_version"] == "v1"
    assert set(reversed_[0]["write_versions"]) == {"v1", "v2"}  # dual-write kept on
    phases = [e.data["to"] for e in entries if e.kind == "phase"]
    assert phases.count("CUT_OVER") == 2
    assert "ROLLING_BACK" not in phases
    assert sandbox.catalog.verify_ledger() == []

    order = ["BEFORE", *LIFECYCLE["online"].phases, "AFTER"]
    rows = latency_table(requests, [str(p) for p in order])
    table = Table(title="requests through the gateway, per phase")
    for col in rows[0]:
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    Console(width=140).print(table)
    seen = {r["phase"] for r in rows}
    assert {"BACKFILLING", "SHADOWING", "RAMPING", "BAKING"} <= seen


async def test_offline_migration_refuses_writes_with_retry_after(
    client: Client, sandbox: Sandbox
) -> None:
    sandbox.seed(4000)
    spec = online_spec(
        sandbox, strategy="offline", max_vectors_per_second=2000.0, cutover={"mode": "automatic"}
    )
    gateway = Gateway(sandbox.catalog.url, port=0, refresh=0.2).start()
    base = f"{gateway.url}/v1/default/docs"
    vec = [0.5] * 16
    try:
        async with running_worker(client, sandbox) as queue:
            mc = MigrationClient(client, queue)
            mid = await mc.start(spec, operator="alice")
            await wait_for(mc, mid, lambda s: s.phase == Phase.BACKFILLING)
            await asyncio.sleep(0.5)
            status, body, headers = post(f"{base}/upsert", {"ids": [77_777], "vectors": [vec]})
            assert status == 503
            assert headers.get("Retry-After") == "5"
            assert "paused" in str(body["error"])
            status, _, _ = post(f"{base}/search", {"vector": vec, "k": 3})
            assert status == 200  # reads go on
            final = await mc.result(mid, timeout=120)
            assert final.phase == Phase.COMPLETED
            await asyncio.sleep(0.5)
            status, _, _ = post(f"{base}/upsert", {"ids": [77_777], "vectors": [vec]})
            assert status == 200
    finally:
        gateway.stop()
    assert open_target(spec).fetch(np.array([77_777]))[0].tolist() == [77_777]
    assert open_source(spec).count(WHOLE) == 4000  # offline: the old version is not written


@pytest.mark.integration  # the gateway in a process of its own
def test_vecmigrate_serve_answers_over_http(sandbox: Sandbox) -> None:
    vectors = sandbox.seed(1000)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vecmigrate",
            "serve",
            "--no-auth",
            "--catalog",
            sandbox.catalog.url,
            "--port",
            str(port),
            "--refresh",
            "0.2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    assert json.loads(resp.read()) == {"ok": True}
                    break
            except OSError:
                assert time.monotonic() < deadline, "vecmigrate serve did not come up"
                time.sleep(0.2)
        status, body, _ = post(
            f"{url}/v1/default/docs/upsert", {"ids": [5_000_000], "vectors": [[9.0] * 16]}
        )
        assert status == 200
        assert body["upserted"] == 1
        status, body, _ = post(f"{url}/v1/default/docs/search", {"vector": [9.0] * 16, "k": 2})
        assert status == 200
        assert body["ids"][0][0] == 5_000_000
        assert body["version"] == "v1"
        status, body, _ = post(f"{url}/v1/default/docs/search", {"vector": vectors[0].tolist()})
        assert body["ids"][0][0] == 1
        status, body, _ = post(f"{url}/v1/default/docs/delete", {"ids": ["x"]})
        assert status == 400
        assert "ids must be a list of integers" in str(body["error"])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def _pairs_drill(
    sandbox: Sandbox, ramp_step: float, step_seconds: float
) -> tuple[Any, Any, Router]:
    """3,000 records seeded; an online spec whose shadow stage mirrors every search for 1 s and
    needs 10 pairs, then one ramp step and an automatic cut-over; 50 of the records as queries;
    a router that refreshes its plan every 0.2 s."""
    sandbox.seed(3000)
    spec = online_spec(
        sandbox,
        online={
            "settle_seconds": 0.5,
            "shadow": shadow_all(seconds=1, min_samples=10),
            "ramp": {"steps": [ramp_step], "step_seconds": step_seconds},
        },
        cutover={"mode": "automatic", "bake_seconds": 1},
    )
    queries = open_source(spec).sample(50, seed=3)[1]
    return spec, queries, Router(sandbox.catalog, refresh_seconds=0.2)


async def test_a_shadow_step_short_of_pairs_collects_more_before_it_is_judged(
    client: Client, sandbox: Sandbox
) -> None:
    """No search at all until the shadow stage's hold has ended short of its pairs (the status
    says it goes on collecting): then the searches come, and the gate passes on them instead of
    pausing the migration. (The pairs' overlap and p99 are not bounded here: on a loaded machine
    they measure the load, and this test is about the count.)"""
    spec, queries, router = _pairs_drill(sandbox, 50, 0.5)
    try:
        async with running_worker(client, sandbox) as queue:
            mc = MigrationClient(client, queue)
            mid = await mc.start(spec)
            short = await wait_for(
                mc, mid, lambda s: "shadow pairs when the hold ended" in s.blocked_reason, 120
            )
            assert (short.phase, short.paused) == (Phase.SHADOWING, False), short
            assert short.blocked_reason.startswith("shadow: 0 of 10 shadow pairs"), short
            deadline = time.monotonic() + 120
            while True:
                st = await mc.status(mid)
                assert not st.paused, st.blocked_reason
                if st.phase not in (Phase.SHADOWING, Phase.RAMPING):
                    break
                assert time.monotonic() < deadline, st
                for n, q in enumerate(queries):
                    router.search("default", "docs", q[None, :], 5, key=f"user-{n}")
                await asyncio.sleep(0.05)
            final = await asyncio.wait_for(mc.result(mid), 120)
    finally:
        router.close()
    assert final.phase == Phase.COMPLETED, final.error
    gate = final.shadow[0]
    assert (gate.step, gate.passed) == ("shadow", True), gate
    assert gate.samples >= 10


async def test_a_shadow_step_fed_at_a_trickle_waits_while_its_pairs_keep_coming(
    client: Client, sandbox: Sandbox
) -> None:
    """One search every 1.6 s (as when a latency budget mirrors a small share of reads): a
    step's first wait of 10 s ends with 6 or 7 of its 10 pairs. It goes on at the pairs' rate
    (the status says so) and passes, instead of pausing the migration for an operator. (The
    ramp's step is 1 %: only reads the old version serves are mirrored.)"""
    spec, queries, router = _pairs_drill(sandbox, 1, 1)
    reasons: set[str] = set()
    try:
        async with running_worker(client, sandbox) as queue:
            mc = MigrationClient(client, queue)
            mid = await mc.start(spec)
            deadline = time.monotonic() + 240
            n = 0
            while True:
                st = await mc.status(mid)
                assert not st.paused, st.blocked_reason
                reasons.add(st.blocked_reason)
                if st.phase in (Phase.SHADOWING, Phase.RAMPING):
                    n += 1
                    router.search("default", "docs", queries[n % 50][None, :], 5, key=f"u{n}")
                elif n:
                    break  # past the ramp
                assert time.monotonic() < deadline, st
                await asyncio.sleep(1.6)
            final = await asyncio.wait_for(mc.result(mid), 120)
    finally:
        router.close()
    assert final.phase == Phase.COMPLETED, final.error
    assert [(g.step, g.passed) for g in final.shadow] == [("shadow", True), ("ramp 1.0%", True)]
    assert all(g.samples >= 10 for g in final.shadow)
    assert any("a minute; collecting for up to" in r for r in reasons), reasons


async def test_a_shadow_breach_rolls_back_and_restores_routing(
    client: Client, sandbox: Sandbox
) -> None:
    sandbox.seed(3000)
    spec = online_spec(
        sandbox,
        online={
            "settle_seconds": 0.5,
            "shadow": {"percent": 50, "seconds": 1, "min_samples": 10_000},
            "on_breach": "rollback",
        },
    )
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        mid = await mc.start(spec, operator="alice")
        final = await mc.result(mid, timeout=120)
    assert final.phase == Phase.ROLLED_BACK
    assert final.shadow[-1].passed is False
    assert "no traffic is not a pass" in final.shadow[-1].failures[0]
    routing = sandbox.catalog.get_routing("default", "docs")
    assert routing is not None
    assert routing.read_version == "v1"
    assert routing.write_versions == ["v1"]
    assert routing.candidate_version is None
    assert routing.shadow_percent == 0
    assert sandbox.catalog.find_version("default", "docs", "v2").state == "abandoned"
