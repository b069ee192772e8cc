"""Errors a user can meet. Each message says what is wrong and what to do."""

from __future__ import annotations


class VecmigrateError(Exception):
    """Base of every error vecmigrate raises on purpose."""


class SpecError(VecmigrateError):
    """A migration spec is invalid; ``problems`` lists each field and its fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid migration spec:\n  " + "\n  ".join(problems))


class PreconditionError(VecmigrateError):
    """The spec is valid but the world does not allow it (missing collection, wrong dimension)."""


class DataError(VecmigrateError):
    """Vectors that must never be written: wrong dimension, NaN or infinity, bad ids.

    Retrying cannot fix bad data, so activities report it as non-retryable.
    """


class ScopeError(VecmigrateError):
    """A read or write would cross the tenant or collection scope it was opened for."""


class ResidencyError(VecmigrateError):
    """Work for one region reached a worker of another: it is refused, never run."""


class RoutingConflictError(VecmigrateError):
    """A compare-and-set on the routing row found a newer generation than expected."""


class NotFoundError(VecmigrateError):
    """A collection, version, migration or artifact does not exist."""


class ConfigurationError(VecmigrateError):
    """An environment variable or option has a value vecmigrate cannot use."""


class ArtifactError(VecmigrateError):
    """An index artifact is missing, half-written or does not match its checksum."""


class SecretError(VecmigrateError):
    """A secret reference cannot be resolved (unset variable, unreadable file, no resolver).

    The message names the reference, never the secret.
    """


class KeyRingError(VecmigrateError):
    """The key ring is missing, malformed, or lacks a key that protected something."""


class TamperError(VecmigrateError):
    """Protected data failed its authentication: an encrypted artifact or payload was altered,
    truncated or swapped, or a ledger entry's MAC does not match."""


class AccessDeniedError(VecmigrateError):
    """A caller's credential or role does not allow the action on that tenant or collection.

    The message says nothing about whether the target exists.
    """


class SpecMismatchError(VecmigrateError):
    """A task names a spec its catalog does not hold, or holds altered (its hash differs)."""


class MessageRefusedError(VecmigrateError):
    """An operator message that means nothing where the migration stands (an update's
    validator refused it; nothing changed and nothing was written to the history)."""


# Errors a retry cannot fix; the workflow tells Temporal not to retry these by name.
NON_RETRYABLE = (
    DataError,
    PreconditionError,
    SpecError,
    ScopeError,
    ResidencyError,
    RoutingConflictError,
    NotFoundError,
    SecretError,
    TamperError,
    AccessDeniedError,
    SpecMismatchError,
    MessageRefusedError,
)
NON_RETRYABLE_NAMES = tuple(e.__name__ for e in NON_RETRYABLE)

# Temporal keeps a retried activity's last failure only while it fits in 4 KB (beyond, status
# shows "Failure exceeds size limit"): messages are cut well below that, stack trace included.
SUMMARY_CHARS = 1_000


def summary(exc: BaseException) -> str:
    """The error's message cut to :data:`SUMMARY_CHARS` (the worker's log keeps it whole)."""
    text = str(exc).strip() or type(exc).__name__
    if len(text) <= SUMMARY_CHARS:
        return text
    cut = len(text) - SUMMARY_CHARS
    return f"{text[:SUMMARY_CHARS]} ... ({cut:,} more characters in the worker's log)"
