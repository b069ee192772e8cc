"""The migration workflow: one execution is one migration, from PLANNED to a terminal phase.

It walks its strategy's phases as the lifecycle table lists them; each phase's work is one
module of this package (preparing, copying, indexing, validating, shadowing, cutting_over,
ending) and what they share is ``core``. A migration that rolled back or was aborted fails its
execution with a typed error (``MigrationRolledBack``, ``MigrationAborted``) whose details are
its final status, so Temporal's list and UI tell it apart from a completed one.

Operators steer it by signal (``pause``, ``resume``, ``approve_cutover``, ``rollback``,
``abort``) and update (``set_throttle``, ``set_ramp``, ``set_gate``), each carrying who sent it
and why, and read it with the ``status`` query.

Deterministic: it imports only temporalio, the standard library and vecmigrate's pure models.
Data never flows through it; activities get ids, shard ranges and URIs and return counts and
checksums.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from temporalio import workflow

from vecmigrate.workflows.copying import Copying
from vecmigrate.workflows.core import HistoryFullError, StopRequestedError
from vecmigrate.workflows.cutting_over import CuttingOver
from vecmigrate.workflows.ending import Ending
from vecmigrate.workflows.indexing import Indexing
from vecmigrate.workflows.preparing import Preparing
from vecmigrate.workflows.shadowing import Shadowing

with workflow.unsafe.imports_passed_through():
    from vecmigrate.model.lifecycle import TERMINAL, Phase
    from vecmigrate.model.status import Carried, MigrationInput, MigrationStatus
    from vecmigrate.workflows.identity import caller


@workflow.defn(name="MigrationWorkflow")
class MigrationWorkflow(Preparing, Copying, Indexing, Shadowing, CuttingOver, Ending):
    """The lifecycle of one migration (see the module's docstring)."""

    @workflow.init
    def __init__(self, inp: MigrationInput) -> None:
        self._setup(inp)

    @workflow.query(name="status")
    def status(self) -> MigrationStatus:
        """Phase, pause flag, per-shard progress, gates, routing and operator actions."""
        return self._shown()

    @workflow.run
    async def run(self, inp: MigrationInput) -> MigrationStatus:
        spec = self._spec
        src, dst = spec.source.embedding, spec.target.embedding
        if inp.carried is None and self._roles:
            self._status.started_by = caller()
        if inp.carried is None:
            # The one payload that carries the spec: the activity stores it by its hash.
            await self._record(
                "migration.started",
                inp.requested_by,
                {
                    "spec": spec.model_dump(mode="json"),
                    "spec_hash": self._spec_hash,
                    "source": spec.source.name,
                    "target": spec.target.name,
                    "source_model": f"{src.model_id}@{src.model_version}",
                    "target_model": f"{dst.model_id}@{dst.model_version}",
                    "target_index": spec.target.index.model_dump(mode="json"),
                },
                caller=self._status.started_by or None,
            )
        await self._load_policy()
        # Only a spec with maintenance windows (none before they existed) keeps them.
        keeper = asyncio.ensure_future(self._keep_windows()) if spec.windows else None
        try:
            await self._lifecycle(inp)
        except HistoryFullError:
            if keeper is not None:
                keeper.cancel()
            await workflow.wait_condition(workflow.all_handlers_finished)
            workflow.continue_as_new(
                MigrationInput(spec=spec, requested_by=inp.requested_by, carried=self._carry())
            )
        except StopRequestedError:
            assert self._interrupt is not None
            if self._interrupt.action == "rollback":
                await self._roll_back(self._interrupt.message)
            else:
                await self._abort(self._interrupt.message)
        finally:
            if keeper is not None:
                keeper.cancel()
        return await self._finished(spec.migration_id, self._shown)

    def _carry(self) -> Carried:
        return Carried(
            status=self._status,
            shards=self._shards if self._spec.shards.by == "range" else [],
            source_index=self._source_index,
            target_registered=self._target_registered,
            events=self._events,
            interrupt=self._interrupt,
        )

    async def _lifecycle(self, inp: MigrationInput) -> None:
        """Run each phase's work, then move on; a continued run starts at the phase it left."""
        work: dict[Phase, Callable[[MigrationInput], Awaitable[None]]] = {
            Phase.PREPARING: self._prepare,
            Phase.BACKFILLING: self._backfill,
            Phase.CATCHING_UP: self._catching_up,
            Phase.BUILDING_INDEX: self._build_index,
            Phase.VALIDATING: self._validating,
            Phase.SHADOWING: self._shadowing,
            Phase.RAMPING: self._ramping,
            Phase.AWAITING_CUTOVER: self._await_cutover,
            Phase.CUT_OVER: self._cut_over,
            Phase.BAKING: self._bake,
            Phase.FINALIZING: self._finalize,
        }
        if self._status.phase == Phase.PLANNED:
            await self._enter(Phase.PREPARING)
        while self._status.phase not in TERMINAL:
            if self._interrupt is not None:
                if self._reversible():
                    await self._reverse(self._interrupt.message)
                    continue
                raise StopRequestedError()
            if self._history_full():
                raise HistoryFullError()
            phase = self._status.phase
            try:
                await work[phase](inp)
            except StopRequestedError:
                if not self._reversible():
                    raise
                assert self._interrupt is not None
                await self._reverse(self._interrupt.message)
                continue
            actor = self._approver() if phase == Phase.AWAITING_CUTOVER else "vecmigrate"
            await self._enter(self._strategy.after(phase), actor=actor)
