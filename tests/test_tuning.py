"""Search-parameter tuning in the canary window: candidates tried on mirrored live reads during
SHADOWING, judged against the exact answer over the target's store, the cheapest meeting the
gates served after the cut-over and recorded in the ledger; specs naming a parameter the index
does not take are refused before anything runs.

The migrations run on the real dev server with a real router serving reads throughout.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, NamedTuple

import faiss
import numpy as np
import pytest
from rich.console import Console
from temporalio.client import Client

from tests.conftest import Sandbox, postgres_database, running_worker
from tests.helpers import in_background
from vecmigrate.catalog.engines import dispose_engines
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.htmlreport import ReportData, render
from vecmigrate.control.report import status_tables
from vecmigrate.errors import SpecError
from vecmigrate.indexes.build import NativeIndex
from vecmigrate.indexes.live import LiveIndex
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.spec import (
    MigrationSpec,
    PgvectorIvfflat,
    TuningPolicy,
    canonical,
    parse_spec,
)
from vecmigrate.model.status import MigrationStatus
from vecmigrate.model.tuning import CandidateFigures, TuningResult, choose
from vecmigrate.serving.router import Router
from vecmigrate.validation.tuning import TuningLog, measure

DIM = 16


def hard_vectors(n: int = 3000) -> np.ndarray:
    """Gaussian vectors (no clusters to fall into): a sparse HNSW graph (M 4) searched with a
    small ef misses a good share of the true neighbours (recall@10 about 0.7 at ef 8, 0.76 at
    16, 0.93 at 64, 0.98 at 200)."""
    return np.random.default_rng(1).standard_normal((n, DIM)).astype(np.float32)


def live_queries(vectors: np.ndarray, n: int = 400) -> np.ndarray:
    rng = np.random.default_rng(2)
    picked = vectors[rng.integers(0, len(vectors), n)]
    return (picked + 0.3 * rng.standard_normal(picked.shape)).astype(np.float32)


@contextmanager
def serving(router: Router, queries: np.ndarray, rate: float = 150.0) -> Iterator[list[str]]:
    """Searches through the router, one query at a time, until the block ends; yields the
    versions that answered."""
    answered: list[str] = []
    errors: list[BaseException] = []

    def loop(stop: threading.Event) -> None:
        i = 0
        while not stop.is_set():
            try:
                found = router.search("default", "docs", queries[i % len(queries)], k=10)
                answered.append(found.version)
            except BaseException as exc:
                errors.append(exc)
                return
            i += 1
            time.sleep(1 / rate)

    with in_background(loop, "reads"):
        yield answered
    assert errors == [], errors[:3]


def tuning_spec(
    sandbox: Sandbox,
    target: dict[str, Any],
    tuning: dict[str, Any],
    target_store: dict[str, Any] | None = None,
) -> MigrationSpec:
    return sandbox.spec(
        strategy="online",
        shards={"count": 2},
        source=sandbox.version("v1", {"kind": "faiss_flat"}).model_dump(mode="json"),
        target=sandbox.version("v2", target, store=target_store).model_dump(mode="json"),
        gates={"min_recall": 0.8, "max_recall_drop": None, "sample_queries": 50},
        online={
            "settle_seconds": 0.5,
            "shadow": {
                "percent": 100,
                "seconds": 4,
                "min_samples": 20,
                "min_overlap": 0.3,
                "max_p99_ratio": None,
            },
            "ramp": {"steps": [50], "step_seconds": 0.5},
            "tuning": tuning,
        },
    )


class Tuned(NamedTuple):
    vectors: np.ndarray
    spec: MigrationSpec
    final: MigrationStatus
    tuning: TuningResult
    router: Router


@asynccontextmanager
async def tuned_migration(
    client: Client,
    sandbox: Sandbox,
    target: dict[str, Any],
    tuning: dict[str, Any],
    target_store: dict[str, Any] | None = None,
) -> AsyncIterator[Tuned]:
    """Seed hard vectors under a flat index, migrate them online to ``target`` tuning
    ``tuning`` with reads served by a router throughout, and yield the completed migration
    with its tuning result and the router (closed when the block ends)."""
    vectors = sandbox.seed(vectors=hard_vectors(), index={"kind": "faiss_flat"})
    spec = tuning_spec(sandbox, target, tuning, target_store)
    router = Router(sandbox.catalog, refresh_seconds=0.2)
    try:
        with serving(router, live_queries(vectors)) as answered:
            async with running_worker(client, sandbox) as queue:
                mc = MigrationClient(client, queue)
                await mc.start(spec, operator="alice")
                final = await mc.result(spec.migration_id, timeout=180)
            time.sleep(0.5)  # reads after the cut-over
        assert answered[-1] == "v2"
        assert final.phase == Phase.COMPLETED, final.error
        assert final.tuning is not None
        yield Tuned(vectors, spec, final, final.tuning, router)
    finally:
        router.close()


def frontier(status: MigrationStatus) -> dict[int, tuple[float, bool]]:
    """Each candidate's recall and verdict (printed: the measured frontier)."""
    assert status.tuning is not None
    t = status.tuning
    for c in t.candidates:
        print(
            f"{t.parameter}={c.value}: recall@{t.k} {c.recall} {c.recall_interval} "
            f"p50 {c.p50_ms} ms p99 {c.p99_ms} ms over {c.queries} queries: "
            f"{'pass' if c.passed else 'fail'}"
        )
    print(f"chosen: {t.chosen} ({t.reason})")
    return {c.value: (c.recall or 0.0, c.passed) for c in status.tuning.candidates}


async def test_hnswlib_tuning_picks_the_smallest_ef_meeting_recall_and_serves_it(
    client: Client, sandbox: Sandbox
) -> None:
    async with tuned_migration(
        client,
        sandbox,
        {"kind": "hnswlib_hnsw", "m": 4, "ef_construction": 16, "ef_search": 200},
        {"parameter": "ef_search", "candidates": [8, 16, 64, 200], "min_recall": 0.85},
    ) as (vectors, spec, final, tuned, router):
        measured = frontier(final)
        # A low ef really misses: the chooser passed over candidates that failed the gate.
        assert not measured[8][1], measured
        assert not measured[16][1], measured
        assert measured[8][0] < measured[64][0], measured
        assert tuned.chosen == min(v for v, (_, ok) in measured.items() if ok)
        assert tuned.chosen in (64, 200)
        assert tuned.queries >= 50
        for fig in tuned.candidates:
            assert fig.recall_interval is not None
            assert fig.p99_ms is not None
        # The ledger has the choice; the vectors of the queries are gone from the catalog.
        entries = [
            e for e in sandbox.catalog.entries(spec.migration_id) if e.kind == "tuning.chosen"
        ]
        assert len(entries) == 1
        assert entries[0].data["chosen"] == tuned.chosen
        assert "query" not in str(entries[0].data["candidates"])
        # The frontier in `vecmigrate status` and in the HTML report's plot.
        console = Console(width=200, record=True)
        console.print(status_tables(final))
        shown = console.export_text()
        assert "tuning ef_search (recall@10 >= 0.85; chosen: ef_search=" in shown
        assert f"{tuned.chosen} (serves)" in shown
        page = render(ReportData(spec.migration_id, sandbox.catalog.entries(spec.migration_id)))
        plot = re.search(r"<figure data-plot='tuning'>(.*?)</figure>", page, re.S)
        assert plot is not None
        assert "<svg" in plot.group(1)
        assert "smallest candidate meeting the gates" in plot.group(1)
        log = TuningLog(sandbox.catalog)
        index_id = tuned.index_id
        assert index_id is not None
        assert log.tuned(index_id) == {"ef_search": tuned.chosen}
        # Reads after the cut-over: served from the target's index with the chosen ef, by the
        # router that served throughout and by a router started afresh.
        routing = sandbox.catalog.get_routing("default", "docs")
        assert routing is not None
        assert routing.read_index == index_id
        for r in (router, Router(sandbox.catalog, refresh_seconds=0.2)):
            r.search("default", "docs", vectors[0], k=10)
            searcher = r.searcher(index_id)
            assert isinstance(searcher, LiveIndex)
            assert searcher.search_params(("ef_search",)) == {"ef_search": tuned.chosen}
            assert all(s.native.ef == tuned.chosen for s in searcher.shards)
            if r is not router:
                r.close()


async def test_faiss_ivf_tuning_picks_nprobe(client: Client, sandbox: Sandbox) -> None:
    async with tuned_migration(
        client,
        sandbox,
        {"kind": "faiss_ivf_flat", "nlist": 32, "nprobe": 32},
        {"parameter": "nprobe", "candidates": [1, 2, 8, 32], "min_recall": 0.8},
    ) as (_, _, final, tuned, router):
        measured = frontier(final)
        assert not measured[1][1], measured  # one list of 32 misses most neighbours
        assert measured[32][0] == 1.0  # every list: the exact answer
        assert tuned.chosen == min(v for v, (_, ok) in measured.items() if ok)
        assert tuned.chosen in (2, 8, 32)
        assert tuned.chosen != 1
        index_id = tuned.index_id
        assert index_id is not None
        searcher = router.searcher(index_id)
        assert isinstance(searcher, LiveIndex)
        assert searcher.search_params(("nprobe",)) == {"nprobe": tuned.chosen}
        assert all(
            faiss.extract_index_ivf(s.native).nprobe == tuned.chosen for s in searcher.shards
        )


async def test_no_candidate_meeting_the_gates_keeps_the_index_own_value(
    client: Client, sandbox: Sandbox
) -> None:
    # The migration goes on with the index's own ef, which the shadow and ramp gates judged.
    async with tuned_migration(
        client,
        sandbox,
        {"kind": "hnswlib_hnsw", "m": 4, "ef_construction": 16, "ef_search": 100},
        {"parameter": "ef_search", "candidates": [8, 16], "min_recall": 0.95},
    ) as (_, spec, _, tuned, router):
        assert tuned.chosen is None
        assert tuned.serving == 100
        assert "no candidate met the gates" in tuned.reason
        assert "ef_search=100 keeps serving" in tuned.reason
        assert all(not c.passed and c.failures for c in tuned.candidates)
        assert tuned.index_id is not None
        assert TuningLog(sandbox.catalog).tuned(tuned.index_id) is None
        entries = [
            e for e in sandbox.catalog.entries(spec.migration_id) if e.kind == "tuning.chosen"
        ]
        assert [e.data["chosen"] for e in entries] == [None]
        searcher = router.searcher(tuned.index_id)
        assert isinstance(searcher, LiveIndex)
        assert searcher.search_params(("ef_search",)) == {"ef_search": 100}


async def test_pgvector_ivfflat_tuning_picks_probes(
    client: Client, sandbox: Sandbox, postgres: Any
) -> None:
    store = {"kind": "pgvector", "url": postgres_database(postgres)}
    try:
        async with tuned_migration(
            client,
            sandbox,
            {"kind": "pgvector_ivfflat", "lists": 32, "probes": 32},
            {"parameter": "probes", "candidates": [1, 2, 8, 32], "min_recall": 0.8},
            target_store=store,
        ) as (vectors, _, final, tuned, router):
            measured = frontier(final)
            assert not measured[1][1], measured  # one list of 32 misses most neighbours
            assert tuned.chosen == min(v for v, (_, ok) in measured.items() if ok)
            assert tuned.chosen in (2, 8, 32)
            index_id = tuned.index_id
            assert index_id is not None
            # pgvector's own index, searched with the chosen ivfflat.probes after the cut-over.
            searcher = router.searcher(index_id)
            assert isinstance(searcher, NativeIndex)
            assert isinstance(searcher.spec, PgvectorIvfflat)
            assert searcher.spec.probes == tuned.chosen
            served = router.search("default", "docs", vectors[:5], 1)
            assert served.version == "v2"
            assert served.ids[:, 0].tolist() == [1, 2, 3, 4, 5]
    finally:
        dispose_engines()


# -- refused before anything runs ----------------------------------------------------------------


def _spec(sandbox: Sandbox, target: dict[str, Any], tuning: dict[str, Any], **more: Any) -> Any:
    data = {
        "strategy": "online",
        "target": sandbox.version("v2", target).model_dump(mode="json"),
        "online": {"tuning": tuning},
        **more,
    }
    return sandbox.spec(**data)


@pytest.mark.parametrize(
    ("target", "tuning", "problem"),
    [
        (
            {"kind": "hnswlib_hnsw"},
            {"parameter": "nprobe", "candidates": [4, 8]},
            "online.tuning.parameter nprobe is not a search parameter of target.index.kind "
            "hnswlib_hnsw; its search parameter is ef_search",
        ),
        (
            {"kind": "faiss_ivf_flat", "nlist": 16},
            {"parameter": "ef_search", "candidates": [4, 8]},
            "its search parameter is nprobe",
        ),
        (
            {"kind": "faiss_flat"},
            {"parameter": "nprobe", "candidates": [4]},
            "faiss_flat has no search parameter to tune",
        ),
        (
            {"kind": "faiss_ivf_flat", "nlist": 16},
            {"parameter": "nprobe", "candidates": [4, 64]},
            "candidate nprobe=64 is not valid for faiss_ivf_flat: nprobe (64) cannot exceed "
            "nlist (16)",
        ),
        (
            {"kind": "hnswlib_hnsw"},
            {"parameter": "ef_search", "candidates": [8, 8]},
            "tuning candidates must be distinct",
        ),
        (
            {"kind": "hnswlib_hnsw"},
            {"parameter": "ef_search", "candidates": [0, 8]},
            "tuning candidates must be at least 1",
        ),
    ],
)
def test_a_candidate_the_index_does_not_take_is_refused(
    sandbox: Sandbox, target: dict[str, Any], tuning: dict[str, Any], problem: str
) -> None:
    with pytest.raises(SpecError) as refused:
        _spec(sandbox, target, tuning)
    assert problem in str(refused.value)
    assert sandbox.catalog.get_routing("default", "docs") is None  # nothing ran


def test_tuning_needs_a_shadowing_phase_and_keeps_old_hashes(sandbox: Sandbox) -> None:
    with pytest.raises(SpecError) as refused:
        _spec(
            sandbox,
            {"kind": "hnswlib_hnsw"},
            {"parameter": "ef_search", "candidates": [8]},
            strategy="blue_green",
        )
    assert "strategy blue_green does not have" in str(refused.value)
    native = {
        "pgvector_hnsw": "ef_search",
        "pgvector_ivfflat": "probes",
        "qdrant_hnsw": "ef",
        "milvus_ivf_flat": "nprobe",
    }
    for kind, parameter in native.items():
        store = {"qdrant_hnsw": "qdrant", "milvus_ivf_flat": "milvus"}.get(kind, "pgvector")
        ref: dict[str, Any] = {
            "pgvector": {"kind": "pgvector", "url": "postgresql://db/x"},
            "qdrant": {"kind": "qdrant", "path": "/tmp/q"},
            "milvus": {"kind": "milvus", "uri": "/tmp/m.db"},
        }[store]
        spec = parse_spec(
            {
                "collection": "docs",
                "strategy": "online",
                "source": sandbox.version("v1", {"kind": "faiss_flat"}).model_dump(mode="json"),
                "target": {
                    **sandbox.version("v2", {"kind": kind}).model_dump(mode="json"),
                    "store": ref,
                },
                "online": {"tuning": {"parameter": parameter, "candidates": [4, 8]}},
            }
        )
        assert spec.online.tuning is not None
    # A spec without tuning hashes as before the field existed; one with it, differently.
    plain = sandbox.spec()
    assert '"tuning":' not in canonical(plain)
    tuned = _spec(sandbox, {"kind": "hnswlib_hnsw"}, {"parameter": "ef_search", "candidates": [8]})
    assert '"tuning":{' in canonical(tuned)


# -- the chooser and the catalog's sample, in process ------------------------------------------


def test_the_chooser_takes_the_smallest_value_meeting_every_gate() -> None:
    policy = TuningPolicy(
        parameter="ef_search", candidates=(8, 16, 64), min_recall=0.9, max_p99_ms=5.0
    )
    measured = [  # value, recall and its interval, p99 and its interval: 200 queries each
        # Recall met, but its whole p99 interval lies above 5 ms: a latency failure.
        (8, 0.95, (0.93, 0.97), 9.0, (8.0, 12.0)),
        # Its p99 interval across the threshold: the latency gate passes.
        (16, 0.97, (0.95, 0.98), 4.0, (3.0, 6.0)),
    ]
    figures = [
        CandidateFigures(
            value=v, queries=200, recall=r, recall_interval=ri, p99_ms=p, p99_interval=pi
        )
        for v, r, ri, p, pi in measured
    ]
    figures.append(
        CandidateFigures(value=64, queries=200, recall=0.99, recall_interval=(0.98, 1.0))
    )
    chosen, why = choose(figures, policy, "ef_search", 64)
    assert chosen == 16
    assert why == ("ef_search=16 is the smallest candidate meeting the gates (ef_search=8 did not)")
    assert figures[0].failures == ["p99 = 9.0 ms (needs <= 5.0 ms)"]
    assert figures[2].failures == ["p99 not measured"]
    # Too few mirrored queries is not a pass, whatever the figures.
    few = [CandidateFigures(value=8, queries=3, recall=1.0, p99_ms=0.1)]
    chosen, why = choose(few, policy, "ef_search", 64)
    assert chosen is None
    assert why.startswith("no candidate met the gates, so the index's own ef_search=64 keeps")
    assert "3 mirrored queries, needs 50" in why


def test_the_sample_is_kept_while_the_trial_is_open_and_deleted_once_judged(
    sandbox: Sandbox,
) -> None:
    vectors = sandbox.seed(vectors=hard_vectors(500), index={"kind": "faiss_flat"})
    spec = _spec(
        sandbox,
        {"kind": "hnswlib_hnsw", "ef_search": 32},
        {"parameter": "ef_search", "candidates": [4, 32], "sample": 10, "min_samples": 5},
    )
    log = TuningLog(sandbox.catalog)
    log.start(spec, "an-index")
    log.start(spec, "an-index")  # a retried activity finds the trial open
    trial = log.active("default", "docs", "v2")
    assert trial is not None
    assert trial.candidates == (4, 32)
    assert log.active("other", "docs", "v2") is None  # scoped by tenant
    truth = {int(i) for i in range(1, 11)}
    for n in range(12):
        # ef 32 finds the true ten; ef 4 finds half of them.
        log.add(trial, vectors[n], {4: (sorted(truth)[:5], 0.1), 32: (sorted(truth), 0.3)})
    assert log.count(trial) == 12

    def exact(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.tile(np.arange(1, k + 1, dtype=np.int64), (len(q), 1))
        return np.zeros(ids.shape, np.float32), ids

    result = measure(log, spec, "an-index", exact)
    assert result.queries == 10  # the first `sample` queries only
    assert [(c.value, c.recall, c.passed) for c in result.candidates] == [
        (4, 0.5, False),
        (32, 1.0, True),
    ]
    assert result.chosen == 32
    assert log.tuned("an-index") == {"ef_search": 32}
    # Judged: the vectors are gone, later mirrored reads keep none, a retry gets the result.
    assert log.count(trial) == 0
    assert log.active("default", "docs", "v2") is None
    log.add(trial, vectors[0], {4: ([1], 0.1)})
    assert log.count(trial) == 0
    assert measure(log, spec, "an-index", exact) == result
