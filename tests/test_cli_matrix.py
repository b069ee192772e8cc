"""`plan`, `start` and `abort` through the real CLI entry point for every strategy x index kind x
backend a spec accepts, against a real Temporal dev server and real engines (SQLite, PostgreSQL
with pgvector, milvus-lite, Qdrant's engine, FAISS, hnswlib).

Each case seeds its source (the backends take turns as sources), plans and starts the migration
with ``vecmigrate``'s own ``main``, lets the worker prepare, copy and build up to the gates, then
aborts it with ``vecmigrate abort`` and checks that a signal to the finished migration says how it
ended. Any traceback fails the case.
"""

from __future__ import annotations

import asyncio
import io
import json
from contextlib import AsyncExitStack, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from tests.conftest import Sandbox, postgres_database, running_worker
from tests.test_workflow import wait_for
from vecmigrate.catalog.catalog import Catalog
from vecmigrate.catalog.engines import dispose_engines
from vecmigrate.config import sqlite_url
from vecmigrate.control.cli import main
from vecmigrate.control.client import MigrationClient
from vecmigrate.data.datasets import clustered
from vecmigrate.data.seed import seed_collection, sequential_ids
from vecmigrate.model.lifecycle import LIFECYCLE, STRATEGIES, Phase
from vecmigrate.model.spec import (
    ARTIFACT_INDEX_KINDS,
    INDEX_KINDS,
    STORE_KINDS,
    VersionSpec,
)
from vecmigrate.stores.capabilities import SERVER_ONLY_KINDS
from vecmigrate.stores.milvus import close_clients
from vecmigrate.stores.qdrant import close_clients as close_qdrant

# A case takes seconds (the first also starts the servers): one that waits longer is stuck.
pytestmark = pytest.mark.timeout(180)

DIM = 8
RECORDS = 400

# Small parameters every index kind can train on 400 vectors of 8 dimensions.
INDEX_PARAMS: dict[str, dict[str, Any]] = {
    "faiss_flat": {},
    "faiss_ivf_flat": {"nlist": 8, "nprobe": 4},
    "faiss_ivf_pq": {"nlist": 8, "nprobe": 4, "m": 4, "nbits": 4},
    "faiss_hnsw": {"m": 8, "ef_construction": 40, "ef_search": 32},
    "hnswlib_hnsw": {"m": 8, "ef_construction": 40, "ef_search": 32},
    "pgvector_hnsw": {"m": 8, "ef_construction": 32, "ef_search": 32},
    "pgvector_ivfflat": {"lists": 8, "probes": 4},
    "milvus_flat": {},
    "milvus_ivf_flat": {"nlist": 8, "nprobe": 4},
    "qdrant_hnsw": {"m": 8, "ef_construct": 32, "ef": 32},
}
# What each backend's source is indexed with: its own index where it has one.
SOURCE_INDEX = {
    "builtin": "faiss_flat",
    "pgvector": "pgvector_hnsw",
    "milvus": "milvus_flat",
    "qdrant": "qdrant_hnsw",
}
# Every (target store, index kind) a spec accepts: artifact indexes on any store, a native index
# on its own store only.
# (Less the kinds only a server builds: the tests' engines are embedded, and plan refuses those
# kinds on them, as tests/test_store_contract.py shows.)
TARGETS = [
    (store, kind)
    for store in STORE_KINDS
    for kind in INDEX_KINDS
    if (kind in ARTIFACT_INDEX_KINDS or kind.startswith(store + "_"))
    and kind not in SERVER_ONLY_KINDS
]
CASES = [
    pytest.param(
        strategy,
        STORE_KINDS[(i + s) % len(STORE_KINDS)],
        store,
        kind,
        id=f"{strategy}-{STORE_KINDS[(i + s) % len(STORE_KINDS)]}-to-{store}-{kind}",
    )
    for s, strategy in enumerate(STRATEGIES)
    for i, (store, kind) in enumerate(TARGETS)
]


def test_the_matrix_covers_every_strategy_index_kind_and_backend() -> None:
    assert set(INDEX_PARAMS) == set(INDEX_KINDS) - SERVER_ONLY_KINDS
    assert {c.values[0] for c in CASES} == set(STRATEGIES)
    assert {c.values[3] for c in CASES} == set(INDEX_KINDS) - SERVER_ONLY_KINDS
    assert {c.values[2] for c in CASES} == set(STORE_KINDS)
    for strategy in STRATEGIES:
        sources = {c.values[1] for c in CASES if c.values[0] == strategy}
        assert sources == set(STORE_KINDS), strategy


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``vecmigrate ARGV`` through its entry point, in this process: exit code, stdout, stderr.

    An exception other than the command's own exit (a traceback) propagates and fails the test.
    """
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(list(argv))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def said(expected: str, text: str) -> bool:
    """Whether ``text`` says ``expected``, however the console wrapped it."""
    return "".join(expected.split()) in "".join(text.split())


@dataclass
class Shared:
    """What every case of the matrix shares: one catalog, one store of each kind, one worker."""

    root: Path
    catalog: Catalog
    database: str
    queue: str
    client: Client

    @property
    def address(self) -> str:
        return str(self.client.service_client.config.target_host)

    def store(self, kind: str) -> dict[str, Any]:
        if kind == "pgvector":
            return {"kind": "pgvector", "url": self.database}
        if kind == "milvus":
            return {"kind": "milvus", "uri": str(self.root / "milvus.db")}
        if kind == "qdrant":
            return {"kind": "qdrant", "path": str(self.root / "qdrant")}
        return {"kind": "builtin", "url": sqlite_url(self.root / "store.db")}

    def version(self, name: str, store: str, kind: str) -> dict[str, Any]:
        return VersionSpec.model_validate(
            {
                "name": name,
                "store": {**self.store(store), "artifacts": str(self.root / "artifacts")},
                "embedding": {"model_id": "m", "dimension": DIM, "metric": "l2"},
                "index": {"kind": kind, **INDEX_PARAMS[kind]},
            }
        ).model_dump(mode="json")


@pytest.fixture(scope="module")
async def shared(
    env: WorkflowEnvironment,
    postgres: Any,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Shared:
    """One worker for every case (each case its own collection and migration id): starting one
    per case cost more than most cases.

    Not an async generator fixture: one was finalized by the garbage collector in the middle of a
    case (its teardown closed the Milvus clients under a running call, which then never
    returned). The worker's context is held here and closed by an explicit finalizer.
    """
    root = tmp_path_factory.mktemp("matrix")
    catalog = Catalog(sqlite_url(root / "catalog.db"))
    stack = AsyncExitStack()
    queue = await stack.enter_async_context(running_worker(env.client, Sandbox(root, catalog)))
    loop = asyncio.get_running_loop()

    def finish() -> None:
        # Finalizers run between tests, with the session's loop idle.
        loop.run_until_complete(stack.aclose())
        close_clients()
        close_qdrant()
        dispose_engines()

    request.addfinalizer(finish)  # noqa: PT021 (see the docstring)
    return Shared(root, catalog, postgres_database(postgres), queue, env.client)


@pytest.mark.parametrize(("strategy", "source", "store", "kind"), CASES)
async def test_plan_start_and_abort_through_the_cli(
    shared: Shared, strategy: str, source: str, store: str, kind: str
) -> None:
    collection = f"{strategy}-{source}-{store}-{kind}".replace("_", "-")
    src = shared.version("v1", source, SOURCE_INDEX[source])
    seed_collection(
        shared.catalog,
        "default",
        collection,
        VersionSpec.model_validate(src),
        sequential_ids(RECORDS),
        clustered(RECORDS, DIM, clusters=8, seed=3),
        shards=1,
    )
    spec = {
        "id": f"matrix-{collection}",
        "collection": collection,
        "strategy": strategy,
        "source": src,
        "target": shared.version("v2", store, kind),
        "shards": {"count": 2},
        "batch_size": 100,
        # No latency gate: the backends answer differently fast (in-process, over a socket),
        # and this matrix is about the commands, not the new engine's p99.
        "gates": {
            "sample_queries": 20,
            "latency_queries": 5,
            "min_recall": 0.5,
            "max_p99_ratio": None,
        },
        "cutover": {"mode": "manual", "bake_seconds": 1},
    }
    path = shared.root / f"{collection}.yaml"
    path.write_text(yaml.safe_dump(spec))
    common = ["--catalog", shared.catalog.url, "--address", shared.address]

    code, out, err = await asyncio.to_thread(run_cli, "plan", str(path), "--json", *common)
    assert code == 0, err + out
    plan = json.loads(out)
    assert plan["ok"], plan["problems"]
    assert [p for p, _ in plan["steps"]] == list(LIFECYCLE[strategy].phases)
    assert sum(plan["shards"].values()) == RECORDS
    assert plan["estimated_seconds"] > 0
    assert "Traceback" not in err

    code, out, err = await asyncio.to_thread(
        run_cli, "start", str(path), "--task-queue", shared.queue, "--operator", "ci", *common
    )
    assert code == 0, err + out
    mid = out.strip()
    assert mid == spec["id"]
    mc = MigrationClient(shared.client, shared.queue)
    if strategy == "blue_green":
        # Prepared, copied and indexed: the gates run on what the target store built. The copy
        # and the build are the same for every strategy; blue-green takes every target there.
        gated = {Phase.VALIDATING, Phase.AWAITING_CUTOVER, Phase.CUT_OVER}
        st = await wait_for(
            mc, mid, lambda s: s.phase in gated or s.paused or bool(s.error), timeout=120.0
        )
        assert st.phase in gated, (st.phase, st.pause_reason, st.error)
        assert st.index_version is not None
        assert kind in st.index_version
    else:
        # Prepared: the target registered and created, the strategy's routing set (dual-write,
        # writes paused), the copy under way.
        st = await wait_for(
            mc,
            mid,
            lambda s: s.phase not in (Phase.PLANNED, Phase.PREPARING) or s.paused,
            timeout=120.0,
        )
        assert not st.paused, (st.phase, st.pause_reason, st.error)
    code, out, err = await asyncio.to_thread(
        run_cli, "abort", mid, "--reason", "matrix", "--operator", "ci", *common
    )
    assert code == 0, err + out
    final = await mc.result(mid, timeout=120)
    assert final.phase == Phase.ABORTED, (final.phase, final.error)
    code, out, err = await asyncio.to_thread(run_cli, "pause", mid, *common)
    assert code == 2
    assert said(f"migration {mid} has finished at", err), err
    assert said("aborted by ci (matrix) where it stood", err), err
    assert said("`vecmigrate pause` does nothing now", err), err
    assert "Traceback" not in err
    # What the message says can still be done: the same migration plans again.
    code, out, err = await asyncio.to_thread(run_cli, "plan", str(path), "--json", *common)
    assert code == 0, err + out
    assert json.loads(out)["ok"], json.loads(out)["problems"]
