"""BACKFILLING and CATCHING_UP: copy the source shard by shard (building each shard's index as
its copy completes, where the index is built next), then replay the change log onto the target
until it is within the spec's lag. The copy's throttle can change while it runs.

Deterministic: temporalio, the standard library and vecmigrate's pure models only.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow

from vecmigrate.workflows.core import MigrationCore

with workflow.unsafe.imports_passed_through():
    from vecmigrate.model.lifecycle import Message, Phase, builds_while_copying
    from vecmigrate.model.messages import ThrottleRequest
    from vecmigrate.model.status import MigrationInput
    from vecmigrate.model.tasks import (
        CatchUpInput,
        CatchUpResult,
        CopyShardInput,
        CopyShardResult,
        ShardRef,
    )


class Copying(MigrationCore):
    """The BACKFILLING and CATCHING_UP boxes."""

    @workflow.update(name="set_throttle")
    async def set_throttle(self, req: ThrottleRequest | float | None) -> float | None:
        """Change the copy throttle (vectors/s over all shards; null lifts it) while copying.

        Takes the request object or a bare number. Running copies pick it up before their next
        batch. Returns the throttle now in force.
        """
        request = ThrottleRequest.of(req)
        self._status.max_vectors_per_second = request.max_vectors_per_second
        await self._note_update(
            Message.SET_THROTTLE,
            request.operator,
            request.reason,
            {"max_vectors_per_second": request.max_vectors_per_second},
        )
        await self._sync_control()
        return self._status.max_vectors_per_second

    @set_throttle.validator
    def _check_throttle(self, req: ThrottleRequest | float | None) -> None:
        self._refuse(Message.SET_THROTTLE, ThrottleRequest.of(req).problem())

    async def _backfill(self, inp: MigrationInput) -> None:
        if self._status.promotion is not None:
            await self._resync()
            return
        if not self._builds_while_copying():
            await self._for_each_shard(self._shards_not_in({"pending", "copying"}), self._copy)
            return
        # Each shard's index is built as soon as its copy is done, while the next shard copies:
        # the copy (one core, mostly in the store) and the build (every core the worker gives
        # it) overlap, and the migration takes less than copy + build. At most
        # ``max_parallel_shards`` copies and as many builds at once, so the window is twice that.
        await self._index_position()
        parallel = self._spec.max_parallel_shards
        copies, builds = asyncio.Semaphore(parallel), asyncio.Semaphore(parallel)
        # Records shared (``records: shared``): the build reads records that are already where
        # it reads them, so it starts beside the shard's pass (which reads and checks them and
        # writes nothing) instead of after it.
        beside = self._spec.records == "shared" and workflow.patched("shared-build-beside-pass")

        async def copy(shard: ShardRef) -> None:
            async with copies:
                await self._copy(shard)

        async def build(shard: ShardRef) -> None:
            async with builds:
                await self._build(shard)

        async def copy_then_build(shard: ShardRef) -> None:
            progress = self._by_shard[shard.index]
            if progress.state not in ("pending", "copying"):
                await build(shard)
            elif beside:
                both = [asyncio.ensure_future(copy(shard)), asyncio.ensure_future(build(shard))]
                try:
                    await asyncio.gather(*both)
                finally:
                    for task in both:
                        task.cancel()  # the other one, when one failed
                progress.state = "indexed"  # whichever of the two ended last
            else:
                await copy(shard)
                await build(shard)

        await self._for_each_shard(
            self._shards_not_in({"pending", "copying", "copied", "indexing"}),
            copy_then_build,
            window=2 * parallel,
        )

    async def _resync(self) -> None:
        """A retained version promoted back: instead of a copy, replay the writes it missed
        (logged after it stopped being written) until a pass finds nothing newer."""
        promotion = self._status.promotion
        assert promotion is not None
        while True:
            result = await self._work(
                "resync",
                "catch_up",
                CatchUpInput(**self._task(), after=promotion.written_until, seconds=60.0),
                CatchUpResult,
                timedelta(minutes=30),
            )
            if result.drained:
                break
        for progress in self._status.shards:
            progress.copied, progress.state = progress.total, "indexed"
        await self._record(
            "promotion.resynced",
            "vecmigrate",
            {"version": promotion.version, "after": promotion.written_until}
            | result.model_dump(mode="json"),
        )

    def _builds_while_copying(self) -> bool:
        """Whether this migration builds each shard's index during the backfill.

        Only where the build comes right after the backfill (no catch-up in between to change
        the target) and builds per shard (a native index is built once, over everything).
        Migrations started before this existed keep building after the backfill (the patch
        marker keeps their replay deterministic).
        """
        return builds_while_copying(self._spec) and workflow.patched("build-while-copying")

    async def _copy(self, shard: ShardRef) -> None:
        progress = self._by_shard[shard.index]
        progress.state = "copying"
        while True:
            result = await self._work(
                f"copy shard {shard.index}",
                "copy_shard",
                CopyShardInput(**self._task(), shard=shard),
                CopyShardResult,
                timedelta(hours=12),
            )
            progress.copied = result.copied
            progress.recopied = result.recopied
            if result.complete:
                break
            await self._wait_unpaused()  # paused between batches: go on from the journal
        progress.total = max(progress.total, result.total)
        progress.checksum = result.checksum
        progress.state = "copied"
        # The last copy done (shards start in order: from the end, one still to copy is found
        # at once until the last few), builds may go on in the phase: the copy's time is kept.
        if self._status.phase == Phase.BACKFILLING and not any(
            p.state in ("pending", "copying") for p in reversed(self._status.shards)
        ):
            self._status.copy_seconds = self._phase_seconds()
        if result.ledger is not None:
            self._anchor(result.ledger)
        self._details()

    async def _catching_up(self, inp: MigrationInput) -> None:
        """Replay the change log from the watermark until a pass finds nothing newer."""
        spec = self._spec
        assert self._status.watermark is not None
        while True:
            result = await self._work(
                "catch up",
                "catch_up",
                CatchUpInput(**self._task(), after=self._status.watermark or 0, seconds=60.0),
                CatchUpResult,
                timedelta(minutes=30),
            )
            self._status.catchup_lag = result.lag
            self._details()
            if result.drained and result.lag <= spec.online.max_catchup_lag:
                await self._record("catchup", "vecmigrate", result.model_dump(mode="json"))
                break
        # Then the writes made to the source table with plain SQL: the source's current rows
        # also correct any the backfill copied before a later write.
        await self._replay_captured("catch up captured writes")
