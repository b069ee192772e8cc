"""The operator's signals, written once for both workflows (one migration, and a regional one).

Each signal is judged first against the operator roles (the sender's identity, from its
connection, must hold the role the message needs on the migration's tenant and collection) and
then against the lifecycle table where the workflow stands: applied, or recorded and ignored
with the reason, which ``status`` lists beside who sent it and the ledger keeps with the sender's
identity. Runs started by an earlier release applied every signal; they keep doing so until they
end or continue as new (:data:`RULES`, :data:`ROLES`), so their histories replay unchanged.

Deterministic: temporalio, the standard library and vecmigrate's pure models only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from vecmigrate.model.access import WORKFLOW_CALLER, AccessPolicy, authorize
    from vecmigrate.model.lifecycle import OUTCOMES, Message, Phase, Ruling
    from vecmigrate.model.messages import OperatorMessage
    from vecmigrate.model.status import OperatorAction
    from vecmigrate.workflows.identity import caller

# The patch behind which a run judges messages by the lifecycle table, ends a rollback or an
# abort as a failed execution, and follows the table's offline path. Checked once, when a run
# starts: a run that began without it keeps the earlier release's behaviour to its end.
RULES = "lifecycle-table"
# The patch behind which a run loads the operator roles and checks every message against them.
ROLES = "operator-roles"


class _Finished(Protocol):
    """A workflow's status where its run ends."""

    phase: Phase
    outcome: str


S = TypeVar("S", bound=_Finished)


class OperatorSignals:
    """The five signals; a workflow says what each means where it stands.

    A subclass sets ``self._rules`` at start (``workflow.patched(RULES)``) and implements
    :meth:`_ruling`, :meth:`_apply`, :meth:`_follow_up`, :meth:`_record` and
    :meth:`_operators`.
    """

    _rules: bool
    # Set at start (``workflow.patched(ROLES)``); the policy is reloaded as the run goes on.
    _roles: bool
    _policy: AccessPolicy

    @workflow.signal(name="pause")
    async def pause(self, msg: OperatorMessage | None = None) -> None:
        """Stop starting new work after the steps in flight finish."""
        await self._signal(Message.PAUSE, msg or OperatorMessage())

    @workflow.signal(name="resume")
    async def resume(self, msg: OperatorMessage | None = None) -> None:
        """Go on after a pause (a failed step is tried again; a failed gate is judged again
        when something changed)."""
        await self._signal(Message.RESUME, msg or OperatorMessage())

    @workflow.signal(name="approve_cutover")
    async def approve_cutover(self, msg: OperatorMessage | None = None) -> None:
        """Allow the switch of reads to the target (before the gates passed only with
        ``preapprove``)."""
        await self._signal(Message.APPROVE_CUTOVER, msg or OperatorMessage())

    @workflow.signal(name="rollback")
    async def rollback(self, msg: OperatorMessage | None = None) -> None:
        """Return reads to the source version and abandon the target (a regional migration:
        one ``region``'s children, or all)."""
        await self._signal(Message.ROLLBACK, msg or OperatorMessage())

    @workflow.signal(name="abort")
    async def abort(self, msg: OperatorMessage | None = None) -> None:
        """Stop where the migration stands; routing is left as it is (writes resume)."""
        await self._signal(Message.ABORT, msg or OperatorMessage())

    async def _finished(self, migration_id: str, final: Callable[[], S]) -> S:
        """What a run returns once every signal handler has finished: its ``final`` status, or
        (under :data:`RULES`) the error its outcome names, carrying that status: a rolled-back
        or aborted migration fails its execution."""
        await workflow.wait_condition(workflow.all_handlers_finished)
        status = final()
        error = OUTCOMES[status.phase].error
        if error is not None and self._rules:
            raise ApplicationError(
                f"{migration_id} {status.outcome}", status, type=error, non_retryable=True
            )
        return status

    async def _signal(self, message: Message, msg: OperatorMessage) -> None:
        ruling = self._access(str(message))
        if ruling is None:
            ruling = await self._ruling(message, msg) if self._rules else Ruling(True)
        if ruling.accepted:
            await self._apply(message, msg, ruling)
        await self._note(message, msg, ruling)
        if ruling.accepted:
            await self._follow_up(message, msg)

    async def _note(
        self,
        message: Message,
        msg: OperatorMessage,
        ruling: Ruling,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Keep the message in the status and the ledger, with what became of it."""
        outcome = "applied" if ruling.accepted else "ignored"
        self._operators().append(
            OperatorAction(
                at=workflow.now().isoformat(),
                operator=msg.operator,
                action=str(message),
                reason=msg.reason,
                outcome=outcome,
                note=ruling.reason,
            )
        )
        data: dict[str, Any] = {
            "action": str(message),
            "reason": msg.reason,
            "phase": self._phase_now(),
            **(extra or {}),
        }
        if msg.region is not None:
            data["region"] = msg.region
        if ruling.reason:
            data["outcome"] = outcome
            data["note"] = ruling.reason
        await self._record("operator", msg.operator, data, caller=caller())

    async def _note_update(
        self, message: Message, operator: str, reason: str, extra: dict[str, Any]
    ) -> None:
        """Keep an operator's update (applied as asked: its validator refuses what it cannot
        apply) in the status and the ledger, with ``extra`` saying what it set."""
        await self._note(
            message, OperatorMessage(operator=operator, reason=reason), Ruling(True), extra
        )

    def _access(self, action: str) -> Ruling | None:
        """A refusal when the sender may not send ``action`` here (None: it may).

        A message a workflow's parent forwards is taken on the parent's word: the parent
        checked its sender.
        """
        if not self._roles:
            return None
        who = caller()
        parent = workflow.info().parent
        if parent is not None and who == f"{WORKFLOW_CALLER}{parent.workflow_id}":
            return None
        for tenant in self._tenants_in_scope():
            decision = authorize(
                self._policy, who, action, tenant, self._collection(), self._started_by()
            )
            if not decision.allowed:
                return Ruling(False, f"not allowed: {decision.reason}")
        return None

    def _tenants_in_scope(self) -> list[str]:
        """The tenants whose roles a message needs (every tenant the migration touches)."""
        raise NotImplementedError

    def _collection(self) -> str:
        raise NotImplementedError

    def _started_by(self) -> str:
        """The identity that started the migration (for the four-eyes rule)."""
        raise NotImplementedError

    async def _ruling(self, message: Message, msg: OperatorMessage) -> Ruling:
        """Whether ``message`` means something now (see ``lifecycle.rule``)."""
        raise NotImplementedError

    async def _apply(self, message: Message, msg: OperatorMessage, ruling: Ruling) -> None:
        """What an accepted message changes, before it is recorded."""
        raise NotImplementedError

    async def _follow_up(self, message: Message, msg: OperatorMessage) -> None:
        """What an accepted message sets going once it is recorded."""
        raise NotImplementedError

    async def _record(
        self, kind: str, actor: str, data: dict[str, Any], caller: str | None = None
    ) -> None:
        """Append a ledger entry (``caller``: the identity of the message's sender)."""
        raise NotImplementedError

    def _operators(self) -> list[OperatorAction]:
        """The status's list of operator actions."""
        raise NotImplementedError

    def _phase_now(self) -> str:
        """The phase the workflow stands in."""
        raise NotImplementedError
