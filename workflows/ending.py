"""ROLLING_BACK, ROLLED_BACK and ABORTED: put reads and writes back on the source and abandon
the target, or stop where the migration stands (never leaving writes refused).

Deterministic: temporalio, the standard library and vecmigrate's pure models only.
"""

from __future__ import annotations

from temporalio import workflow

from vecmigrate.workflows.core import MigrationCore

with workflow.unsafe.imports_passed_through():
    from vecmigrate.model.lifecycle import Phase
    from vecmigrate.model.messages import OperatorMessage
    from vecmigrate.model.routing import RoutingView


class Ending(MigrationCore):
    """The ROLLING_BACK and ABORTED boxes."""

    async def _roll_back(self, msg: OperatorMessage) -> None:
        spec = self._spec
        await self._enter(Phase.ROLLING_BACK, actor=msg.operator)
        self._status.paused = False
        routing = self._status.routing
        back = RoutingView(
            read_version=spec.source.name,
            read_index=self._source_index,
            write_versions=[spec.source.name],
            generation=routing.generation if routing else 0,
        )
        if routing is not None and routing != back:
            await self._set_routing(
                operator=msg.operator,
                reason=f"rollback: {msg.reason or 'requested'}",
                key="rollback",
            )
        if self._status.cutovers:
            await self._set_state(spec.source.name, "serving", msg.operator)
        await self._remove_capture(replay=False)
        if self._target_registered:
            await self._set_state(spec.target.name, "abandoned", msg.operator)
            keep = spec.retention.abandoned_seconds if spec.retention else None
            await self._retain(spec.target.name, "abandoned", keep)
        await self._enter(Phase.ROLLED_BACK, actor=msg.operator)

    async def _abort(self, msg: OperatorMessage) -> None:
        self._status.paused = False
        routing = self._status.routing
        if routing is not None and routing.writes_paused:
            # Stop where it stands, but never leave the collection refusing writes.
            await self._set_routing(
                read_version=routing.read_version,
                read_index=routing.read_index,
                write_versions=routing.write_versions,
                operator=msg.operator,
                reason="abort: writes resume",
                key="abort",
            )
        await self._remove_capture(replay=False)
        await self._enter(Phase.ABORTED, actor=msg.operator)
