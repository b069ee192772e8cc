"""Operator roles: the pure check every signal handler and update validator calls."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from tests.conftest import Sandbox, running_worker
from tests.test_workflow import wait_for
from vecmigrate.control.client import MigrationClient
from vecmigrate.errors import MessageRefusedError
from vecmigrate.model.access import REQUIRED, AccessPolicy, Role, RoleBinding, authorize
from vecmigrate.model.lifecycle import Phase
from vecmigrate.model.messages import GateRequest, OperatorMessage, RampRequest
from vecmigrate.workers.connection import TemporalSettings, connect

POLICY = AccessPolicy(
    bindings=(
        RoleBinding(identity="viv@ops", role=Role.VIEWER),
        RoleBinding(identity="olga@ops", role=Role.OPERATOR, tenant="acme"),
        RoleBinding(identity="*@approvers.example", role=Role.APPROVER, tenant="acme"),
        RoleBinding(identity="ann@ops", role=Role.APPROVER, tenant="acme", collection="docs"),
        RoleBinding(identity="olga@ops", role=Role.APPROVER, tenant="globex"),
    ),
    four_eyes=True,
)

OPERATOR_MESSAGES = ("pause", "resume", "set_throttle")
APPROVER_MESSAGES = ("approve_cutover", "set_ramp", "rollback", "abort")


@pytest.mark.parametrize("action", sorted(REQUIRED))
def test_each_message_needs_its_role(action: str) -> None:
    def allowed(who: str | None, tenant: str = "acme", collection: str = "docs") -> bool:
        return authorize(POLICY, who, action, tenant, collection).allowed

    assert allowed("viv@ops") == (action == "status")
    assert allowed("olga@ops") == (action == "status" or action in OPERATOR_MESSAGES)
    assert allowed("ann@ops")  # approver on acme/docs
    assert not allowed("ann@ops", collection="other")  # ... and only there
    assert allowed("bob@approvers.example")  # a pattern
    assert not allowed("bob@approvers.example.evil")
    assert allowed("olga@ops", tenant="globex")  # roles are per tenant
    assert not allowed("mallory")
    assert not allowed(None)  # no identity header: unauthenticated
    assert not allowed("")


def test_refusals_say_why() -> None:
    d = authorize(POLICY, "olga@ops", "approve_cutover", "acme", "docs")
    assert not d.allowed
    assert d.reason == "olga@ops is operator on acme/docs; approve_cutover needs approver"
    d = authorize(POLICY, None, "pause", "acme", "docs")
    assert "unauthenticated" in d.reason
    assert "pause needs operator" in d.reason


def test_four_eyes_the_starter_cannot_approve_but_may_roll_back() -> None:
    mine = authorize(POLICY, "ann@ops", "approve_cutover", "acme", "docs", started_by="ann@ops")
    assert not mine.allowed
    assert "four-eyes" in mine.reason
    other = authorize(POLICY, "ann@ops", "approve_cutover", "acme", "docs", started_by="bob")
    assert other.allowed
    assert authorize(POLICY, "ann@ops", "rollback", "acme", "docs", started_by="ann@ops").allowed
    lax = AccessPolicy(bindings=POLICY.bindings, four_eyes=False)
    assert authorize(lax, "ann@ops", "approve_cutover", "acme", "docs", "ann@ops").allowed


def test_no_roles_configured_allows_everything_and_says_so() -> None:
    d = authorize(AccessPolicy(), None, "rollback", "acme", "docs")
    assert d.allowed
    assert d.reason == "no roles are configured"
    with pytest.raises(ValueError, match="unknown message"):
        authorize(AccessPolicy(), "a", "drop_table", "t", "c")


# -- on the dev server: every update and signal checked against the catalog's roles ------------


async def as_identity(env: WorkflowEnvironment, who: str) -> MigrationClient:
    address = env.client.service_client.config.target_host
    client = await connect(settings=TemporalSettings(address=address, identity=who))
    return MigrationClient(client)


def last_action(status: Any, action: str) -> Any:
    return next(a for a in reversed(status.operators) if a.action == action)


async def test_roles_on_every_update_and_signal(env: WorkflowEnvironment, sandbox: Sandbox) -> None:
    catalog = sandbox.catalog
    catalog.grant_role("viv", Role.VIEWER, "default", "docs", "admin")
    catalog.grant_role("olga", Role.OPERATOR, "default", "*", "admin")
    catalog.grant_role("*@approvers", Role.APPROVER, "default", "docs", "admin")
    catalog.set_four_eyes("default", "docs", True, "admin")
    sandbox.seed()
    spec = sandbox.spec(cutover={"mode": "manual", "bake_seconds": 0.2})
    ann, bob = await as_identity(env, "ann@approvers"), await as_identity(env, "bob@approvers")
    viv, olga = await as_identity(env, "viv"), await as_identity(env, "olga")
    async with running_worker(env.client, sandbox) as queue:
        for mc in (ann, bob, viv, olga):
            mc.task_queue = queue
        mid = await ann.start(spec, operator="ann")
        await wait_for(ann, mid, lambda s: s.phase == Phase.AWAITING_CUTOVER, timeout=120)

        # Updates: refused by their validators (nothing in the history), with the reason.
        refusals = {
            "set_throttle": (viv, lambda mc: mc.set_throttle(mid, 500.0, operator="viv")),
            "set_ramp": (olga, lambda mc: mc.handle(mid).execute_update(
                "set_ramp", RampRequest(percent=5.0, operator="olga"))),
            "set_gate": (olga, lambda mc: mc.handle(mid).execute_update(
                "set_gate", GateRequest(gate="recall@10", override=True, reason="x"))),
        }  # fmt: skip
        for name, (who, call) in refusals.items():
            with pytest.raises((WorkflowUpdateFailedError, MessageRefusedError)) as refused:
                await call(who)
            error = refused.value
            why = str(error.cause if isinstance(error, WorkflowUpdateFailedError) else error)
            assert "not allowed" in why, name
            assert f"{name} needs" in why, name
        # An operator passes the role check; the lifecycle then says a throttle means nothing
        # once the copy is over.
        with pytest.raises(MessageRefusedError) as lifecycle:
            await olga.set_throttle(mid, 800.0, operator="olga")
        assert "not allowed" not in str(lifecycle.value)
        assert "nothing is being copied" in str(lifecycle.value)

        # Signals: recorded and ignored, with the reason.
        await viv.signal(mid, "pause", operator="viv")
        await olga.signal(mid, "approve_cutover", operator="olga")
        await ann.signal(mid, "approve_cutover", operator="ann")  # started it: four eyes
        await env.client.get_workflow_handle(mid).signal(  # no identity header at all
            "rollback", OperatorMessage(operator="anyone")
        )
        st = await wait_for(ann, mid, lambda s: len(s.operators) >= 4, timeout=30)
        notes = {(a.operator, a.action): (a.outcome, a.note) for a in st.operators}
        assert notes[("viv", "pause")][0] == "ignored"
        assert "viv is viewer on default/docs; pause needs operator" in notes[("viv", "pause")][1]
        assert notes[("olga", "approve_cutover")][0] == "ignored"
        assert "four-eyes" in notes[("ann", "approve_cutover")][1]
        assert "unauthenticated" in notes[("anyone", "rollback")][1]
        assert not st.paused
        assert st.phase == Phase.AWAITING_CUTOVER
        await bob.signal(mid, "approve_cutover", operator="bob", reason="gates green")
        final = await ann.result(mid, timeout=120)
    assert final.phase == Phase.COMPLETED
    # The ledger keeps who each message said it was from, and who its connection said.
    ops = [e for e in catalog.entries(mid) if e.kind == "operator"]
    pairs = {(e.actor, e.caller) for e in ops}
    assert ("viv", "viv") in pairs
    assert ("bob", "bob@approvers") in pairs
    assert ("anyone", "") in pairs
    started = catalog.entries(mid)[0]
    assert (started.kind, started.actor, started.caller) == (
        "migration.started",
        "ann",
        "ann@approvers",
    )
    assert final.started_by == "ann@approvers"
    kinds = [e.kind for e in catalog.entries()]
    assert "roles.granted" in kinds
    assert "roles.four_eyes" in kinds
