"""Chaos run: a real migration while its workers are killed with SIGKILL and Temporal restarts.

Everything is real: a Temporal dev server persisted to a file, worker processes polling one task
queue, the SQLite catalog and built-in store. While the migration runs, a random worker is killed
with ``kill -9`` at random moments (and a new one started in its place), and once the dev server
itself is stopped and started again on the same database. Then the result is checked from the
data, not from the workflow's word: the target holds exactly the source's ids and vector bytes,
no id twice, and each retried copy re-copied at most one batch (the shard journal counts every
vector handed to the target over all attempts).

``python bench/chaos.py --help`` runs it at any size; ``tests/test_chaos.py`` runs it small.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from sqlalchemy import func, select

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.catalog.engines import engine_for
from vecmigrate.catalog.journal import Journal
from vecmigrate.config import sqlite_url
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.devserver import DevServer, free_port
from vecmigrate.data.backfill import open_source, open_target, shard_plan
from vecmigrate.data.datasets import clustered
from vecmigrate.data.seed import seed_collection, sequential_ids
from vecmigrate.model.lifecycle import TERMINAL, Phase
from vecmigrate.model.spec import BuiltinStoreRef, MigrationSpec, VersionSpec, parse_spec
from vecmigrate.model.status import MigrationStatus
from vecmigrate.stores import WHOLE
from vecmigrate.stores.builtin import namespaces, vectors
from vecmigrate.workers.connection import connect


@dataclass
class ChaosReport:
    """What a chaos run did and what it found."""

    vectors: int
    shards: int
    batch_size: int
    kills: int = 0
    kill_phases: list[str] = field(default_factory=list)
    server_restarts: int = 0
    retried_copies: int = 0
    streamed_checks: int = 0  # shard checks taken from the figures the copy streamed
    recopied: int = 0
    max_recopied_per_retry: int = 0
    phase: str = ""
    runs: int = 0
    checksum_source: str = ""
    checksum_target: str = ""
    target_rows: int = 0
    distinct_ids: int = 0
    ids_match: bool = False
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def builtin_version(
    name: str, store: BuiltinStoreRef, dim: int, index: dict[str, Any], model: str = "synthetic"
) -> VersionSpec:
    """A version on the built-in store with an L2 embedding of ``dim`` dimensions."""
    return VersionSpec.model_validate(
        {
            "name": name,
            "store": store.model_dump(),
            "embedding": {"model_id": model, "dimension": dim, "metric": "l2"},
            "index": index,
        }
    )


def worker_command(
    address: str,
    queue: str,
    catalog: str,
    *,
    region: str | None = None,
    concurrency: int | None = None,
) -> list[str]:
    """The command line of a ``vecmigrate worker`` process polling ``queue`` with ``catalog``:
    only ``region``'s work when one is given, ``concurrency`` activity slots when given (else
    ``$VECMIGRATE_CONCURRENCY`` or the worker's default)."""
    return [
        sys.executable,
        "-m",
        "vecmigrate.workers.main",
        "--address",
        address,
        *([] if region is None else ["--region", region]),
        "--task-queue",
        queue,
        "--catalog",
        catalog,
        *([] if concurrency is None else ["--concurrency", str(concurrency)]),
    ]


class WorkerPool:
    """Worker processes on one task queue; any of them can be killed and replaced.

    With ``region``, they are that region's workers (``--region``: they run only its work, and
    refuse any other region's); their logs are ``worker-REGION-N.log`` under ``home``, else
    ``worker-N.log``.
    """

    def __init__(
        self,
        home: Path,
        address: str,
        queue: str,
        catalog: str,
        count: int,
        env: dict[str, str] | None = None,
        region: str | None = None,
    ) -> None:
        self.home, self.address, self.queue, self.catalog = home, address, queue, catalog
        self.region = region
        self.env = {"VECMIGRATE_CONCURRENCY": "2", "OMP_NUM_THREADS": "1", **(env or {})}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.started = 0
        for _ in range(count):
            self.procs.append(self._spawn())

    def wait_polling(self, timeout: float = 120.0) -> None:
        """Wait until every worker of the pool says it polls (its log's first INFO line)."""
        deadline = time.monotonic() + timeout
        logs = [self._log(n) for n in range(1, self.started + 1)]
        while not all(p.exists() and b"worker polling" in p.read_bytes() for p in logs):
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers not polling after {timeout:.0f} s: see {self.home}")
            time.sleep(0.2)

    def cpu_seconds(self) -> float:
        """CPU seconds (user and system) the running workers have spent so far."""
        total = 0.0
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(proc.pid).cpu_times()
                total += t.user + t.system
        return total

    def _log(self, n: int) -> Path:
        name = "worker" if self.region is None else f"worker-{self.region}"
        return self.home / f"{name}-{n}.log"

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.started += 1
        log = open(self._log(self.started), "wb")  # noqa: SIM115
        return subprocess.Popen(
            worker_command(self.address, self.queue, self.catalog, region=self.region),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
        )

    def kill_one(self, rng: random.Random) -> None:
        victim = rng.randrange(len(self.procs))
        self.procs[victim].kill()  # SIGKILL: no cleanup, no goodbye to the server
        self.procs[victim].wait()
        self.procs[victim] = self._spawn()

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _target_rows(spec: MigrationSpec) -> tuple[int, int]:
    """Rows and distinct ids of the target version, counted in SQL."""
    assert isinstance(spec.target.store, BuiltinStoreRef)
    assert spec.target.store.url is not None
    engine = engine_for(spec.target.store.url)
    with engine.connect() as conn:
        ns = conn.execute(
            select(namespaces.c.ns).where(
                (namespaces.c.tenant == spec.tenant)
                & (namespaces.c.collection == spec.collection)
                & (namespaces.c.version == spec.target.name)
            )
        ).scalar_one()
        rows, distinct = conn.execute(
            select(func.count(), func.count(vectors.c.id.distinct())).where(vectors.c.ns == ns)
        ).one()
    return int(rows), int(distinct)


def _all_ids(store: Any) -> np.ndarray:
    parts = [page.ids for page in store.iter_shard(WHOLE, 100_000)]
    return np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)


async def _status(mc: MigrationClient, mid: str) -> MigrationStatus | None:
    try:
        return await asyncio.wait_for(mc.status(mid), timeout=10)
    except Exception:
        return None


async def chaos(
    home: Path,
    *,
    n: int = 40_000,
    dim: int = 32,
    shards: int = 8,
    batch_size: int = 1_000,
    parallel: int = 2,
    workers: int = 2,
    kills: int = 5,
    restart_server: bool = True,
    throttle: float | None = 8_000.0,
    heartbeat_seconds: float = 3.0,
    seed: int = 0,
    timeout: float = 900.0,
    kill_gap: tuple[float, float] = (0.3, 1.5),
    log: Callable[[str], None] = print,
) -> ChaosReport:
    """Run one chaos migration in ``home`` (a fresh directory) and check its result.

    A worker is killed every ``kill_gap`` seconds (uniformly at random between the two).
    """
    home.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    report = ChaosReport(vectors=n, shards=shards, batch_size=batch_size)
    catalog_url = sqlite_url(home / "catalog.db")
    catalog = Catalog(catalog_url)
    store = BuiltinStoreRef(url=sqlite_url(home / "store.db"), artifacts=str(home / "artifacts"))
    log(f"seeding {n:,} x {dim} clustered vectors")
    v1 = builtin_version("v1", store, dim, {"kind": "faiss_flat"})
    seed_collection(
        catalog,
        "default",
        "chaos",
        v1,
        sequential_ids(n),
        clustered(n, dim, seed=seed),
        shards=2,
    )
    spec = parse_spec(
        {
            "id": f"chaos-{seed}",
            "collection": "chaos",
            "source": v1.model_dump(mode="json"),
            "target": builtin_version(
                "v2", store, dim, {"kind": "hnswlib_hnsw", "m": 8, "ef_construction": 40}
            ).model_dump(mode="json"),
            "shards": {"by": "hash", "count": shards},
            "batch_size": batch_size,
            "max_parallel_shards": parallel,
            "max_vectors_per_second": throttle,
            "heartbeat_seconds": heartbeat_seconds,
            "gates": {"min_recall": 0.5, "sample_queries": 200},
            "cutover": {"mode": "automatic", "bake_seconds": 1},
        }
    )
    server = DevServer(home / "temporal.db", port=free_port(), ui_port=free_port()).start()
    queue = "chaos"
    pool = WorkerPool(home, server.address, queue, catalog_url, workers)
    began = time.monotonic()
    try:
        client = await connect(server.address)
        mc = MigrationClient(client, queue)
        mid = await mc.start(spec, operator="chaos")
        log(f"migration {mid} started on {server.address} with {workers} worker processes")
        restart_at = kills // 2 if restart_server else -1
        final: MigrationStatus | None = None
        while time.monotonic() - began < timeout:
            await asyncio.sleep(rng.uniform(*kill_gap) if report.kills < kills else 1.0)
            st = await _status(mc, mid)
            if st is not None and st.phase in TERMINAL:
                final = st
                break
            if report.kills < kills:
                pool.kill_one(rng)
                report.kills += 1
                phase = st.phase if st is not None else "unknown"
                report.kill_phases.append(str(phase))
                log(f"kill -9 #{report.kills} during {phase}")
                if report.kills == restart_at + 1 and report.server_restarts == 0:
                    server.stop()
                    await asyncio.sleep(rng.uniform(0.5, 2.0))
                    server.start()
                    report.server_restarts += 1
                    log("Temporal dev server restarted on its database")
        if final is None:
            final = await mc.result(mid, timeout=max(1.0, timeout - (time.monotonic() - began)))
        report.phase = str(final.phase)
        report.runs = final.runs
    finally:
        pool.stop()
        server.stop()
    report.seconds = round(time.monotonic() - began, 1)

    source, target = open_source(spec), open_target(spec)
    report.checksum_source = source.checksum(WHOLE)
    report.checksum_target = target.checksum(WHOLE)
    report.target_rows, report.distinct_ids = _target_rows(spec)
    report.ids_match = bool(np.array_equal(_all_ids(source), _all_ids(target)))
    states = Journal(catalog).copy_states(spec.migration_id).values()
    report.retried_copies = sum(max(0, s.attempts - 1) for s in states)
    report.recopied = sum(s.recopied for s in states)
    report.max_recopied_per_retry = max(
        (s.recopied // max(1, s.attempts - 1) for s in states if s.recopied), default=0
    )
    if report.phase != Phase.COMPLETED:
        report.problems.append(f"migration ended in {report.phase}, not COMPLETED")
    if report.checksum_source != report.checksum_target:
        report.problems.append("target checksum differs from the source")
    if not report.ids_match:
        report.problems.append("target ids differ from the source ids")
    if report.target_rows != n or report.distinct_ids != n:
        report.problems.append(
            f"target holds {report.target_rows} rows, {report.distinct_ids} distinct, not {n}"
        )
    for s in states:
        if s.recopied > batch_size * max(0, s.attempts - 1):
            report.problems.append(
                f"a shard re-copied {s.recopied} vectors over {s.attempts} attempts: "
                f"more than one batch ({batch_size}) per retry"
            )
    if report.kills < kills:
        report.problems.append(f"only {report.kills} kills happened before the end")
    report.streamed_checks, problems = streamed_problems(catalog, spec)
    report.problems.extend(problems)
    return report


def run_chaos(home: Path, **options: Any) -> ChaosReport:
    """:func:`chaos` for synchronous callers (the test, the benchmark): the same options, in an
    event loop of its own."""
    return asyncio.run(chaos(home, **options))


def streamed_problems(catalog: Catalog, spec: MigrationSpec) -> tuple[int, list[str]]:
    """The figures each shard's copy streamed through the kills, against a full read of both
    versions now: they must be equal (a batch counted twice or missed would show here). Also
    how many shard checks the gate took from them."""
    from vecmigrate.model.gates import ShardCheck
    from vecmigrate.validation.run import check_shard
    from vecmigrate.validation.stream import stored_queries, usable

    journal = Journal(catalog)
    source, target = open_source(spec), open_target(spec)
    checks = journal.outcomes(spec.migration_id, "check_result")
    problems, streamed = [], 0
    for shard in shard_plan(spec, source):
        used = ShardCheck.model_validate(checks[shard.index]) if shard.index in checks else None
        if used is not None and used.basis == "streamed":
            streamed += 1
        found, why = usable(journal, spec, shard, stored_queries(journal, spec), None)
        if found is None:
            problems.append(f"shard {shard.index}: no streamed figures ({why})")
            continue
        read = check_shard(spec, source, target, shard)
        for side in ("source", "target"):
            a = getattr(found.check(), side).model_dump(exclude={"norm_mean"})
            b = getattr(read, side).model_dump(exclude={"norm_mean"})
            if a != b:
                problems.append(f"shard {shard.index}: streamed {side} profile {a} != read {b}")
    return streamed, problems
