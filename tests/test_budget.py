"""The latency budget: the pace controller's decisions on measured sequences, the router's
published latencies, a copy that slows when they are over the budget (and does not without
one), the index build's threads, the shard checks' reads, the validation gates' stages, the
router's shadow reads, and the status line."""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from rich.console import Console
from temporalio.client import Client

from tests.conftest import Sandbox, running_worker
from vecmigrate.catalog.changelog import UPSERT, ChangeLog
from vecmigrate.catalog.journal import Journal
from vecmigrate.catalog.latency import Latencies, LatencyReading
from vecmigrate.control.client import MigrationClient
from vecmigrate.control.report import status_tables
from vecmigrate.data.backfill import catch_up, copy_shard, open_source, open_target, prepare
from vecmigrate.data.budget import (
    PER_THREAD_NICE,
    TURN_GAP_SECONDS,
    PaceController,
    between,
    build_chunk,
    build_threads,
    idle_baseline,
    limit_of,
    niced,
    paced,
    paced_reads,
)
from vecmigrate.indexes.artifacts import build_index
from vecmigrate.indexes.build import artifact_dir, build_shard, register_index
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.spec import LatencyBudget, Metric, MigrationSpec, canonical
from vecmigrate.model.status import BudgetState, MigrationStatus
from vecmigrate.records.sharding import plan_shards
from vecmigrate.serving.latency import LatencyMonitor
from vecmigrate.serving.router import Router, bucket
from vecmigrate.stores import builtin
from vecmigrate.stores.builtin import BuiltinStore
from vecmigrate.validation import reconcile
from vecmigrate.validation.run import check_shard, measure
from vecmigrate.validation.shadow import ShadowLog


def _at(t: float, p99: float, count: int = 100) -> LatencyReading:
    return LatencyReading(p50_ms=p99 / 3, p99_ms=p99, count=count, at=t)


def _throttled(sandbox: Sandbox, spec: MigrationSpec, stage: str = "") -> BudgetState:
    """The budget's state as `status` reads it, which must say the migration is throttled
    (by ``stage``, when given)."""
    state = Latencies(sandbox.catalog).budget(spec.migration_id)
    assert state is not None
    assert state.throttled
    assert state.why.startswith(stage), state.why
    return state


def _status_text(spec: MigrationSpec, strategy: str, budget: BudgetState) -> str:
    """What `vecmigrate status` prints of a migration of v1 to v2 with this budget's state."""
    console = Console(width=200, record=True)
    console.print(
        status_tables(
            MigrationStatus(
                migration_id=spec.migration_id,
                tenant="default",
                collection="docs",
                strategy=strategy,
                source_version="v1",
                target_version="v2",
                budget=budget,
            )
        )
    )
    return console.export_text()


def test_controller_halves_over_budget_and_raises_gently_under_it() -> None:
    c = PaceController(min_share=0.05, cooldown_seconds=3.0)
    limit = 15.0
    shares = []
    # One reading a second: idle, then a burst over budget, then calm again.
    for t, p99 in enumerate([10, 20, 21, 22, 20, 14, 9, 9, 9, 9]):
        shares.append(c.decide(_at(t, p99), limit, now=t).share)
    assert shares[0] == 1.0  # under budget at full pace: nothing to raise
    assert shares[1] == 0.5  # over: halved
    assert shares[2:4] == [0.5, 0.5]  # the window still holds the slow searches: cool-down
    assert shares[4] == 0.25  # still over after the cool-down: halved again
    assert shares[5] == 0.25  # within 80-100% of the limit: held (hysteresis)
    assert shares[6:] == pytest.approx([0.35, 0.45, 0.55, 0.65])  # +0.1 a reading


def test_controller_never_goes_below_the_floor() -> None:
    c = PaceController(min_share=0.05, cooldown_seconds=0.0)
    for t in range(20):
        d = c.decide(_at(t, 100.0), 10.0, now=t)
    assert d.share == 0.05
    assert d.throttled
    assert "over 10.0 ms" in d.why


def test_controller_holds_without_a_fresh_or_sufficient_reading() -> None:
    c = PaceController(cooldown_seconds=0.0, share=0.5)
    # No reading, a stale one, the same one twice, too few searches, no limit: all hold.
    assert c.decide(None, 10.0, now=100.0).share == 0.5
    stale = c.decide(_at(50.0, 1.0), 10.0, now=100.0)
    assert stale.share == 0.5
    assert "no search latency" in stale.why
    assert c.decide(_at(99.0, 1.0, count=5), 10.0, now=100.0).why.endswith("too few to judge")
    assert c.decide(_at(99.5, 1.0), None, now=100.0).share == 0.5
    assert c.decide(_at(99.5, 1.0), 10.0, now=100.0).share == pytest.approx(0.6)
    again = c.decide(_at(99.5, 1.0), 10.0, now=100.5)  # the same reading: no second step
    assert again.share == pytest.approx(0.6)


def test_limit_is_the_lower_of_the_ratio_and_the_absolute() -> None:
    both = LatencyBudget(max_p99_ratio=1.5, max_search_p99_ms=20.0)
    assert limit_of(both, 10.0) == 15.0
    assert limit_of(both, 20.0) == 20.0
    assert limit_of(both, None) == 20.0
    assert limit_of(LatencyBudget(max_p99_ratio=1.5), None) is None


def test_a_budget_needs_a_limit_and_old_specs_keep_their_hash(sandbox: Sandbox) -> None:
    with pytest.raises(ValidationError, match="max_p99_ratio"):
        LatencyBudget()
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        LatencyBudget(max_p99_ratio=0.5)
    spec = sandbox.spec()
    assert spec.budget is None
    with_none = MigrationSpec.model_validate({**spec.model_dump(mode="json"), "budget": None})
    assert with_none.spec_hash() == spec.spec_hash()


@contextmanager
def _searched(sandbox: Sandbox, searches: int = 60) -> Iterator[tuple[Router, LatencyReading]]:
    """Real searches through a router, and the summary it published for them; the router is
    closed when the block ends."""
    router = Router(sandbox.catalog, refresh_seconds=0.0)
    try:
        queries = open_source(sandbox.spec()).sample(searches, seed=3)[1]
        for q in queries:
            router.search("default", "docs", q, 10)
        assert router.latency.tick() == [("default", "docs")]
        published = Latencies(sandbox.catalog).latest("default", "docs", 10.0)
        assert published is not None
        yield router, published
    finally:
        router.close()


def test_the_router_publishes_its_search_latencies(sandbox: Sandbox) -> None:
    sandbox.seed(2000)
    with _searched(sandbox, 60) as (router, published):
        assert published.count == 60
        assert 0 < published.p50_ms <= published.p99_ms
        # A second with no searches publishes nothing; the window still holds the last one.
        assert router.latency.tick() == []


def _copy_after_searches(
    sandbox: Sandbox, batch_size: int = 100, **spec: Any
) -> tuple[MigrationSpec, list[float], LatencyReading]:
    """Seed 3000 vectors, publish a router's search latencies for them, then copy them under
    ``spec``: the spec, the copy's pauses and the latencies published before it."""
    sandbox.seed(3000)
    with _searched(sandbox) as (_, published):
        s = sandbox.spec(batch_size=batch_size, shards={"count": 1}, **spec)
        shard = prepare(sandbox.catalog, s, "t").shards[0]
        sleeps: list[float] = []
        result = copy_shard(s, shard, Journal(sandbox.catalog), None, sleeps.append, time.monotonic)
        assert result.complete
        assert result.copied == 3000
    return s, sleeps, published


def test_a_copy_over_budget_pauses_between_batches_and_status_says_so(
    sandbox: Sandbox,
) -> None:
    # Real searches take microseconds to milliseconds: a budget of a nanosecond is over.
    spec, sleeps, published = _copy_after_searches(sandbox, budget={"max_search_p99_ms": 1e-6})
    assert sleeps
    assert sum(sleeps) > 0
    state = _throttled(sandbox, spec)
    assert state.share == 0.5  # one reading, one cut
    assert state.p99_ms == pytest.approx(published.p99_ms)
    assert state.idle_p99_ms == pytest.approx(published.p99_ms)  # published before the copy

    text = _status_text(spec, "blue_green", state)
    assert "latency budget" in text
    assert "throttling: pace 50%" in text


def test_without_a_budget_the_copy_never_waits(sandbox: Sandbox) -> None:
    spec, sleeps, _ = _copy_after_searches(sandbox)
    assert sleeps == []
    assert Latencies(sandbox.catalog).budget(spec.migration_id) is None


def _target_transactions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows of each transaction the built-in store writes into version v2 from now on."""
    written: list[int] = []
    insert = BuiltinStore._insert

    def counted(store: BuiltinStore, sql: str, rows: Any) -> int:
        done = insert(store, sql, rows)
        if store.scope.version == "v2":
            written.append(done)
        return done

    monkeypatch.setattr(BuiltinStore, "_insert", counted)
    return written


def test_under_a_budget_the_copy_writes_in_turns_with_the_budgets_pauses_between_them(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite takes one writer at a time: a gateway's write waits for a turn, not a batch.
    monkeypatch.setattr(builtin, "FIRST_TURN_ROWS", 200)
    monkeypatch.setattr(builtin, "TURN_SECONDS", 1e-9)  # then the fewest rows a turn (100)
    written = _target_transactions(monkeypatch)
    spec, sleeps, _ = _copy_after_searches(
        sandbox, batch_size=1000, budget={"max_search_p99_ms": 1e-6}
    )
    _throttled(sandbox, spec)
    assert written == [200, *[100] * 8] * 3
    # The budget's pauses go between turns, each at least the gap an application's write
    # needs to find the database free (8 between the 9 turns of each batch).
    assert sum(s >= TURN_GAP_SECONDS for s in sleeps) >= 3 * 8
    assert open_target(spec).checksum() == open_source(spec).checksum()


def test_without_a_budget_the_copy_writes_each_batch_in_one_transaction(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At full speed: each turn's commit costs the copy (a sync of SQLite's log).
    written = _target_transactions(monkeypatch)
    spec, sleeps, _ = _copy_after_searches(sandbox, batch_size=1000)
    assert written == [1000, 1000, 1000]
    assert sleeps == []
    assert open_target(spec).checksum() == open_source(spec).checksum()


def test_a_ratio_budget_takes_the_idle_p99_and_holds_pace_within_it(sandbox: Sandbox) -> None:
    spec, sleeps, published = _copy_after_searches(sandbox, budget={"max_p99_ratio": 1.5})
    state = Latencies(sandbox.catalog).budget(spec.migration_id)
    assert state is not None
    assert state.limit_ms == pytest.approx(1.5 * published.p99_ms)
    # The reading is the idle one itself, well within 1.5x of it: full pace, no pauses.
    assert not state.throttled
    assert state.share == 1.0
    assert sum(sleeps) == 0


def _real_sleeps() -> tuple[list[float], Callable[[float], None]]:
    """A sleep that waits for real (a batch's time each: short) and keeps what it was asked."""
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    return sleeps, sleep


def _caught_up(sandbox: Sandbox, **spec: Any) -> tuple[MigrationSpec, list[float]]:
    """A copied target, 500 writes in the change log since, replayed 100 a batch."""
    s, _, _ = _copy_after_searches(sandbox, **spec)
    log = ChangeLog(sandbox.catalog)
    after = log.head("default", "docs")
    vectors = np.random.default_rng(5).standard_normal((500, 16)).astype(np.float32)
    for start in range(0, 500, 50):
        ids = np.arange(10_000 + start, 10_000 + start + 50)
        log.append("default", "docs", UPSERT, ids, vectors[start : start + 50])
    sleeps, sleep = _real_sleeps()
    result = catch_up(s, log, Journal(sandbox.catalog), after, seconds=60, batch=100, sleep=sleep)
    assert result.drained
    assert result.applied == 500
    assert open_target(s).count() == 3500
    return s, sleeps


def test_the_catch_up_over_budget_pauses_between_batches(sandbox: Sandbox) -> None:
    spec, sleeps = _caught_up(sandbox, budget={"max_search_p99_ms": 1e-6})
    assert len(sleeps) == 5  # after each of the 5 batches
    assert all(s > 0 for s in sleeps)
    _throttled(sandbox, spec)


def test_without_a_budget_the_catch_up_never_waits(sandbox: Sandbox) -> None:
    assert _caught_up(sandbox)[1] == []


def _reconciled(sandbox: Sandbox, **spec: Any) -> list[float]:
    """The pauses of a reconcile of a copied shard (which finds nothing to repair)."""
    s, _, _ = _copy_after_searches(sandbox, **spec)
    sleeps, sleep = _real_sleeps()
    rec = reconcile.for_migration(sandbox.catalog, s, sleep=sleep)
    assert rec.shard(plan_shards(s.shards)[0]).found.total() == 0
    return sleeps


def test_the_reconcile_reads_pause_under_the_budget(sandbox: Sandbox) -> None:
    sleeps = _reconciled(sandbox, budget={"max_search_p99_ms": 1e-6})
    assert len(sleeps) == 60  # after each of 30 batches of 100 a side
    assert all(s > 0 for s in sleeps)


def test_without_a_budget_the_reconcile_never_waits(sandbox: Sandbox) -> None:
    assert _reconciled(sandbox) == []


def test_the_reconcile_repair_writes_pause_under_the_budget(sandbox: Sandbox) -> None:
    s, _, _ = _copy_after_searches(sandbox, budget={"max_search_p99_ms": 1e-6})
    target, shard = open_target(s), plan_shards(s.shards)[0]
    target.delete(next(iter(target.iter_shard(shard, 250))).ids)  # 250 records lost
    sleeps, sleep = _real_sleeps()
    rec = reconcile.for_migration(sandbox.catalog, s, sleep=sleep)
    result = rec.shard(shard)
    assert result.found.missing == 250
    assert result.repaired.missing == 250
    assert target.count() == 3000
    # The first pass reads 30 batches of the source and 28 of the target, the repair writes 3
    # batches of at most 100, the second pass reads 30 a side: a pause after each.
    assert len(sleeps) == 30 + 28 + 3 + 60
    assert all(w > 0 for w in sleeps)


def test_index_build_threads_follow_the_budget(sandbox: Sandbox) -> None:
    sandbox.seed(3000)
    with _searched(sandbox):
        over = sandbox.spec(budget={"max_search_p99_ms": 1e-6})
        assert build_threads(sandbox.catalog, over, 4) == 2  # halved by the reading over it
        plain = sandbox.spec()
        assert build_threads(sandbox.catalog, plain, 4) == 4


def test_an_index_build_over_budget_pauses_between_chunks(sandbox: Sandbox) -> None:
    sandbox.seed(3000)
    with _searched(sandbox):
        spec = sandbox.spec(budget={"max_search_p99_ms": 1e-6})
        ids, vectors = open_source(spec).sample(3000, seed=1)
        sleeps, sleep = _real_sleeps()
        seen: list[int] = []
        progress = paced(sandbox.catalog, spec, lambda done, _: seen.append(done), sleep)
        index = build_index(
            spec.target.index, Metric.L2, ids, vectors, on_progress=progress, chunk=500
        )
    assert index.get_current_count() == 3000
    assert seen == [500, 1000, 1500, 2000, 2500, 3000]
    assert len(sleeps) == 5  # between chunks, not after the last
    assert all(s > 0 for s in sleeps)
    assert paced(sandbox.catalog, sandbox.spec(), print) is print  # no budget: untouched


def test_the_status_command_reads_the_budget_from_the_catalog(sandbox: Sandbox) -> None:
    from vecmigrate.control import cli

    spec, _, _ = _copy_after_searches(sandbox, budget={"max_search_p99_ms": 1e-6})
    args = argparse.Namespace(catalog=sandbox.catalog.url)
    state = cli._budget_state(args, spec.migration_id)
    assert state is not None
    assert state.throttled
    assert cli._budget_state(args, "no-such-migration") is None


def _shard_checked(sandbox: Sandbox, **spec: Any) -> tuple[MigrationSpec, list[float]]:
    """A copied shard checked by a full read of both versions through the budget's stores."""
    s, _, _ = _copy_after_searches(sandbox, **spec)
    sleeps, sleep = _real_sleeps()
    stores = (open_source(s), open_target(s))
    source, target = paced_reads(sandbox.catalog, s, stores, "shard checks", sleep)
    check = check_shard(s, source, target, plan_shards(s.shards)[0])
    assert check.source.count == check.target.count == 3000
    assert check.source.checksum == check.target.checksum
    return s, sleeps


def test_the_shard_checks_full_reads_pause_under_the_budget(sandbox: Sandbox) -> None:
    spec, sleeps = _shard_checked(sandbox, budget={"max_search_p99_ms": 1e-6})
    assert len(sleeps) >= 2  # after each side's read (one batch each)
    assert all(s > 0 for s in sleeps)
    _throttled(sandbox, spec, "shard checks: ")


def test_within_the_budget_the_shard_checks_never_wait(sandbox: Sandbox) -> None:
    assert _shard_checked(sandbox, budget={"max_search_p99_ms": 1e6})[1] == []
    plain = sandbox.spec()
    stores = (open_source(plain), open_target(plain))
    assert paced_reads(sandbox.catalog, plain, stores, "shard checks") is stores  # no budget


def _gates_measured(sandbox: Sandbox, **spec: Any) -> tuple[MigrationSpec, list[float]]:
    """The validation gates' figures of a copied and indexed target, paced by the budget."""
    s, _, _ = _copy_after_searches(sandbox, **spec)
    target = open_target(s)
    shard = plan_shards(s.shards)[0]
    directory = artifact_dir(s.target.store, s.tenant, s.collection, s.target.name)
    art = build_shard(target, s.target, shard, directory, threads=1)
    index_id = register_index(sandbox.catalog, s.tenant, s.collection, s.target, [art], None).id
    source_index = sandbox.catalog.get_routing("default", "docs").read_index  # type: ignore[union-attr]
    sleeps, sleep = _real_sleeps()
    pause = between(sandbox.catalog, s, "validation gates", sleep)
    assert (pause is None) == (s.budget is None)
    fig = measure(sandbox.catalog, s, open_source(s), target, source_index, index_id, pause=pause)
    assert fig.skipped == []  # the waits extend the time budget
    assert fig.target_recall is not None
    assert fig.target_recall > 0.5
    assert fig.p99_ms_new is not None
    assert fig.p99_ms_old is not None
    return s, sleeps


def test_the_validation_gates_pause_between_stages_under_the_budget(sandbox: Sandbox) -> None:
    spec, sleeps = _gates_measured(sandbox, budget={"max_search_p99_ms": 1e-6})
    # After drawing the queries, the target's recall, the source's recall and the timed
    # searches: between stages, none in the middle of the timing.
    assert len(sleeps) == 4
    assert all(s > 0 for s in sleeps)
    _throttled(sandbox, spec, "validation gates: ")


def test_within_the_budget_the_validation_gates_never_wait(sandbox: Sandbox) -> None:
    assert _gates_measured(sandbox, budget={"max_search_p99_ms": 1e6})[1] == []


def _mirrored(sandbox: Sandbox, **spec: Any) -> tuple[MigrationSpec, Router, int, int]:
    """Every read shadowed to the copied target: 60 searches, the router's latencies
    published (and its share of mirrored reads decided on them), then 300 searches of other
    users. The spec, the router (closed), the share of mirroring in percent, and the pairs
    recorded for the 300."""
    s, _, _ = _copy_after_searches(sandbox, **spec)
    sandbox.route("shadow", reason="shadow", candidate_version=s.target.name, shadow_percent=100.0)
    queries = open_source(s).sample(60, seed=4)[1]
    router = Router(sandbox.catalog, refresh_seconds=0.0, shadow_threads=1)
    log = ShadowLog(sandbox.catalog)
    try:
        for j in range(60):
            router.search("default", "docs", queries[j], 10, key=f"warm-{j}")
        router.latency.tick()
        share = round(100 * router.mirror.share("default", "docs"))
        time.sleep(1.0)  # the warm-up's shadow reads recorded
        router._flush_shadow(force=True)
        mark = log.last_id()
        for j in range(300):
            while router._shadow_in_flight >= 4:  # a shadow read finding 8 in flight is dropped
                time.sleep(0.001)
            router.search("default", "docs", queries[j % 60], 10, key=f"user-{j}")
    finally:
        router.close()
    return s, router, share, log.figures("default", "docs", s.target.name, mark).samples


@pytest.mark.integration  # 360 searches with a shadow thread: seconds
def test_over_the_budget_the_router_mirrors_fewer_reads_and_status_says_so(
    sandbox: Sandbox,
) -> None:
    spec, _, share, pairs = _mirrored(sandbox, budget={"max_search_p99_ms": 1e-6})
    assert share <= 50  # halved by the first reading over the limit (or more since)
    # The users whose reads the share mirrors (it can only fall further while they search).
    chosen = sum(bucket(f"shadow:{bucket(f'user-{j}')}") < share for j in range(300))
    assert chosen < 0.6 * 300
    assert 0 < pairs <= chosen  # fewer pairs, but some: the shadow gate still gets its pairs
    state = _throttled(sandbox, spec, "shadow reads mirrored at ")
    assert "shadow reads mirrored at" in _status_text(spec, "online", state)


@pytest.mark.integration  # 360 searches with a shadow thread: seconds
def test_within_the_budget_the_router_mirrors_every_shadowed_read(sandbox: Sandbox) -> None:
    spec, _, share, pairs = _mirrored(sandbox, budget={"max_search_p99_ms": 1e6})
    assert share == 100
    assert pairs == 300  # every read mirrored
    state = Latencies(sandbox.catalog).budget(spec.migration_id)
    assert state is not None
    assert not state.throttled


def test_an_index_build_under_a_budget_adds_smaller_chunks(sandbox: Sandbox, tmp_path: Any) -> None:
    sandbox.seed(3000)
    spec = sandbox.spec(shards={"count": 1}, budget={"max_search_p99_ms": 50.0})
    assert build_chunk(spec) == 2_000
    assert build_chunk(sandbox.spec()) == 20_000  # no budget: as before
    seen: list[int] = []
    art = build_shard(
        open_source(spec),
        spec.target,
        plan_shards(spec.shards)[0],
        tmp_path,
        threads=1,
        on_progress=lambda done, _: seen.append(done),
        chunk=build_chunk(spec),
    )
    assert art.count == 3000
    assert seen == [2000, 3000]  # a look at the budget after each chunk


def _priority() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not PER_THREAD_NICE, reason="a nice value per thread is Linux's")
@pytest.mark.parametrize(
    ("budget", "step"), [(None, 0), ({"nice": 0}, 0), ({}, 10), ({"nice": 4}, 4)]
)
def test_under_a_budget_the_build_runs_at_a_lower_cpu_priority_and_its_threads_too(
    sandbox: Sandbox, budget: dict[str, Any] | None, step: int
) -> None:
    """A real hnswlib build of a copied shard, run as the build activity runs it: its progress
    callback (on the build's thread) and a thread that thread starts (as hnswlib starts its
    own) see the worker's nice value plus the budget's; the caller's thread keeps its own."""
    limits = None if budget is None else {"max_search_p99_ms": 1e6, **budget}
    s, _, _ = _copy_after_searches(sandbox, **({} if limits is None else {"budget": limits}))
    base = _priority()
    seen: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        child: list[int] = []
        started = threading.Thread(target=lambda: child.append(_priority()))
        started.start()
        started.join()
        seen.append((_priority(), child[0]))

    shard = plan_shards(s.shards)[0]
    directory = artifact_dir(s.target.store, s.tenant, s.collection, s.target.name)
    art = niced(
        s,
        lambda: build_shard(
            open_target(s), s.target, shard, directory, threads=2, on_progress=progress, chunk=1000
        ),
    )
    assert art.count == 3000
    assert seen == [(min(19, base + step), min(19, base + step))] * 3
    assert _priority() == base


def test_niced_work_raises_what_it_raised_and_keeps_the_callers_context(sandbox: Sandbox) -> None:
    spec = sandbox.spec(budget={"max_search_p99_ms": 1e6, "nice": 3})
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker")
    marker.set("activity")
    assert niced(spec, marker.get) == "activity"

    def fails() -> None:
        raise ValueError("the copy failed")

    with pytest.raises(ValueError, match="the copy failed"):
        niced(spec, fails)


def test_the_budgets_nice_is_bounded_and_left_out_of_the_hash_at_its_default() -> None:
    with pytest.raises(ValidationError, match="nice"):
        LatencyBudget(max_p99_ratio=1.5, nice=20)
    assert "nice" not in canonical(LatencyBudget(max_p99_ratio=1.5))
    assert '"nice":4' in canonical(LatencyBudget(max_p99_ratio=1.5, nice=4))


async def test_a_migration_under_a_budget_copies_and_builds_on_niced_threads(
    client: Client, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy and the build activities run their work on a niced thread of their own under
    a budget: the activity's heartbeats come from it (its context goes along), what it returns
    reaches the workflow, and the migration completes with every record copied. The shard
    checks, the reconcile gate's comparison and the gates' figures run niced too (as seen by
    the functions the activities call, on the threads they run on)."""
    import vecmigrate.validation as validation_pkg
    from vecmigrate.validation import stream

    seen: dict[str, set[int]] = {}

    def spy(owner: Any, name: str) -> None:
        real = getattr(owner, name)

        def watched(*args: Any, **kwargs: Any) -> Any:
            seen.setdefault(name, set()).add(_priority())
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, watched)

    for owner, name in (
        (stream, "shard_check"),
        (validation_pkg, "measure"),
        (reconcile.Reconciler, "shard"),
    ):
        spy(owner, name)
    sandbox.seed(3000)
    spec = sandbox.spec(budget={"max_search_p99_ms": 1e6, "nice": 5})
    base = _priority()
    async with running_worker(client, sandbox) as queue:
        mc = MigrationClient(client, queue)
        mid = await mc.start(spec)
        final = await asyncio.wait_for(mc.result(mid), 240)
    assert final.phase == Phase.COMPLETED
    assert sum(s.copied for s in final.shards) == 3000
    assert final.index_version is not None
    if PER_THREAD_NICE:
        want = {min(19, base + 5)}
        assert seen == {"shard_check": want, "measure": want, "shard": want}
    state = Latencies(sandbox.catalog).budget(mid)
    assert state is not None  # the copy and the build looked at the budget
    assert not state.throttled


def test_the_idle_baseline_is_read_as_the_migration_prepares(sandbox: Sandbox) -> None:
    """The budget's idle p99 is the window published before the preparation's work, not the
    one at the copy's start (by then the preparation loaded the machine): a slower window
    published in between does not move it, and the copy is held to the first."""
    sandbox.seed(3000)
    with _searched(sandbox) as (_, published):
        s = sandbox.spec(batch_size=100, shards={"count": 1}, budget={"max_p99_ratio": 1.5})
        shard = prepare(sandbox.catalog, s, "t").shards[0]
        state = Latencies(sandbox.catalog).budget(s.migration_id)
        assert state is not None
        assert state.idle_p99_ms == pytest.approx(published.p99_ms)
        slow = LatencyReading(50 * published.p50_ms, 50 * published.p99_ms, 100, time.time())
        Latencies(sandbox.catalog).publish("another-router", "default", "docs", slow)
        sleeps: list[float] = []
        copy_shard(s, shard, Journal(sandbox.catalog), None, sleeps.append, time.monotonic)
    state = Latencies(sandbox.catalog).budget(s.migration_id)
    assert state is not None
    assert state.idle_p99_ms == pytest.approx(published.p99_ms)
    assert state.limit_ms == pytest.approx(1.5 * published.p99_ms)
    assert state.throttled  # the slower window is over 1.5x the idle one
    assert sum(sleeps) > 0


def test_routers_publish_a_longer_windows_p99_and_a_budget_takes_it_as_idle(
    sandbox: Sandbox,
) -> None:
    """A router publishes its last 3 seconds (p50, p99, count) and the p99 of its last 30; a
    budget made as a migration prepares takes the longer one as its idle p99 (a 3-second
    window's p99 is its third-slowest search at 100 a second)."""
    monitor = LatencyMonitor(sandbox.catalog, start=False)
    rng = np.random.default_rng(7)
    every = []
    for second in range(40):
        ms = rng.gamma(2.0, 1.5, 100) + (20.0 if second == 20 else 0.0)  # one slow second
        monitor.samples[("default", "docs")].extend(ms.tolist())
        monitor.tick()
        every.append(ms)
    published = Latencies(sandbox.catalog).latest("default", "docs", 10.0)
    assert published is not None
    assert published.count == 300
    assert published.p99_ms == pytest.approx(np.percentile(np.concatenate(every[-3:]), 99))
    longer = np.percentile(np.concatenate(every[-30:]), 99)
    assert published.p99_baseline_ms == pytest.approx(longer)
    assert published.p99_baseline_ms != pytest.approx(published.p99_ms)

    sandbox.seed(200)
    spec = sandbox.spec(budget={"max_p99_ratio": 1.5})
    state = idle_baseline(sandbox.catalog, spec)
    assert state is not None
    assert state.idle_p99_ms == pytest.approx(longer)
    assert state.limit_ms == pytest.approx(1.5 * longer)
