"""PREPARING: check the catalog and register the target, plan the shards, and set where writes
go while the target is built (dual-write on before the snapshot, or writes paused).

Deterministic: temporalio, the standard library and vecmigrate's pure models only.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

from vecmigrate.workflows.core import MigrationCore

with workflow.unsafe.imports_passed_through():
    from vecmigrate.model.status import MigrationInput, ShardProgress
    from vecmigrate.model.tasks import PrepareInput, PrepareResult


# The patch that lets a migration promote a retained version back (a prepare of an earlier
# release never names one).
PROMOTE_RETAINED = "promote-retained"


class Preparing(MigrationCore):
    """The PREPARING box."""

    async def _prepare(self, inp: MigrationInput) -> None:
        spec = self._spec
        prep = await self._work(
            "prepare",
            "prepare",
            PrepareInput(**self._task(), operator=inp.requested_by),
            PrepareResult,
            timedelta(minutes=10),
        )
        self._status.routing = prep.routing
        self._source_index = prep.source_index
        if prep.promotion is not None and workflow.patched(PROMOTE_RETAINED):
            self._status.promotion = prep.promotion
        self._target_registered = True
        self._shards = prep.shards
        self._status.shards = [
            ShardProgress(shard=s.index, total=prep.source_counts.get(s.index, 0))
            for s in prep.shards
        ]
        self._by_shard = {p.shard: p for p in self._status.shards}
        await self._sync_control()
        # Before the snapshot: a write to the source table is either copied or captured.
        await self._install_capture()
        writes = self._strategy.writes
        if writes == "both":
            # The watermark comes first: every write logged after it is replayed after the
            # backfill, including writes in flight while routers learn of dual-write.
            self._status.watermark = await self._log_head()
            await self._set_routing(
                write_versions=[spec.source.name, spec.target.name],
                candidate_version=spec.target.name,
                operator=inp.requested_by,
                reason=f"{spec.strategy}: dual-write on before the snapshot",
                key="dual-write",
            )
        elif writes == "paused":
            await self._set_routing(
                writes_paused=True,
                operator=inp.requested_by,
                reason="offline: writes paused until the switch",
                key="pause-writes",
            )
        if writes != "source":
            # Routers follow the routing row within this bound; after it, all of them do.
            await self._guarded(
                lambda: workflow.sleep(timedelta(seconds=spec.online.settle_seconds))
            )
