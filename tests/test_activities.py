"""Activities under ActivityEnvironment: resume from the journal, reuse, non-retryable errors,
the spec loaded by its hash, and errors summarised to fit Temporal's failure record."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import ActivityEnvironment

from tests.conftest import Sandbox
from vecmigrate.activities.migration import MigrationActivities
from vecmigrate.data.backfill import open_source, open_target, prepare
from vecmigrate.model.spec import MigrationSpec
from vecmigrate.model.tasks import (
    BuildIndexInput,
    CopyShardInput,
    PrepareInput,
    RoutingStepInput,
    VersionStateStep,
)


class KilledError(Exception):
    """Stands for the worker dying."""


def task(acts: MigrationActivities, spec: MigrationSpec) -> dict[str, Any]:
    """What a task of ``spec``'s migration names, its spec stored as the workflow's first
    ledger entry stores it."""
    acts.specs.store(spec.migration_id, spec)
    return {
        "migration_id": spec.migration_id,
        "spec_hash": spec.spec_hash(),
        "tenant": spec.tenant,
        "region": spec.region,
    }


def _copy_input(
    sandbox: Sandbox, n: int = 3000
) -> tuple[MigrationActivities, MigrationSpec, CopyShardInput]:
    sandbox.seed(n)
    spec = sandbox.spec(batch_size=100, shards={"count": 1})
    acts = MigrationActivities(sandbox.catalog.url)
    shard = prepare(sandbox.catalog, spec, "t").shards[0]
    return acts, spec, CopyShardInput(**task(acts, spec), shard=shard)


def killed(exc: pytest.ExceptionInfo[ApplicationError]) -> bool:
    """The activity stopped because its worker "died" (the boundary typed the error)."""
    return exc.value.type == "KilledError" and not exc.value.non_retryable


def copy_killed_at_heartbeat(acts: MigrationActivities, inp: CopyShardInput, n: int) -> list[Any]:
    """Run the copy of ``inp`` until its worker "dies" at its ``n``-th heartbeat (after the
    ``n``-th batch was written); the details of the heartbeats it sent."""
    beats: list[Any] = []

    def die_at_n(*details: Any) -> None:
        if threading.current_thread().name == "heartbeat":
            # The keepalive thread repeating the latest details on a slow machine: the copy
            # itself is where the worker dies (raised there, it would only end that thread).
            return
        beats.append(details[0])
        if len(beats) == n:
            raise KilledError()

    env = ActivityEnvironment()
    env.on_heartbeat = die_at_n
    with pytest.raises(ApplicationError) as died:
        env.run(acts.copy_shard, inp)
    assert killed(died)
    return beats


def copy_killed_in_write(
    monkeypatch: pytest.MonkeyPatch,
    store_type: type[Any],
    acts: MigrationActivities,
    inp: CopyShardInput,
    n: int = 7,
) -> None:
    """Run the copy of ``inp`` until its target store's ``n``-th write "dies" inside the call,
    before the write commits; the store's writes are real again afterwards."""
    real = store_type.write
    calls = {"n": 0}

    def dies_in_the_nth(self: Any, records: Any, **turns: Any) -> int:
        calls["n"] += 1
        if calls["n"] == n:
            raise KilledError()  # before the transaction commits
        return real(self, records, **turns)

    monkeypatch.setattr(store_type, "write", dies_in_the_nth)
    with pytest.raises(ApplicationError) as died:
        ActivityEnvironment().run(acts.copy_shard, inp)
    assert killed(died)
    monkeypatch.setattr(store_type, "write", real)


def retry() -> ActivityEnvironment:
    """An environment running an activity's second attempt."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=2)
    return env


def test_copy_killed_after_a_batch_resumes_from_the_journal(sandbox: Sandbox) -> None:
    acts, spec, inp = _copy_input(sandbox)
    shard = inp.shard
    beats = copy_killed_at_heartbeat(acts, inp, 5)
    assert beats[-1]["copied"] == 500
    assert open_target(spec).count() == 500

    # The retry gets no heartbeat details at all (Temporal may not have received the last
    # ones): the journal alone says where to go on.
    resumed = retry()
    later: list[Any] = []
    resumed.on_heartbeat = lambda *d: later.append(d[0])
    result = resumed.run(acts.copy_shard, inp)
    # The journal pointed at the start of the fifth batch (it may not have committed): that
    # one batch is copied again, nothing before it.
    assert result.batches == 26
    assert later[0]["copied"] == 500
    assert result.copied == 3000
    assert result.attempts == 2
    assert result.recopied == 100
    assert result.checksum == open_source(spec).checksum(shard)
    assert open_target(spec).count() == 3000


def test_copy_killed_inside_a_write_loses_nothing_and_recopies_one_batch(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vecmigrate.stores.builtin import BuiltinStore

    acts, spec, inp = _copy_input(sandbox)
    copy_killed_in_write(monkeypatch, BuiltinStore, acts, inp)
    assert open_target(spec).count() == 600
    result = ActivityEnvironment().run(acts.copy_shard, inp)
    assert result.copied == 3000
    assert result.recopied == 100
    assert result.checksum == open_source(spec).checksum(inp.shard)
    # A finished shard run again is not copied again: the journal returns its result.
    again = ActivityEnvironment().run(acts.copy_shard, inp)
    assert again.checksum == result.checksum
    assert again.batches == result.batches
    assert again.attempts == 3


def test_a_cancel_during_a_write_lets_the_write_finish_and_stops_at_the_next_heartbeat(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancellation is never thrown into a store call: an exception raised inside a client
    library (a gRPC channel between taking its lock and the block that releases it) leaves the
    client unusable for every later call in the worker. The write under way finishes, the copy
    stops at the batch's heartbeat, and the journal resumes it after that batch."""
    from vecmigrate.stores.builtin import BuiltinStore

    acts, spec, inp = _copy_input(sandbox)
    real = BuiltinStore.write
    inside, writes = threading.Event(), {"started": 0, "finished": 0}
    env = ActivityEnvironment()

    def slow_third(self: BuiltinStore, records: Any, **turns: Any) -> int:
        writes["started"] += 1
        if writes["started"] == 3:
            inside.set()
            for _ in range(50):  # Python bytecode, where a thrown exception would land
                time.sleep(0.01)
        written = real(self, records, **turns)
        writes["finished"] += 1
        return written

    monkeypatch.setattr(BuiltinStore, "write", slow_third)
    canceller = threading.Thread(target=lambda: inside.wait(10) and env.cancel())
    canceller.start()
    with pytest.raises(CancelledError):
        env.run(acts.copy_shard, inp)
    canceller.join()
    assert writes == {"started": 3, "finished": 3}
    assert open_target(spec).count() == 300

    monkeypatch.setattr(BuiltinStore, "write", real)
    result = ActivityEnvironment().run(acts.copy_shard, inp)
    assert result.copied == 3000
    assert result.checksum == open_source(spec).checksum(inp.shard)


def test_build_reuses_a_finished_artifact(sandbox: Sandbox) -> None:
    sandbox.seed(2000)
    spec = sandbox.spec(shards={"count": 1})
    acts = MigrationActivities(sandbox.catalog.url, build_threads=1)
    shard = prepare(sandbox.catalog, spec, "t").shards[0]
    env = ActivityEnvironment()
    env.run(acts.copy_shard, CopyShardInput(**task(acts, spec), shard=shard))
    first = env.run(acts.build_shard_index, BuildIndexInput(**task(acts, spec), shard=shard))
    second = env.run(acts.build_shard_index, BuildIndexInput(**task(acts, spec), shard=shard))
    assert not first.reused
    assert second.reused
    assert second.sha256 == first.sha256
    assert second.uri == first.uri


def test_precondition_failures_are_not_retried(sandbox: Sandbox) -> None:
    sandbox.seed(500)
    acts = MigrationActivities(sandbox.catalog.url)
    # The catalog registered v1 with the l2 metric; this spec claims inner product.
    spec = sandbox.spec(
        source=sandbox.version("v1", {"kind": "faiss_flat"}, metric="ip").model_dump(mode="json"),
        target=sandbox.version("v2", {"kind": "faiss_flat"}, metric="ip").model_dump(mode="json"),
    )
    with pytest.raises(ApplicationError) as exc:
        ActivityEnvironment().run(acts.prepare, PrepareInput(**task(acts, spec)))
    assert exc.value.non_retryable
    assert exc.value.type == "PreconditionError"
    assert "source.embedding does not match the catalog" in str(exc.value)
    # Nothing was written: the target version is not registered.
    assert sandbox.catalog.find_version("default", "docs", "v2") is None


def test_ivf_target_too_large_for_the_shards_is_refused_up_front(sandbox: Sandbox) -> None:
    sandbox.seed(500)
    acts = MigrationActivities(sandbox.catalog.url)
    spec = sandbox.spec(
        target=sandbox.version(
            "v2", {"kind": "faiss_ivf_flat", "nlist": 1024, "nprobe": 8}
        ).model_dump(mode="json")
    )
    with pytest.raises(ApplicationError, match="lower nlist \\(or nbits\\) or use fewer shards"):
        ActivityEnvironment().run(acts.prepare, PrepareInput(**task(acts, spec)))
    assert sandbox.catalog.find_version("default", "docs", "v2") is None


def test_a_task_names_its_spec_by_hash_and_an_altered_spec_is_refused(sandbox: Sandbox) -> None:
    from sqlalchemy import update

    from vecmigrate.catalog.specs import applied_specs

    acts, spec, inp = _copy_input(sandbox, n=500)
    # The spec is not in the task: only what identifies the work.
    assert set(inp.model_dump()) == {"migration_id", "spec_hash", "tenant", "region", "shard"}
    assert ActivityEnvironment().run(acts.copy_shard, inp).copied == 500

    # A task naming a spec this catalog never stored is refused, not retried.
    other = inp.model_copy(update={"spec_hash": "0" * 64})
    with pytest.raises(ApplicationError) as refused:
        ActivityEnvironment().run(acts.copy_shard, other)
    assert refused.value.type == "SpecMismatchError"
    assert refused.value.non_retryable
    assert "holds no spec 000000000000" in refused.value.message

    # Edited in the catalog behind the migration's back: the stored spec no longer hashes to
    # the name the tasks use, and a worker that has not verified it yet refuses it.
    altered = spec.model_dump(mode="json")
    altered["batch_size"] = 7
    with sandbox.catalog.engine.begin() as conn:
        conn.execute(
            update(applied_specs)
            .where(applied_specs.c.spec_hash == inp.spec_hash)
            .values(spec=altered)
        )
    fresh = MigrationActivities(sandbox.catalog.url)
    with pytest.raises(ApplicationError) as edited:
        ActivityEnvironment().run(fresh.copy_shard, inp)
    assert edited.value.type == "SpecMismatchError"
    assert edited.value.non_retryable
    assert "it was altered in the catalog" in edited.value.message


def test_a_task_of_an_earlier_release_carrying_its_spec_still_runs(sandbox: Sandbox) -> None:
    """Tasks scheduled before this release carry the whole spec; the spec was in the
    migration's first ledger entry, which is where it is found."""
    sandbox.seed(500)
    spec = sandbox.spec(shards={"count": 1})
    shard = prepare(sandbox.catalog, spec, "t").shards[0]
    sandbox.catalog.append(
        tenant=spec.tenant,
        collection=spec.collection,
        kind="migration.started",
        actor="earlier-release",
        migration_id=spec.migration_id,
        data={"spec": spec.model_dump(mode="json")},
        event_key=f"{spec.migration_id}/started",
    )
    legacy = CopyShardInput.model_validate(
        {"migration_id": spec.migration_id, "spec": spec.model_dump(mode="json"), "shard": shard}
    )
    assert legacy.spec_hash == spec.spec_hash()
    acts = MigrationActivities(sandbox.catalog.url)
    assert ActivityEnvironment().run(acts.copy_shard, legacy).copied == 500


def test_an_error_is_typed_and_cut_to_fit_temporals_failure_record(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vecmigrate.errors import SUMMARY_CHARS
    from vecmigrate.stores.builtin import BuiltinStore

    acts, _, inp = _copy_input(sandbox, n=500)

    def unreachable(self: BuiltinStore, records: Any, **turns: Any) -> int:
        raise ConnectionError("server closed the connection unexpectedly " + "x" * 20_000)

    monkeypatch.setattr(BuiltinStore, "write", unreachable)
    with pytest.raises(ApplicationError) as failed:
        ActivityEnvironment().run(acts.copy_shard, inp)
    err = failed.value
    assert err.type == "ConnectionError"
    assert not err.non_retryable  # a store may come back: Temporal retries it
    assert err.message.startswith("server closed the connection unexpectedly")
    assert len(err.message) < SUMMARY_CHARS + 100
    assert "more characters in the worker's log" in err.message
    assert err.__cause__ is None  # no chained stack trace travels with it


def test_a_routing_step_retried_after_a_failure_completes_it_and_writes_nothing_twice(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``routing_step`` (the routing change, its entry, the version states and theirs in one
    task) fails between its writes on the first attempt; the retry completes what is left, and
    a third run of the same input finds everything where the second left it."""
    sandbox.seed(200)
    spec = sandbox.spec()
    acts = MigrationActivities(sandbox.catalog.url)
    prepare(sandbox.catalog, spec, "t")  # registers the target, building
    catalog = sandbox.catalog
    before = catalog.get_routing("default", "docs")
    assert before is not None
    scope = {"migration_id": spec.migration_id, "tenant": "default", "collection": "docs"}
    inp = RoutingStepInput(
        **scope,
        expected_generation=before.generation,
        read_version="v2",
        read_index=None,
        write_versions=["v2", "v1"],
        operator="alice",
        reason="cut-over: reads move to the target",
        change_key=f"{spec.migration_id}/run/cutover/1",
        event_key=f"{spec.migration_id}/run/2",
        states=[
            VersionStateStep(version="v2", state="serving", event_key=f"{spec.migration_id}/run/3"),
            VersionStateStep(version="v1", state="standby", event_key=f"{spec.migration_id}/run/4"),
        ],
    )
    real = catalog.set_version_state
    failed: list[str] = []

    def fails_once_on_v1(tenant: str, collection: str, version: str, state: str) -> None:
        if version == "v1" and not failed:
            failed.append(version)
            raise ConnectionError("catalog connection lost")
        real(tenant, collection, version, state)

    monkeypatch.setattr(acts.catalog, "set_version_state", fails_once_on_v1)
    env = ActivityEnvironment()
    with pytest.raises(ApplicationError) as first:
        env.run(acts.routing_step, inp)
    assert first.value.type == "ConnectionError"
    assert not first.value.non_retryable
    done = env.run(acts.routing_step, inp)
    again = env.run(acts.routing_step, inp)
    assert again == done
    assert done.routing.generation == before.generation + 1
    assert done.routing.read_version == "v2"
    assert done.routing.write_versions == ["v2", "v1"]
    states = {v.version: v.state for v in catalog.versions_of("default", "docs")}
    assert states == {"v1": "standby", "v2": "serving"}
    entries = [e for e in catalog.entries(spec.migration_id) if e.event_key in _keys(inp)]
    assert [(e.kind, e.actor) for e in entries] == [
        ("routing.changed", "alice"),
        ("version.state", "alice"),
        ("version.state", "alice"),
    ]
    assert entries[0].data["reason"] == inp.reason
    assert entries[0].data["generation"] == before.generation + 1
    assert [e.data for e in entries[1:]] == [
        {"version": "v2", "state": "serving"},
        {"version": "v1", "state": "standby"},
    ]
    assert [a.seq for a in done.acks] == [e.seq for e in entries]


def _keys(inp: RoutingStepInput) -> set[str]:
    return {inp.event_key, *(s.event_key for s in inp.states)}
