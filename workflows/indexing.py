"""BUILDING_INDEX: build the target's index (per shard into content-addressed artifacts, or
once inside the target database) and register it with the change-log position it covers.

Deterministic: temporalio, the standard library and vecmigrate's pure models only.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

from vecmigrate.workflows.core import MigrationCore

with workflow.unsafe.imports_passed_through():
    from vecmigrate.model.spec import is_native
    from vecmigrate.model.status import MigrationInput
    from vecmigrate.model.tasks import (
        ArtifactRef,
        BuildIndexInput,
        BuildNativeIndexInput,
        IndexRegistered,
        RegisterIndexInput,
        ShardRef,
    )


# The patch that puts the reconcile gate before the index build (runs recorded before it build
# right away).
RECONCILE_GATE = "reconcile-gate"


class Indexing(MigrationCore):
    """The BUILDING_INDEX box."""

    async def _build_index(self, inp: MigrationInput) -> None:
        promotion = self._status.promotion
        if promotion is not None:
            # The retained version's index is reused: its log position is already recorded,
            # and readers overlay what it lacks.
            self._status.index_version = promotion.index_id
            await self._record(
                "index.registered",
                "vecmigrate",
                {"index_id": promotion.index_id, "reused": True, "artifacts": 0, "checksum": ""},
            )
            return
        if workflow.patched(RECONCILE_GATE):
            # After the copy and the catch-up, before anything is built on the target: a shard
            # it repairs after its index was built (during the copy) is built again.
            await self._reconcile_gate()
        native: ArtifactRef | None = None
        position = await self._index_position()
        if is_native(self._spec.target.index):
            # The target database builds its own index over the whole version, once.
            native = await self._work(
                "build native index",
                "build_native_index",
                BuildNativeIndexInput(**self._task()),
                ArtifactRef,
                timedelta(hours=24),
            )
            for progress in self._status.shards:
                progress.state = "indexed"
            await self._record("index.native", "vecmigrate", native.model_dump(mode="json"))
        else:
            await self._for_each_shard(self._shards_not_in({"copied", "indexing"}), self._build)
        registered = await self._work(
            "register_index",
            "register_index",
            # Without artifacts the activity takes every shard's from the shard journal.
            RegisterIndexInput(
                **self._task(), artifacts=[native] if native else [], log_position=position
            ),
            IndexRegistered,
            timedelta(hours=1),
        )
        self._status.index_version = registered.index_id
        await self._record("index.registered", "vecmigrate", registered.model_dump(mode="json"))

    async def _build(self, shard: ShardRef) -> None:
        progress = self._by_shard[shard.index]
        progress.state = "indexing"
        await self._work(
            f"build index of shard {shard.index}",
            "build_shard_index",
            BuildIndexInput(**self._task(), shard=shard),
            ArtifactRef,
            timedelta(hours=12),
        )
        progress.state = "indexed"
        self._status.ledger_entries += 1  # the activity wrote "shard.indexed"
        self._details()

    async def _index_position(self) -> int:
        """The change-log position of the index being built, taken before its first shard is
        built (writes after it may be missing from the index; readers overlay them).

        Kept in the status, so a run continued in the middle of the builds uses the same one: a
        later position would claim writes for the shards the earlier run built.
        """
        if self._status.index_log_position is None:
            self._status.index_log_position = await self._log_head()
        return self._status.index_log_position
