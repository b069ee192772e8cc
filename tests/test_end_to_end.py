"""A user's path through real processes: the CLI, the stock Temporal CLI, the dev server and UI.

Nothing here is in-process: the dev server, the worker and every command are separate
processes, as on a laptop. Exit codes of Python processes that used temporalio are not trusted
alone (they may abort at interpreter exit after their work is done); the results are checked
in the catalog and the stores.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import vecmigrate
from vecmigrate.catalog.catalog import Catalog
from vecmigrate.catalog.engines import dispose_engines
from vecmigrate.config import sqlite_url
from vecmigrate.control.devserver import free_port, temporal_binary
from vecmigrate.model.tasks import ShardRef
from vecmigrate.stores import BuiltinStore, Scope

pytestmark = pytest.mark.integration


def run(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)


def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def assert_fully_migrated(home: Path, collection: str, total: int) -> Catalog:
    catalog = Catalog(sqlite_url(home / "catalog.db"))
    routing = catalog.get_routing("default", collection)
    assert routing is not None
    assert routing.read_version == "v2"
    assert routing.write_versions == ["v2"]
    assert routing.read_index is not None
    assert "hnswlib_hnsw" in routing.read_index
    url = sqlite_url(home / "store.db")
    source = BuiltinStore.open(url, Scope("default", collection, "v1"))
    target = BuiltinStore.open(url, Scope("default", collection, "v2"))
    assert target.count() == source.count() == total
    whole = ShardRef(index=0, by="range", lo=-(1 << 63), hi=(1 << 63) - 1)
    assert target.checksum(whole) == source.checksum(whole)
    assert catalog.verify_ledger() == []
    return catalog


def test_demo_command(tmp_path: Path) -> None:
    """The README's first command, at a small size: it runs a whole migration by itself."""
    env = {**os.environ, "VECMIGRATE_HOME": str(tmp_path / "home"), "COLUMNS": "250"}
    env.pop("TEMPORAL_ADDRESS", None)
    proc = vecmigrate("demo", "--size", "20000", "--data", "synthetic", env=env, timeout=300)
    output = proc.stdout + proc.stderr
    assert "reads are served by v2 (the new HNSW index)" in output, output
    assert "recall@10" in output
    # The UI link names the run: the UI answers 400 for a workflow URL without one.
    link = re.search(
        r"Temporal UI: (http://127\.0\.0\.1:\d+/namespaces/default/workflows/(\S+))", output
    )
    assert link is not None, output
    assert re.fullmatch(r"[\w.-]+v1-to-v2/[0-9a-f-]{36}/history", link.group(2))
    collection = next(
        line.split("seeding")[1].split(":")[0].strip()
        for line in output.splitlines()
        if "seeding" in line
    )
    catalog = assert_fully_migrated(tmp_path / "home", collection, 20000)
    phases = [e.data["to"] for e in catalog.entries() if e.kind == "phase"]
    assert phases[-1] == "COMPLETED"
    dispose_engines()


def test_cli_and_stock_temporal_cli(tmp_path: Path) -> None:
    """dev + seed + plan + start, then the stock `temporal` CLI queries and approves."""
    home = tmp_path / "home"
    port, ui_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "VECMIGRATE_HOME": str(home), "TEMPORAL_ADDRESS": address}
    dev = subprocess.Popen(
        [sys.executable, "-m", "vecmigrate", "dev", "--port", str(port), "--ui-port", str(ui_port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    temporal = temporal_binary()
    try:
        wait_until(
            lambda: (
                run(
                    [temporal, "operator", "cluster", "health", "--address", address], env
                ).returncode
                == 0
            ),
            # Generous: on a loaded two-core machine the frontend has been seen to take over a
            # minute to report healthy after the server printed its address.
            180,
            "the dev server",
        )
        seeded = vecmigrate(
            "seed", "--collection", "books", "--size", "12000", "--data", "synthetic", env=env
        )
        assert seeded.returncode == 0, seeded.stderr
        v1 = json.loads(seeded.stdout)["version"]
        v2 = {
            **v1,
            "name": "v2",
            "index": {"kind": "hnswlib_hnsw", "m": 16, "ef_construction": 100, "ef_search": 64},
        }
        spec_file = tmp_path / "spec.yaml"
        spec_file.write_text(
            yaml.safe_dump(
                {
                    "collection": "books",
                    "source": v1,
                    "target": v2,
                    "shards": {"by": "range", "count": 3},
                    "gates": {"min_recall": 0.9, "sample_queries": 100},
                    "cutover": {"mode": "manual", "bake_seconds": 1},
                }
            )
        )
        plan = vecmigrate("plan", str(spec_file), "--json", env=env)
        assert json.loads(plan.stdout)["ok"] is True, plan.stdout + plan.stderr

        started = vecmigrate("start", str(spec_file), "--operator", "ci", env=env)
        mid = started.stdout.strip()
        assert mid == "default.books.v1-to-v2", started.stderr

        def query_status() -> dict[str, Any] | None:
            q = run(
                [
                    temporal,
                    "workflow",
                    "query",
                    "--address",
                    address,
                    "--workflow-id",
                    mid,
                    "--name",
                    "status",
                    "--output",
                    "json",
                ],
                env,
            )
            if q.returncode != 0:
                return None
            body = json.loads(q.stdout)
            result = body.get("queryResult", body)
            status = result[0] if isinstance(result, list) else result
            return status if status.get("phase") == "AWAITING_CUTOVER" else None

        status = wait_until(query_status, 120, "AWAITING_CUTOVER through `temporal workflow query`")
        assert status["blocked_reason"] == "waiting for approve_cutover"
        assert status["gates"]["passed"] is True

        signal_cmd = run(
            [
                temporal,
                "workflow",
                "signal",
                "--address",
                address,
                "--workflow-id",
                mid,
                "--name",
                "approve_cutover",
                "--input",
                '{"operator": "release-manager"}',
            ],
            env,
        )
        assert signal_cmd.returncode == 0, signal_cmd.stderr

        def completed() -> dict[str, Any] | None:
            st = vecmigrate("status", mid, "--json", env=env)
            if st.returncode != 0 or not st.stdout.strip():
                return None
            data: dict[str, Any] = json.loads(st.stdout)
            return data if data["phase"] == "COMPLETED" else None

        final = wait_until(completed, 120, "COMPLETED")
        assert final["paused"] is False
        assert [a["operator"] for a in final["operators"]] == ["release-manager"]

        catalog = assert_fully_migrated(home, "books", 12000)
        cut = [e for e in catalog.entries(mid) if e.kind == "phase" and e.data["to"] == "CUT_OVER"]
        assert cut[0].actor == "release-manager"

        # The Web UI's own API serves the workflow the UI shows.
        with urllib.request.urlopen(
            f"http://127.0.0.1:{ui_port}/api/v1/namespaces/default/workflows/{mid}", timeout=10
        ) as resp:
            described = json.loads(resp.read())
        assert described["workflowExecutionInfo"]["type"]["name"] == "MigrationWorkflow"

        # No key ring here (with one, payloads are encrypted and the stock CLI above would need
        # the codec server): the chain checks out, and the command says what it cannot vouch for.
        log = vecmigrate("log", mid, "--verify", env=env)
        assert "nothing found wrong" in log.stderr, log.stderr
        assert "no key ring (VECMIGRATE_KEYRING)" in " ".join(log.stderr.split()), log.stderr
        dispose_engines()
    finally:
        dev.send_signal(signal.SIGINT)
        try:
            dev.wait(timeout=30)
        except subprocess.TimeoutExpired:
            dev.kill()
