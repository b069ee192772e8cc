"""Activities under ActivityEnvironment: resume from a heartbeat, reuse, non-retryable errors."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.migration import MigrationActivities
from tests.conftest import Sandbox
from vecmigrate.backfill import open_source, open_target, prepare
from vecmigrate.tasks import BuildIndexInput, CopyShardInput, PrepareInput


class KilledError(Exception):
    """Stands for the worker dying after a heartbeat."""


def test_copy_resumes_from_the_last_heartbeat(sandbox: Sandbox) -> None:
    sandbox.seed(3000)
    spec = sandbox.spec(batch_size=100, shards={"count": 1})
    acts = MigrationActivities(sandbox.catalog.url)
    shard = prepare(sandbox.catalog, spec, "t").shards[0]
    inp = CopyShardInput(migration_id=spec.migration_id, spec=spec, shard=shard)

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

    resumed = ActivityEnvironment()
    resumed.info = dataclasses.replace(resumed.info, heartbeat_details=[beats[-1]], attempt=2)
    later: list[Any] = []
    resumed.on_heartbeat = lambda *d: later.append(d[0])
    result = resumed.run(acts.copy_shard, inp)
    # Only the 25 batches after the cursor were read again; nothing was copied twice.
    assert result.batches == 25
    assert result.copied == 3000
    assert later[0]["copied"] == 600
    assert result.resumed_from is not None
    assert result.checksum == open_source(spec).checksum(shard)


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
