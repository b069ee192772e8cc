"""Activities under ActivityEnvironment: resume from the journal, reuse, non-retryable errors."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from tests.conftest import Sandbox
from vecmigrate.activities.migration import MigrationActivities
from vecmigrate.data.backfill import open_source, open_target, prepare
from vecmigrate.model.tasks import BuildIndexInput, CopyShardInput, PrepareInput


class KilledError(Exception):
    """Stands for the worker dying."""


def _copy_input(sandbox: Sandbox, n: int = 3000) -> tuple[MigrationActivities, CopyShardInput]:
    sandbox.seed(n)
    spec = sandbox.spec(batch_size=100, shards={"count": 1})
    acts = MigrationActivities(sandbox.catalog.url)
    shard = prepare(sandbox.catalog, spec, "t").shards[0]
    return acts, CopyShardInput(migration_id=spec.migration_id, spec=spec, shard=shard)


def test_copy_killed_after_a_batch_resumes_from_the_journal(sandbox: Sandbox) -> None:
    acts, inp = _copy_input(sandbox)
    spec, shard = inp.spec, inp.shard
    beats: list[Any] = []

    def die_after_five(*details: Any) -> None:
        beats.append(details[0])
        if len(beats) == 5:
            raise KilledError()

    env = ActivityEnvironment()
    env.on_heartbeat = die_after_five
    with pytest.raises(KilledError):
        env.run(acts.copy_shard, inp)
    assert beats[-1]["copied"] == 500
    assert open_target(spec).count() == 500

    # The retry gets no heartbeat details at all (Temporal may not have received the last
    # ones): the journal alone says where to go on.
    resumed = ActivityEnvironment()
    resumed.info = dataclasses.replace(resumed.info, attempt=2)
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

    acts, inp = _copy_input(sandbox)
    real = BuiltinStore.upsert
    calls = {"n": 0}

    def dies_in_the_seventh(self: BuiltinStore, ids: Any, vectors: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 7:
            raise KilledError()  # before the transaction commits
        real(self, ids, vectors)

    monkeypatch.setattr(BuiltinStore, "upsert", dies_in_the_seventh)
    with pytest.raises(KilledError):
        ActivityEnvironment().run(acts.copy_shard, inp)
    monkeypatch.setattr(BuiltinStore, "upsert", real)
    assert open_target(inp.spec).count() == 600
    result = ActivityEnvironment().run(acts.copy_shard, inp)
    assert result.copied == 3000
    assert result.recopied == 100
    assert result.checksum == open_source(inp.spec).checksum(inp.shard)
    # A finished shard run again is not copied again: the journal returns its result.
    again = ActivityEnvironment().run(acts.copy_shard, inp)
    assert again.checksum == result.checksum
    assert again.batches == result.batches
    assert again.attempts == 3


def test_build_reuses_a_finished_artifact(sandbox: Sandbox) -> None:
    sandbox.seed(2000)
    spec = sandbox.spec(shards={"count": 1})
    acts = MigrationActivities(sandbox.catalog.url, build_threads=1)
    shard = prepare(sandbox.catalog, spec, "t").shards[0]
    env = ActivityEnvironment()
    env.run(acts.copy_shard, CopyShardInput(migration_id="m", spec=spec, shard=shard))
    first = env.run(
        acts.build_shard_index, BuildIndexInput(migration_id="m", spec=spec, shard=shard)
    )
    second = env.run(
        acts.build_shard_index, BuildIndexInput(migration_id="m", spec=spec, shard=shard)
    )
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
        ActivityEnvironment().run(acts.prepare, PrepareInput(migration_id="m", spec=spec))
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
        ActivityEnvironment().run(acts.prepare, PrepareInput(migration_id="m", spec=spec))
    assert sandbox.catalog.find_version("default", "docs", "v2") is None
