"""The shard copy on its own: pause between batches, throttle, and bad data that writes nothing."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select, update

from tests.conftest import Sandbox
from vecmigrate.catalog.journal import Journal
from vecmigrate.data.backfill import Throttle, copy_shard, open_source, open_target, prepare
from vecmigrate.errors import DataError
from vecmigrate.model.messages import ThrottleRequest
from vecmigrate.model.spec import MigrationSpec
from vecmigrate.model.tasks import Cursor, ShardRef
from vecmigrate.stores.builtin import namespaces, vectors


class FakeClock:
    """Time that moves only when the copy sleeps (copying itself takes no time)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _one_shard(sandbox: Sandbox, n: int = 3000, **spec: Any) -> tuple[MigrationSpec, ShardRef]:
    sandbox.seed(n)
    s = sandbox.spec(batch_size=100, shards={"count": 1}, **spec)
    return s, prepare(sandbox.catalog, s, "t").shards[0]


def test_pause_stops_the_copy_before_the_next_batch_and_resume_goes_on(
    sandbox: Sandbox,
) -> None:
    spec, shard = _one_shard(sandbox)
    journal = Journal(sandbox.catalog)

    def pause_after_three(cursor: Cursor, copied: int, _: Any) -> None:
        if copied == 300:
            journal.set_control(spec.migration_id, paused=True, max_vectors_per_second=None)

    stopped = copy_shard(spec, shard, journal, pause_after_three)
    assert not stopped.complete
    assert stopped.copied == 300  # not one batch more
    assert open_target(spec).count() == 300

    journal.set_control(spec.migration_id, paused=False, max_vectors_per_second=None)
    done = copy_shard(spec, shard, journal)
    assert done.complete
    assert done.copied == 3000
    assert done.recopied == 0  # a pause commits its cursor: nothing is copied twice
    assert done.checksum == open_source(spec).checksum(shard)


def test_throttle_holds_the_rate_and_follows_a_change(sandbox: Sandbox) -> None:
    spec, shard = _one_shard(sandbox, max_vectors_per_second=1000.0)
    journal = Journal(sandbox.catalog)
    journal.set_control(spec.migration_id, paused=False, max_vectors_per_second=1000.0)
    clock = FakeClock()

    def speed_up_halfway(cursor: Cursor, copied: int, _: Any) -> None:
        if copied == 1500:
            journal.set_control(spec.migration_id, paused=False, max_vectors_per_second=5000.0)

    result = copy_shard(spec, shard, journal, speed_up_halfway, clock.sleep, lambda: clock.now)
    assert result.copied == 3000
    # 1,500 vectors at 1,000/s, then 1,500 at 5,000/s.
    assert clock.now == pytest.approx(1500 / 1000 + 1500 / 5000)
    assert max(clock.sleeps) <= 1.0  # sleeps in short steps, reading the control each time


def test_throttle_delay_is_measured_from_the_last_change() -> None:
    t = [0.0]
    throttle = Throttle(lambda: t[0])
    assert throttle.delay(None, 1000) == 0
    assert throttle.delay(100.0, 100) == pytest.approx(1.0)
    t[0] += 1.0
    assert throttle.delay(100.0, 100) == pytest.approx(1.0)
    assert throttle.delay(1000.0, 100) == pytest.approx(0.1)  # a new rate starts afresh


@pytest.mark.parametrize("rate", [0.0, -5.0, math.nan, math.inf])
def test_throttle_request_refuses_nonsense(rate: float) -> None:
    problem = ThrottleRequest(max_vectors_per_second=rate).problem()
    assert problem is not None
    assert "positive, finite" in problem
    assert ThrottleRequest(max_vectors_per_second=None).problem() is None
    assert ThrottleRequest(max_vectors_per_second=250.0).problem() is None


def poison(sandbox: Sandbox, spec: MigrationSpec, record_id: int) -> None:
    """Write NaN into one stored source vector behind the store's back (a corrupt source)."""
    store = open_source(spec)
    engine = store.engine  # type: ignore[attr-defined]
    with engine.begin() as conn:
        ns = conn.execute(
            select(namespaces.c.ns).where(namespaces.c.version == spec.source.name)
        ).scalar_one()
        bad = np.full(spec.source.embedding.dimension, np.nan, dtype="<f4").tobytes()
        conn.execute(
            update(vectors)
            .where((vectors.c.ns == ns) & (vectors.c.id == record_id))
            .values(vec=bad)
        )


def test_nan_in_the_source_stops_the_copy_with_nothing_of_that_batch_written(
    sandbox: Sandbox,
) -> None:
    spec, shard = _one_shard(sandbox)
    journal = Journal(sandbox.catalog)
    ids = next(iter(open_source(spec).iter_shard(shard, 10_000))).ids
    victim = int(ids[1234])  # in the 13th batch
    poison(sandbox, spec, victim)
    with pytest.raises(DataError) as exc:
        copy_shard(spec, shard, journal)
    message = str(exc.value)
    assert f"[{victim}]" in message
    assert "NaN or infinity" in message
    assert "shard 0" in message
    assert open_target(spec).count() == 1200  # the twelve batches before it, nothing more
    state = journal.copy_state(spec.migration_id, shard.index)
    assert state is not None
    assert state.copied == 1200
    assert state.handed == 1200
