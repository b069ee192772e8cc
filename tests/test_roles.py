"""Operator roles: the pure check every signal handler and update validator calls."""

from __future__ import annotations

import pytest

from vecmigrate.model.access import REQUIRED, AccessPolicy, Role, RoleBinding, authorize

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
