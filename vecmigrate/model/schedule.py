"""Scheduled migrations: when a spec fires (a Temporal Schedule's calendar) and what each firing
migrates, and the models a firing passes around.

A scheduled spec is a template: its ``schedule`` section says what each firing migrates
(``rebuild`` the serving version's index with the spec's target index, move to the ``next_model``
version registered for the target's model, or the source ``as_written``), and every firing gets a
fresh target version name (``<target_prefix>-<UTC time of the firing>``), hence its own migration
id. A firing with nothing to do ends with the reason instead of starting a migration.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from vecmigrate.model.base import FrozenModel as _Model
from vecmigrate.model.base import Model
from vecmigrate.model.windows import TimeZoneName

Overlap = Literal[
    "skip", "buffer_one", "buffer_all", "cancel_other", "terminate_other", "allow_all"
]
Migrate = Literal["rebuild", "next_model", "as_written"]
OVERLAPS: tuple[str, ...] = get_args(Overlap)

# Target names are ``<prefix>-<stamp>``; version names are at most 64 characters.
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
PREFIX_MAX = 64 - 1 - len("20250101T000000Z")


# Each calendar field: its bounds, and the names it accepts (Temporal counts Sunday as 0).
_FIELDS: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "second": (0, 59, ()),
    "minute": (0, 59, ()),
    "hour": (0, 23, ()),
    "day_of_month": (1, 31, ()),
    "month": (1, 12, ()),
    "day_of_week": (0, 6, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
}
_TERM = re.compile(r"^(\*|[a-z0-9]+)(?:-([a-z0-9]+))?(?:/(\d+))?$")


def calendar_ranges(field: str, expression: str) -> list[tuple[int, int, int]]:
    """``(start, end, step)`` ranges of one calendar field: ``*``, ``3``, ``1-5``, ``*/15``,
    ``mon-fri``, or several of them separated by commas.

    Raises:
        ValueError: naming the term that is not understood.
    """
    low, high, names = _FIELDS[field]

    def value(term: str) -> int:
        if term in names:
            return names.index(term)
        if not term.isdigit() or not low <= int(term) <= high:
            raise ValueError(
                f"{field}: {term!r} is not a value from {low} to {high}"
                + (f" or one of {', '.join(names)}" if names else "")
            )
        return int(term)

    ranges = []
    for raw in str(expression).lower().replace(" ", "").split(","):
        match = _TERM.match(raw)
        if match is None:
            raise ValueError(f"{field}: cannot read {raw!r}; use *, N, N-M, */S or N-M/S")
        first, last, step = match.groups()
        start, end = (low, high) if first == "*" else (value(first), value(first))
        if last is not None:
            if first == "*":
                raise ValueError(f"{field}: {raw!r} mixes * and a range")
            end = value(last)
        elif step is not None and first != "*":
            end = high
        if end < start:
            raise ValueError(f"{field}: {raw!r} ends before it starts")
        ranges.append((start, end, int(step or 1)))
    return ranges


CalendarField = Annotated[str, Field(min_length=1, max_length=200)]


class CalendarSpec(_Model):
    """A calendar match, field by field (``*``, ``N``, ``N-M``, ``*/S``, lists with commas;
    ``day_of_week`` takes ``sun``..``sat``). Unset fields match the first second of the hour's
    first minute, every day."""

    second: CalendarField = "0"
    minute: CalendarField = "0"
    hour: CalendarField = "0"
    day_of_month: CalendarField = "*"
    month: CalendarField = "*"
    day_of_week: CalendarField = "*"
    comment: str = ""

    @model_validator(mode="after")
    def _readable(self) -> CalendarSpec:
        for field in _FIELDS:
            calendar_ranges(field, getattr(self, field))
        return self

    def ranges(self) -> dict[str, list[tuple[int, int, int]]]:
        """Every field's ranges, as Temporal's calendar spec takes them."""
        return {field: calendar_ranges(field, getattr(self, field)) for field in _FIELDS}


class SchedulePolicy(_Model):
    """When a scheduled spec fires and what each firing migrates.

    ``migrate``: ``rebuild`` moves the version serving reads to a new version with the spec's
    target index (and store), same embedding; ``next_model`` to the newest registered, available
    version of the target's embedding model above the serving one; ``as_written`` migrates the
    spec's own source each time. ``when: changed`` (the default) skips a rebuild whose serving
    version already has the target's index. Calendar: ``cron`` expressions, ``calendar``
    matches or ``every_seconds``, in ``timezone``, each firing delayed by up to
    ``jitter_seconds``; ``overlap`` says what a firing due while the last still runs does
    (``skip``), ``catchup_window_seconds`` how late a missed firing may still run.
    """

    migrate: Migrate
    when: Literal["changed", "always"] = "changed"
    target_prefix: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=PREFIX_MAX
    )
    cron: tuple[str, ...] = ()
    calendar: tuple[CalendarSpec, ...] = ()
    every_seconds: float | None = Field(default=None, ge=1.0)
    timezone: TimeZoneName = "UTC"
    jitter_seconds: float = Field(default=0.0, ge=0.0)
    overlap: Overlap = "skip"
    catchup_window_seconds: float = Field(default=3600.0, ge=10.0)
    pause_on_failure: bool = False

    @field_validator("cron")
    @classmethod
    def _cron_fields(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for expression in value:
            fields = expression.split()
            if not expression.startswith("@") and not 5 <= len(fields) <= 7:
                raise ValueError(
                    f"cron {expression!r} has {len(fields)} fields; use 5 (minute hour "
                    "day-of-month month day-of-week), 6 or 7 with seconds and years, or @daily"
                )
        return value


class FiringInput(_Model):
    """What a schedule's action starts the firing workflow with: the schedule and the hash of
    its stored spec (the template is loaded from the catalog by it)."""

    schedule_id: str
    spec_hash: str
    requested_by: str = "schedule"


class ResolveFiringInput(_Model):
    """The firing activity's input: the template to resolve at ``fired_at``."""

    schedule_id: str
    spec_hash: str
    fired_at: str
    firing_id: str
    requested_by: str = "schedule"


FiringOutcome = Literal["started", "nothing_to_do", "refused"]


class Firing(_Model):
    """What one firing resolved to: a migration to start (its concrete spec, stored in the
    catalog by its hash), or nothing to do, or a refusal, with the reason."""

    outcome: FiringOutcome
    reason: str
    migration_id: str | None = None
    source_version: str | None = None
    target_version: str | None = None
    # The concrete spec (a mapping: the workflow validates it into a MigrationSpec).
    spec: dict[str, Any] | None = None


class FiringResult(Model):
    """How a firing ended: the query ``firing`` answers it while the migration runs."""

    schedule_id: str
    fired_at: str
    outcome: FiringOutcome | Literal["running", "resolving"] = "resolving"
    reason: str = ""
    migration_id: str | None = None
    source_version: str | None = None
    target_version: str | None = None
    # The migration's final phase (COMPLETED, ROLLED_BACK, ABORTED) once it ended.
    phase: str | None = None


def fresh_target(prefix: str, fired_at: datetime) -> str:
    """The target version name of a firing at ``fired_at``."""
    return f"{prefix}-{fired_at.strftime(STAMP_FORMAT)}"
