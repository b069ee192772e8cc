"""Keys rotate while a migration runs: payloads and artifacts written before and after stay
readable, histories under the old key still replay, the ledger says which key protected what,
and the codec endpoint shows decoded payloads to the stock ``temporal`` CLI only with a
credential."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from tests.conftest import Sandbox, json_objects, vecmigrate
from tests.test_workflow import wait_for
from vecmigrate.catalog.catalog import Catalog
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.devserver import temporal_binary
from vecmigrate.errors import KeyRingError
from vecmigrate.indexes.artifacts import manifest_protection
from vecmigrate.security.credentials import Credentials, new_api_key
from vecmigrate.security.keyring import KEYRING_ENV, KeyRing, KeyRingSource
from vecmigrate.serving.asgi import AsgiServer
from vecmigrate.serving.router import Router
from vecmigrate.workers.codec import KEY_ID, data_converter
from vecmigrate.workers.codec_server import codec_app
from vecmigrate.workers.connection import TemporalSettings, connect
from vecmigrate.workers.main import build_worker
from vecmigrate.workflows.migration import MigrationWorkflow
from vecmigrate.workflows.regional import RegionalMigrationWorkflow

pytestmark = pytest.mark.integration


@pytest.fixture
def ring_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KeyRingSource:
    source = KeyRingSource(f"file:{tmp_path / 'keyring.json'}")
    source.save(KeyRing.generate("k1"))
    monkeypatch.setenv(KEYRING_ENV, source.reference)
    return source


def payload_texts(history_json: str) -> str:
    """Every payload's data and metadata in a history the CLI printed, base64 decoded."""
    return "\n".join(
        base64.b64decode(value).decode(errors="replace")
        for node in json_objects(history_json)
        if "data" in node and isinstance(node.get("metadata"), dict)
        for value in (node["data"], *node["metadata"].values())
    )


def shell(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = vecmigrate(*args, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


async def test_keys_rotate_in_the_middle_of_a_running_migration(
    env: WorkflowEnvironment, sandbox: Sandbox, ring_file: KeyRingSource, tmp_path: Path
) -> None:
    vectors = sandbox.seed(6000)  # v1's artifacts are written encrypted under k1
    spec = sandbox.spec(
        shards={"by": "hash", "count": 6},
        batch_size=250,
        max_parallel_shards=1,
        max_vectors_per_second=300.0,
    )
    address = env.client.service_client.config.target_host
    client = await connect(settings=TemporalSettings(address=address))  # with the codec
    shell_env = {**os.environ}
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    with ThreadPoolExecutor(max_workers=6) as executor:
        async with build_worker(client, queue, sandbox.catalog.url, executor, build_threads=1):
            mc = MigrationClient(client, queue)
            mid = await mc.start(spec, operator="alice")
            status = await wait_for(
                mc, mid, lambda s: any(p.state == "indexed" for p in s.shards), timeout=120
            )
            assert any(p.state in ("pending", "copying") for p in status.shards)  # mid-way
            rotated = await asyncio.to_thread(
                shell, "keys", "rotate", "--catalog", sandbox.catalog.url, env=shell_env
            )
            assert "re-wrapped the data keys of" in rotated.stdout
            after = await mc.status(mid)
            assert any(p.state in ("pending", "copying") for p in after.shards)  # still running
            await mc.set_throttle(mid, None, operator="alice")
            final = await mc.result(mid, timeout=300)
            # After the cut-over, reads go through the new version's encrypted artifacts.
            router = Router(sandbox.catalog, refresh_seconds=0.1)
            try:
                found = router.search("default", "docs", vectors[:3], 5)
            finally:
                router.close()
    assert final.phase == "COMPLETED", final.error
    assert found.version == "v2"
    assert found.ids[:, 0].tolist() == [1, 2, 3]
    ring = ring_file.current()
    assert sorted(ring.keys) == ["k1", ring.active]
    new_key = ring.active

    # The ledger says which key protected what: artifacts built before the rotation by k1, the
    # rest by the new key; the rotation and the re-wraps are entries of their own.
    catalog = Catalog(sandbox.catalog.url)
    entries = catalog.entries()
    indexed = [e.data["protected_by"] for e in entries if e.kind == "shard.indexed"]
    assert "k1" in indexed
    assert new_key in indexed
    kinds = [e.kind for e in entries]
    assert "keys.rotated" in kinds
    assert "artifacts.rewrapped" in kinds
    # A re-wrap moves every artifact under the new key; the data files are not rewritten.
    await asyncio.to_thread(
        shell, "keys", "rewrap", "--catalog", sandbox.catalog.url, env=shell_env
    )
    manifests = sorted((sandbox.root / "artifacts").rglob("shard-*.json"))
    assert manifests
    assert {manifest_protection(m) for m in manifests} == {new_key}
    listed = await asyncio.to_thread(
        shell, "keys", "list", "--catalog", sandbox.catalog.url, env=shell_env
    )
    assert "k1" in listed.stdout

    # Payloads in the history were sealed under both keys; the history replays and reads with
    # the ring, not without the old key.
    history = await client.get_workflow_handle(mid).fetch_history()
    raw = history.to_json_dict()
    used = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            meta = node.get("metadata")
            if isinstance(meta, dict) and KEY_ID in meta:
                used.add(base64.b64decode(meta[KEY_ID]).decode())
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(raw)
    assert used == {"k1", new_key}
    assert "alice" not in json.dumps(raw)  # the operator's name is in sealed payloads only
    replayer = Replayer(
        workflows=[MigrationWorkflow, RegionalMigrationWorkflow],
        data_converter=data_converter(ring),
    )
    await replayer.replay_workflow(history)
    without_old = data_converter(ring.without("k1"))
    first_input = history.events[0].workflow_execution_started_event_attributes.input.payloads
    with pytest.raises(KeyRingError):
        await without_old.decode(first_input)

    # The stock CLI shows decoded payloads through the codec endpoint, with a credential only.
    credentials = Credentials()
    key, stored = new_api_key("auditors", ["*"], ["*"], ["codec"])
    credentials.api_keys[stored.id] = stored
    server = AsgiServer(codec_app(ring_file, credentials), port=0).start()
    try:

        def show(*extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [temporal_binary(), "workflow", "show", "-w", mid, "-o", "json", "--address",
                 address, "--codec-endpoint", server.url, *extra],
                capture_output=True,
                text=True,
                timeout=60,
            )  # fmt: skip

        decoded = await asyncio.to_thread(show, "--codec-auth", f"Bearer {key}")
        assert decoded.returncode == 0, decoded.stderr
        shown = payload_texts(decoded.stdout)
        assert "alice" in shown  # MigrationInput.requested_by, decoded
        assert "binary/encrypted" not in shown
        refused = await asyncio.to_thread(show)
        assert refused.returncode != 0 or "alice" not in payload_texts(refused.stdout)
    finally:
        server.stop()

    # No artifact needs k1 any more: it can be retired (its payloads in Temporal become
    # unreadable, which the command says).
    catalog_flag = ("--catalog", sandbox.catalog.url)
    retired = await asyncio.to_thread(shell, "keys", "retire", "k1", *catalog_flag, env=shell_env)
    assert "can no longer be read" in retired.stdout
    assert sorted(ring_file.current().keys) == [new_key]
