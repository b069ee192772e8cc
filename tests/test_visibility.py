"""Finding migrations and checking a deployment: search attributes through the stock Temporal
CLI, `vecmigrate list` with its filters, `vecmigrate doctor`, on real dev servers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from tests.conftest import Sandbox, running_worker, vecmigrate
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.devserver import DevServer, free_port, temporal_binary
from vecmigrate.control.doctor import diagnose, sqlite_on_network
from vecmigrate.control.listing import Filters, list_migrations, list_query
from vecmigrate.model.search import ALL as SEARCH_ATTRIBUTES

T = TypeVar("T")


async def eventually(
    get: Callable[[], Awaitable[T]], ok: Callable[[T], bool], timeout: float = 15
) -> T:
    """Visibility is eventually consistent: ask until the answer is right."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await get()
        if ok(value) or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.3)


def address(client: Client) -> str:
    return client.service_client.config.target_host


def stock_list(client: Client, query: str) -> list[str]:
    """Workflow ids `temporal workflow list --query` prints."""
    done = subprocess.run(
        [
            temporal_binary(),
            "workflow",
            "list",
            "--address",
            address(client),
            "--query",
            query,
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    text = done.stdout.strip()
    if not text:
        return []
    if text.startswith("["):
        found = json.loads(text)
    else:
        found = [json.loads(line) for line in text.splitlines() if line.strip()]
    return sorted(w["execution"]["workflowId"] for w in found)


async def start_three(client: Client, sandbox: Sandbox) -> tuple[str, dict[str, str]]:
    """Three migrations no worker runs (they stay PLANNED), of two collections and two tenants,
    then one of them terminated; returns the run's tag and the migrations' ids by name."""
    tag = uuid.uuid4().hex[:8]
    mc = MigrationClient(client, f"nobody-{tag}")
    ids = {
        "a": await mc.start(sandbox.spec(id=f"a-{tag}", collection=f"docs{tag}"), operator="alice"),
        "b": await mc.start(
            sandbox.spec(id=f"b-{tag}", collection=f"docs{tag}", tenant=f"acme{tag}"),
            operator="bob",
        ),
        "c": await mc.start(
            sandbox.spec(id=f"c-{tag}", collection=f"imgs{tag}", strategy="online"),
            operator="carol",
        ),
    }
    await client.get_workflow_handle(ids["c"]).terminate("test: a finished migration")
    return tag, ids


async def test_search_attributes_are_queried_through_the_stock_temporal_cli(
    client: Client, sandbox: Sandbox
) -> None:
    tag, ids = await start_three(client, sandbox)
    query = f"VecmigratePhase='PLANNED' AND VecmigrateCollection='docs{tag}'"
    found = await eventually(
        lambda: asyncio.to_thread(stock_list, client, query), lambda f: len(f) == 2
    )
    assert found == sorted([ids["a"], ids["b"]])
    by_tenant = await asyncio.to_thread(
        stock_list, client, f"VecmigrateTenant='acme{tag}' AND VecmigrateTargetVersion='v2'"
    )
    assert by_tenant == [ids["b"]]
    # The memo says who asked, for the workflow's page.
    desc = await client.get_workflow_handle(ids["b"]).describe()
    memo = await desc.memo()
    assert memo["requested_by"] == "bob"
    assert memo["target"]["index"] == "hnswlib_hnsw"
    assert "url" not in json.dumps(memo)


async def test_vecmigrate_list_filters(client: Client, sandbox: Sandbox) -> None:
    tag, ids = await start_three(client, sandbox)

    async def rows(**filters: object) -> list[str]:
        found = await list_migrations(client, Filters(**filters))  # type: ignore[arg-type]
        return sorted(r.id for r in found if r.id.endswith(tag))

    everything = await eventually(lambda: rows(), lambda r: len(r) == 3)
    assert everything == sorted(ids.values())
    assert await rows(collection=f"docs{tag}") == sorted([ids["a"], ids["b"]])
    assert await rows(tenant=f"acme{tag}") == [ids["b"]]
    assert await rows(strategy="online") == [ids["c"]] or ids["c"] in await rows(strategy="online")
    assert await rows(phase="planned", collection=f"docs{tag}") == sorted([ids["a"], ids["b"]])
    assert await rows(phase="BACKFILLING", collection=f"docs{tag}") == []
    running = await eventually(lambda: rows(running=True), lambda r: ids["c"] not in r)
    assert running == sorted([ids["a"], ids["b"]])
    assert await rows(running=False) == [ids["c"]]
    # The command, as a user runs it: JSON rows, phase and who asked included.
    env = {**os.environ, "TEMPORAL_ADDRESS": address(client)}
    done = await asyncio.to_thread(
        vecmigrate, "list", "--collection", f"docs{tag}", "--running", "--json", env=env
    )
    assert done.returncode == 0, done.stderr
    listed = {r["id"]: r for r in json.loads(done.stdout)}
    assert set(listed) == {ids["a"], ids["b"]}
    assert listed[ids["b"]]["phase"] == "PLANNED"
    assert listed[ids["b"]]["tenant"] == f"acme{tag}"
    assert listed[ids["b"]]["requested_by"] == "bob"
    assert listed[ids["b"]]["status"] == "running"
    bad = await asyncio.to_thread(vecmigrate, "list", "--phase", "COPYING", env=env)
    assert bad.returncode == 2
    assert "not a phase" in bad.stderr
    assert "BACKFILLING" in bad.stderr


def test_the_list_query_is_the_stock_clis_query() -> None:
    assert list_query(Filters(phase="backfilling", collection="docs", running=True)) == (
        "(WorkflowType = 'MigrationWorkflow' OR WorkflowType = 'RegionalMigrationWorkflow') AND "
        "VecmigratePhase = 'BACKFILLING' AND VecmigrateCollection = 'docs' AND "
        "ExecutionStatus = 'Running'"
    )


async def test_doctor_passes_on_a_ready_deployment(client: Client, sandbox: Sandbox) -> None:
    sandbox.seed(500)
    async with running_worker(client, sandbox) as queue:
        # A worker just started may not have polled yet (on a loaded machine, seconds): until
        # it has, the doctor rightly says that nobody polls the queue.
        await eventually(MigrationClient(client, queue).has_workers, bool, timeout=30)
        findings = await diagnose(address(client), "default", sandbox.catalog.url, [queue])
    failed = [f for f in findings if not f.ok]
    assert failed == []
    checks = [f.check for f in findings]
    assert checks[:3] == ["temporal reachable", "namespace", "search attributes"]
    assert f"workers on {queue}" in checks
    assert "catalog" in checks
    assert "store of default/docs@v1" in checks


@pytest.mark.integration
async def test_doctor_fails_clearly_on_a_missing_search_attribute(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    # A server where nobody registered them (as a cluster set up without our setup job).
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
    )
    try:
        where = address(env.client)
        run = {**os.environ, "TEMPORAL_ADDRESS": where}
        done = await asyncio.to_thread(
            vecmigrate, "doctor", "--catalog", sandbox.catalog.url, env=run
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert "FAIL search attributes: VecmigratePhase missing" in done.stdout
        for attribute in SEARCH_ATTRIBUTES:
            assert (
                f"temporal operator search-attribute create --namespace default "
                f"--name {attribute.name} --type Keyword" in done.stdout
            )
        # And a migration cannot start there: it says why before anything is written.
        started = await asyncio.to_thread(
            vecmigrate,
            "start",
            str(_spec_file(sandbox, tmp_path)),
            "--catalog",
            sandbox.catalog.url,
            env=run,
        )
        assert started.returncode == 2
        assert "search attribute" in started.stderr
        assert "vecmigrate doctor" in started.stderr
    finally:
        await env.shutdown()


def _spec_file(sandbox: Sandbox, tmp_path: Path) -> Path:
    sandbox.seed(500)
    path = tmp_path / "spec.json"
    path.write_text(sandbox.spec().model_dump_json())
    return path


def test_doctor_knows_sqlite_on_a_network_file_system(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/sda1 / ext4 rw 0 0\n"
        "server:/export /mnt/shared nfs4 rw,relatime 0 0\n"
        "//files/share /mnt/smb cifs rw 0 0\n"
    )
    assert sqlite_on_network("sqlite:////mnt/shared/catalog.db", str(mounts)) == "nfs4"
    assert sqlite_on_network("sqlite:////mnt/smb/a/b.db", str(mounts)) == "cifs"
    assert sqlite_on_network("sqlite:////var/lib/catalog.db", str(mounts)) is None
    assert sqlite_on_network("postgresql+psycopg://u@h/db", str(mounts)) is None


@pytest.mark.integration
async def test_vecmigrate_dev_registers_the_search_attributes(tmp_path: Path) -> None:
    server = await asyncio.to_thread(
        DevServer(tmp_path / "temporal.db", port=free_port(), ui=False).start
    )
    try:
        client = await Client.connect(server.address)
        found = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace="default")
        )
        keyword = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
        assert {a.name: keyword for a in SEARCH_ATTRIBUTES}.items() <= dict(
            found.custom_attributes
        ).items()
    finally:
        await asyncio.to_thread(server.stop)


async def test_a_running_migration_is_found_by_its_phase_and_reads_from_its_page(
    client: Client, sandbox: Sandbox
) -> None:
    tag = uuid.uuid4().hex[:8]
    # Throttled so that it stays in BACKFILLING for a few seconds.
    spec = sandbox.spec(id=f"p-{tag}", collection=f"docs{tag}", max_vectors_per_second=600)
    sandbox.seed(3000, collection=f"docs{tag}")
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        mid = await mc.start(spec, operator="alice")
        query = f"VecmigratePhase='BACKFILLING' AND VecmigrateCollection='docs{tag}'"
        found = await eventually(
            lambda: asyncio.to_thread(stock_list, client, query), lambda f: f == [mid], timeout=30
        )
        assert found == [mid]
        # The page reads without opening a payload: phase, what it does, progress.
        handle = client.get_workflow_handle(mid)
        metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
        details = metadata.current_details
        assert details.startswith("**BACKFILLING**"), details
        assert "vectors copied" in details
        await mc.result(mid)
        done = await eventually(
            lambda: asyncio.to_thread(
                stock_list,
                client,
                f"VecmigratePhase='COMPLETED' AND VecmigrateCollection='docs{tag}'",
            ),
            lambda f: f == [mid],
        )
        assert done == [mid]
    # The timeline says what each activity does, not a column of identical names.
    summaries: dict[str, list[str]] = {}
    async for event in handle.fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            kind = event.activity_task_scheduled_event_attributes.activity_type.name
            (text,) = await client.data_converter.decode([event.user_metadata.summary])
            summaries.setdefault(kind, []).append(text)
    assert sorted(summaries["copy_shard"]) == ["copy shard 0", "copy shard 1", "copy shard 2"]
    assert "phase PREPARING -> BACKFILLING" in summaries["record"]
    # A routing change names its reason and the version states it sets with it.
    steps = summaries["routing_step"]
    assert all(s.startswith("routing: ") for s in steps), steps
    assert any("v2: serving" in s for s in steps), steps
    assert len(set(summaries["record"])) > len(summaries["record"]) / 2
