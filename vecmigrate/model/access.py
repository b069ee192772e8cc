"""Operator roles: who may steer a migration of which tenant's collection, and how.

Roles are ordered: a ``viewer`` reads status; an ``operator`` also pauses, resumes and throttles;
an ``approver`` also approves a cut-over, sets the ramp, changes or overrides a gate, rolls back
and aborts. A binding grants
one role to an identity (exact, or a shell-style pattern such as ``*@ops.example.com``) for a
tenant and a collection (``*`` for any). The identity is the caller's as its Temporal connection
presents it (the ``vecmigrate-caller`` header: the client certificate's name, the API key's
owner, or ``--identity``), never the operator name a message declares.

The optional four-eyes rule refuses a cut-over approval from whoever started the migration.

Pure and deterministic (standard library only): the workflow's update validators and signal
handlers call :func:`authorize`, so a refused update leaves no history and a refused signal is
recorded with its reason.
"""

from __future__ import annotations

from enum import StrEnum
from fnmatch import fnmatchcase

from pydantic import Field

from vecmigrate.model.base import FrozenModel as _Model

ANY = "*"
UNAUTHENTICATED = ""
# The header our clients stamp every start, signal and update with: the connection's identity.
CALLER_HEADER = "vecmigrate-caller"
# What a workflow stamps the messages it sends its children with, before its own id: a child
# takes its parent's word (the parent checked the sender's role before forwarding).
WORKFLOW_CALLER = "workflow:"


class Role(StrEnum):
    """What an identity may do to a migration, each role including the ones before it."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    APPROVER = "approver"


RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.APPROVER: 2}

# The role each message needs.
REQUIRED: dict[str, Role] = {
    "status": Role.VIEWER,
    "pause": Role.OPERATOR,
    "resume": Role.OPERATOR,
    "set_throttle": Role.OPERATOR,
    "approve_cutover": Role.APPROVER,
    "set_gate": Role.APPROVER,
    "set_ramp": Role.APPROVER,
    "rollback": Role.APPROVER,
    "abort": Role.APPROVER,
}


class RoleBinding(_Model):
    """``role`` for the identities ``identity`` matches, on ``tenant``/``collection``."""

    identity: str = Field(min_length=1, max_length=200)
    role: Role
    tenant: str = Field(default=ANY, min_length=1, max_length=64)
    collection: str = Field(default=ANY, min_length=1, max_length=64)

    def covers(self, identity: str, tenant: str, collection: str) -> bool:
        """Whether this binding applies to ``identity`` on ``tenant``/``collection``."""
        return (
            fnmatchcase(identity, self.identity)
            and self.tenant in (ANY, tenant)
            and self.collection in (ANY, collection)
        )


class AccessPolicy(_Model):
    """The role bindings in force, and the four-eyes rule. No bindings: every caller may do
    everything (the zero-configuration default; nothing is then enforced)."""

    bindings: tuple[RoleBinding, ...] = ()
    four_eyes: bool = False

    @property
    def enforced(self) -> bool:
        return bool(self.bindings)

    def role_of(self, identity: str, tenant: str, collection: str) -> Role | None:
        """The highest role ``identity`` holds on ``tenant``/``collection`` (None: none)."""
        if identity == UNAUTHENTICATED:
            return None
        held = [b.role for b in self.bindings if b.covers(identity, tenant, collection)]
        return max(held, key=RANK.__getitem__, default=None)


class Decision(_Model):
    """Whether a message is allowed, and why (the reason a refusal shows its sender)."""

    allowed: bool
    reason: str
    role: Role | None = None


def authorize(
    policy: AccessPolicy,
    identity: str | None,
    action: str,
    tenant: str,
    collection: str,
    started_by: str | None = None,
) -> Decision:
    """May ``identity`` send ``action`` to the migration of ``tenant``/``collection``?

    ``started_by`` is the identity that started the migration (for the four-eyes rule).

    Raises:
        ValueError: ``action`` is not a message of a migration.
    """
    if action not in REQUIRED:
        raise ValueError(f"unknown message {action!r}; one of {', '.join(REQUIRED)}")
    needed = REQUIRED[action]
    who = identity or UNAUTHENTICATED
    if not policy.enforced:
        return Decision(allowed=True, reason="no roles are configured")
    role = policy.role_of(who, tenant, collection)
    shown = who or "an unauthenticated caller (no vecmigrate-caller header)"
    if role is None:
        return Decision(
            allowed=False,
            reason=f"{shown} holds no role on {tenant}/{collection}; {action} needs {needed.value}",
        )
    if RANK[role] < RANK[needed]:
        return Decision(
            allowed=False,
            role=role,
            reason=f"{shown} is {role.value} on {tenant}/{collection}; {action} needs "
            f"{needed.value}",
        )
    if action == "approve_cutover" and policy.four_eyes and started_by and who == started_by:
        return Decision(
            allowed=False,
            role=role,
            reason=f"{shown} started this migration; under the four-eyes rule another "
            "approver must approve its cut-over",
        )
    return Decision(allowed=True, role=role, reason=f"{shown} is {role.value}")
