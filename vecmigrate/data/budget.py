"""A latency budget for live traffic: the copy and the index build slow down when the search
p99 the routers measure goes over the spec's budget, and speed up again when it allows.

:class:`PaceController` is the decision, pure and clocked by its caller: additive increase,
multiplicative decrease on the routers' published p99 against the limit, with a dead band
below the limit (hysteresis), a cool-down after a cut (the routers' window still holds the
searches that were slow before it), and the last pace held when no fresh reading comes.

:class:`BudgetPacer` applies it between copy batches: at a share ``s`` of full pace, each
batch is followed by a pause of ``(1/s - 1)`` times the time the batch took (a duty cycle),
combined with the ``max_vectors_per_second`` throttle by taking the longer wait.
:func:`build_threads` scales an index build's threads by the same share at its start, and
:func:`paced` pauses between its chunks (:func:`build_chunk` vectors each). The same pacer
pauses the shard checks' full reads (:func:`paced_reads`) and the validation gates between
their stages (:func:`between`). :class:`MirrorBudget` is a router's: the share of its shadowed
reads it mirrors to a candidate. Each writes where the budget stands to the catalog
(``vecmigrate.catalog.latency``), which ``vecmigrate status`` shows. :func:`niced` runs the
copy and the build at a lower CPU priority under a budget, so that the scheduler serves the
searches first whenever the two want the same core.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from vecmigrate.catalog.catalog import Catalog
from vecmigrate.catalog.latency import Latencies, LatencyReading
from vecmigrate.errors import NotFoundError
from vecmigrate.indexes.artifacts import carried, usable_cores
from vecmigrate.model.spec import LatencyBudget, MigrationSpec
from vecmigrate.model.status import BudgetState
from vecmigrate.model.tasks import ShardRef
from vecmigrate.stores import VectorStore
from vecmigrate.stores.base import Batch

# A reading older than this is no reading: the pace is held where it is.
STALE_SECONDS = 10.0
# How often a pacer reads the routers' latencies (the routers publish about once a second).
CHECK_SECONDS = 1.0
# The idle baseline must come from a window the migration's work did not touch: read as it
# prepares, before its first work (see ``idle_baseline``).
BASELINE_MAX_AGE = 10.0
# Under a budget, the least a copy waits between two turns of a batch's write on a database of
# one writer at a time (see ``VectorStore.write``), even at full pace: an application's write
# that found the database busy polls for it in steps of up to 100 ms, and two copies writing
# turns back to back left it few moments to find: with two copies at full pace into one SQLite
# database and an application writing 50 times a second, its write p99 was about 600 ms with no
# gap and 120 ms with 5 ms (a check beside `bench/copy_write_stalls.py`, which measures the
# turns with this gap against a batch a transaction).
TURN_GAP_SECONDS = 0.005


@dataclass(frozen=True)
class Decision:
    """The pace a controller chose and why."""

    share: float
    throttled: bool
    why: str


@dataclass
class PaceController:
    """AIMD on the search p99: over ``limit_ms`` the pace halves (at most once per
    ``cooldown_seconds``), under ``headroom`` times it the pace grows by ``step``, in between
    it holds; too few searches, a stale reading or no limit hold it too."""

    min_share: float = 0.05
    step: float = 0.1
    cut: float = 0.5
    headroom: float = 0.8
    min_count: int = 20
    stale_seconds: float = STALE_SECONDS
    cooldown_seconds: float = 3.0
    share: float = 1.0
    last_reading: float = -math.inf
    last_cut: float = -math.inf

    def decide(
        self, reading: LatencyReading | None, limit_ms: float | None, now: float
    ) -> Decision:
        """The pace for the next while, given the routers' latest reading (``now`` and the
        reading's time on the same clock, seconds since the epoch)."""
        if limit_ms is None:
            return self._hold("no limit: no idle p99 was published before the copy began")
        if reading is None or now - reading.at > self.stale_seconds:
            return self._hold(f"no search latency published in {self.stale_seconds:.0f}s")
        if reading.at <= self.last_reading:
            return self._hold("waiting for the next reading")
        self.last_reading = reading.at
        if reading.count < self.min_count:
            return self._hold(f"{reading.count} searches are too few to judge")
        if reading.p99_ms > limit_ms:
            if now - self.last_cut < self.cooldown_seconds:
                return self._hold(
                    f"p99 {reading.p99_ms:.1f} ms over {limit_ms:.1f} ms; "
                    "waiting for the last cut to show"
                )
            self.last_cut = now
            self.share = max(self.min_share, self.share * self.cut)
            return self._hold(f"p99 {reading.p99_ms:.1f} ms over {limit_ms:.1f} ms: pace cut")
        if reading.p99_ms < self.headroom * limit_ms and self.share < 1.0:
            self.share = min(1.0, self.share + self.step)
            return self._hold(f"p99 {reading.p99_ms:.1f} ms under {limit_ms:.1f} ms: pace raised")
        return self._hold("")

    def _hold(self, why: str) -> Decision:
        return Decision(self.share, self.share < 1.0, why)


def limit_of(budget: LatencyBudget, idle_p99_ms: float | None) -> float | None:
    """The p99 limit in milliseconds: the lower of the absolute limit and the ratio to the idle
    p99 (None when only a ratio is set and there is no idle p99)."""
    limits = []
    if budget.max_search_p99_ms is not None:
        limits.append(budget.max_search_p99_ms)
    if budget.max_p99_ratio is not None and idle_p99_ms is not None:
        limits.append(budget.max_p99_ratio * idle_p99_ms)
    return min(limits) if limits else None


def idle_baseline(catalog: Catalog, spec: MigrationSpec) -> BudgetState | None:
    """Make the budget's row from the routers' idle window, once, before the migration's first
    work (the preparation's counts and tables load the machine already); its later steps read
    the same row. None without a budget."""
    if spec.budget is None:
        return None
    return _idle_state(Latencies(catalog), spec, time.time())


def _idle_state(latencies: Latencies, spec: MigrationSpec, wall: float) -> BudgetState:
    """The budget's row, made at the first start from the routers' idle window (or read back:
    made by ``idle_baseline`` as the migration prepared)."""
    mid = spec.migration_id
    state = latencies.budget(mid)
    if state is None:
        idle = latencies.latest(spec.tenant, spec.collection, BASELINE_MAX_AGE, wall)
        assert spec.budget is not None
        # The routers' longer window when they keep one (steadier), else their short one.
        idle_p99 = None
        if idle is not None:
            idle_p99 = idle.p99_ms if idle.p99_baseline_ms is None else idle.p99_baseline_ms
        state = BudgetState(
            idle_p99_ms=idle_p99,
            limit_ms=limit_of(spec.budget, idle_p99),
            p99_ms=idle_p99,
            at=wall,
        )
        latencies.set_budget(mid, state)
    return state


class BudgetPacer:
    """The pauses a copy makes between batches to hold a latency budget (none without one)."""

    def __init__(
        self,
        catalog: Catalog | None,
        spec: MigrationSpec,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        what: str = "",
    ) -> None:
        self.spec = spec
        self.what = what  # what it paces, named in the status ("" for the copy)
        self.clock = clock
        self.wall = wall
        self.mark = clock()
        self.checked = -math.inf
        self.latencies: Latencies | None = None
        self.state: BudgetState | None = None
        if catalog is None or spec.budget is None:
            return
        self.latencies = Latencies(catalog)
        self.state = _idle_state(self.latencies, spec, wall())
        self.controller = PaceController(
            min_share=spec.budget.min_rate_share, share=self.state.share
        )

    @property
    def active(self) -> bool:
        """Whether the migration has a latency budget to hold."""
        return self.state is not None

    def between_turns(self, added: int) -> float:
        """Seconds to wait between two turns of a batch's write (the budget's pause, and at
        least ``TURN_GAP_SECONDS``), ``added`` records into the batch; 0 without a budget."""
        return 0.0 if self.state is None else max(self.pause(added), TURN_GAP_SECONDS)

    @property
    def share(self) -> float:
        """The share of full pace the copy runs at now."""
        return 1.0 if self.state is None else self.state.share

    def pause(self, added: int) -> float:
        """Seconds to wait after a batch of ``added`` records (0 without a budget)."""
        if self.latencies is None or self.state is None:
            return 0.0
        now = self.clock()
        work = max(0.0, now - self.mark)
        wall = self.wall()
        if wall - self.checked >= CHECK_SECONDS:
            self.checked = wall
            self._update(wall)
        wait = work * (1.0 / self.share - 1.0)
        self.mark = now + wait
        return wait

    def _update(self, wall: float) -> None:
        assert self.latencies is not None
        assert self.state is not None
        spec = self.spec
        reading = self.latencies.latest(spec.tenant, spec.collection, STALE_SECONDS, wall)
        decision = self.controller.decide(reading, self.state.limit_ms, wall)
        why = f"{self.what}: {decision.why}" if self.what and decision.why else decision.why
        self.state = _decided(self.state, decision, why or self.state.why, reading, wall)
        self.latencies.set_budget(spec.migration_id, self.state)


def _decided(
    state: BudgetState,
    decision: Decision,
    why: str,
    reading: LatencyReading | None,
    wall: float,
) -> BudgetState:
    """The budget's state after ``decision``, taken at ``wall`` on ``reading`` (the last p99
    kept when there is none), as the status shows it."""
    return state.model_copy(
        update={
            "share": decision.share,
            "throttled": decision.throttled,
            "why": why,
            "p99_ms": reading.p99_ms if reading is not None else state.p99_ms,
            "at": wall,
        }
    )


T = TypeVar("T")

# Linux keeps a nice value per thread, and a thread inherits its creator's: a build's own
# threads (hnswlib's) run at the priority of the thread that starts them. Elsewhere the value
# is the process's, which lowering for one call would leave lowered for every later one.
PER_THREAD_NICE = sys.platform.startswith("linux")


def niced(spec: MigrationSpec, work: Callable[[], T]) -> T:
    """``work()``, run under the spec's budget on a thread of its own whose nice value is the
    budget's ``nice`` above the caller's (the thread ends with the call, so the worker's own
    threads keep their priority); without a budget, with ``nice`` 0 or off Linux, on the
    calling thread. The activity's context goes with it (its heartbeats), and the caller's
    FAISS thread count (see :func:`~vecmigrate.indexes.artifacts.carried`); whatever ``work``
    raises is raised here."""
    step = spec.budget.nice if spec.budget is not None else 0
    if step <= 0 or not PER_THREAD_NICE:
        return work()
    work = carried(work)  # the activity's context (its heartbeats) and FAISS thread count
    done: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            tid = threading.get_native_id()
            base = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, min(19, base + step))
            done.append(work())
        except BaseException as e:  # handed to the caller
            failed.append(e)

    thread = threading.Thread(target=run, name="vecmigrate-niced", daemon=True)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return done[0]


def build_threads(catalog: Catalog, spec: MigrationSpec, threads: int) -> int:
    """The threads an index build starts with under the spec's budget: ``threads`` (0: every
    core) scaled by the share of full pace the budget allows now, at least one. Without a
    budget, ``threads`` unchanged."""
    if spec.budget is None:
        return threads
    pacer = BudgetPacer(catalog, spec)
    pacer.pause(0)  # one reading and one decision, written for the status
    if pacer.share >= 1.0:
        return threads
    cores = threads or usable_cores()
    return max(1, math.floor(cores * pacer.share))


# An index build adds this many vectors between two looks at the budget (20,000 without one):
# a chunk is the longest stretch a build runs without a pause.
BUDGET_CHUNK = 2_000


def build_chunk(spec: MigrationSpec, chunk: int = 20_000) -> int:
    """The vectors an index build adds between two pauses: smaller under a budget, so that its
    pauses come often enough to spread its load (``chunk`` without one)."""
    return chunk if spec.budget is None else min(chunk, BUDGET_CHUNK)


def paced(
    catalog: Catalog,
    spec: MigrationSpec,
    on_progress: Callable[[int, int], None],
    sleep: Callable[[float], None] = time.sleep,
) -> Callable[[int, int], None]:
    """An index build's progress callback followed, between chunks, by the budget's pause
    (``on_progress`` itself without a budget)."""
    if spec.budget is None:
        return on_progress
    pacer = BudgetPacer(catalog, spec)

    def progress(done: int, total: int) -> None:
        on_progress(done, total)
        wait = pacer.pause(done)
        if wait > 0 and done < total:
            sleep(wait)

    return progress


def between(
    catalog: Catalog,
    spec: MigrationSpec,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
) -> Callable[[], float] | None:
    """A pause for between two steps of work (the validation gates' stages): it waits as the
    budget asks for the work done since the last one and returns the seconds it waited. None
    without a budget."""
    if spec.budget is None:
        return None
    pacer = BudgetPacer(catalog, spec, what=what)

    def pause() -> float:
        wait = pacer.pause(0)
        if wait > 0:
            sleep(wait)
        return wait

    return pause


class _PacedReads:
    """A store whose full reads (``iter_shard``) pause after each batch as the budget asks;
    everything else is the store's own."""

    def __init__(
        self, store: VectorStore, pacer: BudgetPacer, sleep: Callable[[float], None]
    ) -> None:
        self._store = store
        self._pacer = pacer
        self._sleep = sleep

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def iter_shard(
        self, shard: ShardRef, batch_size: int, *, read_ahead: bool = False
    ) -> Iterator[Batch]:
        for batch in self._store.iter_shard(shard, batch_size, read_ahead=read_ahead):
            yield batch  # the caller's work on the batch counts as the read's
            wait = self._pacer.pause(len(batch.records))
            if wait > 0:
                self._sleep(wait)


def paced_reads(
    catalog: Catalog,
    spec: MigrationSpec,
    stores: tuple[VectorStore, VectorStore],
    what: str,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[VectorStore, VectorStore]:
    """Both versions' stores, their full reads paced by one pacer (the stores themselves
    without a budget)."""
    if spec.budget is None:
        return stores
    pacer = BudgetPacer(catalog, spec, what=what)
    source, target = (cast(VectorStore, _PacedReads(s, pacer, sleep)) for s in stores)
    return source, target


class MirrorBudget:
    """The share of its shadow reads a router mirrors to a candidate version under the latency
    budget of the migration that made it (1.0 without one).

    The router updates it once a second, after publishing its latencies: a controller of its
    own per migration (the same AIMD as the copy's, from full share, never below the spec's
    ``min_rate_share``) on the routers' published p99 against the limit in the budget's row,
    and writes where it stands to that row, which ``status`` shows."""

    def __init__(self, catalog: Catalog, wall: Callable[[], float] = time.time) -> None:
        self.catalog = catalog
        self.wall = wall
        self.shares: dict[tuple[str, str], float] = {}
        self._controllers: dict[str, PaceController] = {}
        self._latencies: Latencies | None = None

    def share(self, tenant: str, collection: str) -> float:
        """The share of the shadow reads to mirror now (read on the request path)."""
        return self.shares.get((tenant, collection), 1.0)

    def update(self, tenant: str, collection: str, migration_id: str | None) -> float:
        """Decide the share from the latest published latencies; returns it."""
        key = (tenant, collection)
        if self._latencies is None:
            self._latencies = Latencies(self.catalog)
        state = None if migration_id is None else self._latencies.budget(migration_id)
        if migration_id is None or state is None:  # no budget (its row is made as it prepares)
            self.shares.pop(key, None)
            return 1.0
        controller = self._controllers.get(migration_id)
        if controller is None:
            controller = PaceController(min_share=self._min_share(migration_id))
            self._controllers[migration_id] = controller
        now = self.wall()
        reading = self._latencies.latest(tenant, collection, STALE_SECONDS, now)
        decision = controller.decide(reading, state.limit_ms, now)
        self.shares[key] = decision.share
        if decision.why or decision.throttled != state.throttled:
            why = f"shadow reads mirrored at {100 * decision.share:.0f}%"
            why = f"{why}: {decision.why}" if decision.why else why
            self._latencies.set_budget(migration_id, _decided(state, decision, why, reading, now))
        return decision.share

    def _min_share(self, migration_id: str) -> float:
        """The spec's ``min_rate_share``, or the default when the catalog has no row for the
        migration."""
        default = float(LatencyBudget.model_fields["min_rate_share"].default)
        try:
            spec = self.catalog.get_migration(migration_id)["spec"]
        except NotFoundError:
            return default
        budget = (spec if isinstance(spec, dict) else json.loads(spec)).get("budget") or {}
        return float(budget.get("min_rate_share", default))
