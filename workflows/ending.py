"""ROLLING_BACK, ROLLED_BACK and ABORTED: put reads and writes back on the source and abandon
the target, or stop where the migration stands (never leaving writes refused).

Deterministic: temporalio, the standard library and vecmigrate's pure models only.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

from vecmigrate.workflows.core import ABORT_NAME, MigrationCore

with workflow.unsafe.imports_passed_through():
    from vecmigrate.model.lifecycle import Phase
    from vecmigrate.model.messages import OperatorMessage
    from vecmigrate.model.routing import RoutingView


class Ending(MigrationCore):
    """The ROLLING_BACK and ABORTED boxes."""

    async def _roll_back(self, msg: OperatorMessage) -> None:
        spec = self._spec
        began_cutover = self._status.cutovers > 0 or self._status.phase == Phase.CUT_OVER
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
        if spec.cutover.stable_name is not None and began_cutover:
            await self._name_back(msg)
        if self._status.cutovers:
            await self._set_state(spec.source.name, "serving", msg.operator)
        await self._remove_capture(replay=False)
        if self._target_registered:
            await self._set_state(spec.target.name, "abandoned", msg.operator)
            keep = spec.retention.abandoned_seconds if spec.retention else None
            await self._retain(spec.target.name, "abandoned", keep)
        await self._enter(Phase.ROLLED_BACK, actor=msg.operator)

    async def _name_back(self, msg: OperatorMessage) -> None:
        """Point the stable name back at the source (left absent if it never existed). The
        rollback goes on if it cannot: the error stays in the outcome and the ledger."""
        name = self._spec.cutover.stable_name
        reason = f"rollback: {msg.reason or 'requested'}"
        try:
            await self._point_stable_name("source", msg.operator, reason, create=False)
        except ActivityError as err:
            cause = err.cause
            message = cause.message if isinstance(cause, ApplicationError) else str(cause)
            self._status.error = f"stable name {name} still points at the target: {message}"
            await self._record(
                "step.failed",
                "vecmigrate",
                {"step": "stable name", "error": message, "type": type(cause).__name__},
            )

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
        named = self._spec.cutover.stable_name is not None and (
            self._status.cutovers > 0 or self._status.phase == Phase.CUT_OVER
        )
        if named and workflow.patched(ABORT_NAME):
            await self._name_where_reads_are(msg)
            # Both sides keep what the application wrote by the name until the abort: routing
            # still writes both, and the capture goes only after its last replay.
            await self._remove_capture(replay=True, ending=True)
        else:
            await self._remove_capture(replay=False)
        await self._enter(Phase.ABORTED, actor=msg.operator)

    async def _name_where_reads_are(self, msg: OperatorMessage) -> None:
        """After a cut-over began, the stable name ends on the version routing reads from (the
        abort leaves routing as it stands): the target during the bake, the source when the
        abort came between the name's switch and routing's. The switch drains the capture
        toward that side first; the ledger says where the name ended, moved or not."""
        spec = self._spec
        name = spec.cutover.stable_name
        routing = self._status.routing
        reads = routing.read_version if routing is not None else spec.source.name
        side = "target" if reads == spec.target.name else "source"
        version = spec.target.name if side == "target" else spec.source.name
        reason = f"abort: {msg.reason or 'requested'}; reads stay on {version}"
        failed = ""
        try:
            moved = await self._point_stable_name(side, msg.operator, reason, create=False)
        except ActivityError as err:
            cause = err.cause
            failed = cause.message if isinstance(cause, ApplicationError) else str(cause)
            moved = False
            self._status.error = f"stable name {name} may not point at {version}: {failed}"
        await self._record(
            "stable_name.ended",
            msg.operator,
            {"name": name, "version": version, "moved": moved, "error": failed, "reason": reason},
        )
